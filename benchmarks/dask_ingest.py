"""ActivityNet ingest wall time: local, and on a Dask cluster of 1 and 2 workers; what all of
ActivityNet would need.

    python benchmarks/dask_ingest.py [--model ViT-B-32] [--videos 8] [--duration 60 120] [--workers 1 2]

Synthetic 640x360 30 fps h264 videos (ActivityNet's videos are mostly 360p-480p at 25-30 fps)
with segments covering 94.5 % of each video (the share of train + val_1 that is captioned), random
CLIP weights of the named architecture (the compute of the real model), the real flow with a real
Prefect server started here, and a `distributed.LocalCluster` of N one-thread worker processes,
each given cores / N torch threads. Downloads are local files through yt-dlp: network time is
not measured (none here). Prints a table, then an estimate for ActivityNet from the per-video
cost measured on the largest cluster.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from clipmemcap.sources.synthetic import write_captions_zip, write_video

sys.path.insert(0, str(Path(__file__).parent))
from timing import print_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COVERAGE = 0.945  # captioned share of the video time of train + val_1 (grid frames / duration)
ACTIVITYNET_HOURS = {"train + val_1 (what the experiment uses)": 487.6, "all of ActivityNet": 849.0}


def make_source(folder: Path, n: int, low: float, high: float) -> tuple[Path, str, float]:
    """(captions.zip, video URL template, hours of video)."""
    rng = random.Random(0)
    annotations = {"train.json": {}, "val_1.json": {}, "val_2.json": {}}
    for i in range(n):
        video_id = f"v_bench{i:06d}"
        duration = round(rng.uniform(low, high), 2)
        path = folder / f"{video_id}.mp4"
        if not path.exists():
            write_video(path, duration, 640, 360, 30)
        # two overlapping segments, as in ActivityNet, covering COVERAGE of the video
        annotations["train.json"][video_id] = {"duration": duration, "sentences": ["a", "b"], "timestamps": [
            [0.0, duration * COVERAGE * 0.6], [duration * COVERAGE * 0.4, duration * COVERAGE]]}
    write_captions_zip(folder / "captions.zip", annotations)
    hours = sum(v["duration"] for v in annotations["train.json"].values()) / 3600
    return folder / "captions.zip", str(folder / "v_{youtube_id}.mp4"), hours


def start_prefect_server() -> subprocess.Popen:
    port = 4200 + os.getpid() % 1000
    os.environ.update({"PREFECT_API_URL": f"http://127.0.0.1:{port}/api", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                       "PREFECT_LOGGING_LEVEL": "WARNING", "PREFECT_HOME": tempfile.mkdtemp(prefix="prefect-")})
    server = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
                               "--port", str(port), "--no-ui"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(240):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2)
            return server
        except OSError:
            time.sleep(0.5)
    raise RuntimeError("the Prefect server did not start")


def timed_ingest(settings: list[str]) -> float:
    from flows.activitynet import activitynet_ingest

    with tempfile.TemporaryDirectory() as storage:
        start = time.perf_counter()
        activitynet_ingest(params=str(ROOT / "params.yaml"), overrides=settings + [f"storage.root={storage}"])
        return time.perf_counter() - start


def ingest(settings: list[str], workers: int | None) -> float:
    """Wall seconds of one ingest, after a warm-up run of one video per worker (a cluster is
    long-lived: its workers' imports and CLIP loading are paid once, not per run)."""
    from distributed import LocalCluster

    if workers is None:
        timed_ingest(settings + ["activitynet.subset.train_videos=1"])
        return timed_ingest(settings)
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        settings = settings + [f"dask.address={cluster.scheduler_address}",
                               f"clip.threads={max(1, (os.cpu_count() or 1) // workers)}"]
        timed_ingest(settings + [f"activitynet.subset.train_videos={workers}"])
        return timed_ingest(settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-32", help="open_clip architecture (random weights)")
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--duration", type=float, nargs=2, default=[60.0, 120.0], metavar=("MIN", "MAX"))
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    server = start_prefect_server()
    try:
        with tempfile.TemporaryDirectory() as folder:
            zip_path, template, hours = make_source(Path(folder), args.videos, *args.duration)
            settings = [f"clip.model={args.model}", "clip.pretrained=null", "clip.device=cpu",
                        f"activitynet.annotations_url={zip_path}", f"activitynet.video_url_template={template}",
                        f"activitynet.subset.train_videos={args.videos}", "activitynet.subset.test_videos=0",
                        "activitynet.subset.val_fraction=0"]
            rows = []
            for workers in [None, *args.workers]:
                wall = ingest(settings, workers)
                rows.append({"run": "local" if workers is None else f"dask x{workers}", "wall": wall,
                             "per_video": wall / args.videos, "speed": hours * 3600 / wall})
    finally:
        server.terminate()
    for row in rows:
        row["scaling"] = rows[1]["wall"] / row["wall"] if len(rows) > 1 else 1.0
    print_table(rows, [("run", "run", "s"), ("wall", "wall s", ".1f"), ("per_video", "s/video", ".2f"),
                       ("speed", "x realtime", ".1f"), ("scaling", "vs dask x1", ".2f")],
                f"{args.videos} videos, {hours * 60:.1f} min of video, CLIP {args.model} (random weights), "
                f"{os.cpu_count()} cores; wall includes the flow's start-up and annotation parsing")

    best = rows[-1]
    per_worker = best["speed"] / args.workers[-1]  # video seconds per wall second per worker
    print(f"\nEstimate from 'dask x{args.workers[-1]}': one worker ({(os.cpu_count() or 1) // args.workers[-1]} "
          f"core(s)) ingests {per_worker:.2f} h of video per hour, downloads not counted.")
    for name, total in ACTIVITYNET_HOURS.items():
        worker_hours = total / per_worker
        print(f"  {name}: {total:.0f} h of video -> {worker_hours:,.0f} worker-hours; "
              f"{worker_hours / 24:,.0f} such workers finish in a day, {worker_hours / 168:,.0f} in a week")


if __name__ == "__main__":
    main()
