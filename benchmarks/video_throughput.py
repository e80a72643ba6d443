"""Ingest throughput: end-to-end embedded frames/s against its two halves.

    python benchmarks/video_throughput.py [--models ViT-B-32 TinyViT] [--videos 4] [--duration 30]

On synthetic 640x360 30 fps h264 videos (random CLIP weights), measures at the same batch size
and torch thread count:
  (a) CLIP forward alone on frames already decoded into memory,
  (b) decoding alone (ffmpeg seek + fps + scale + crop, piped into numpy),
  (c) end to end: decode overlapped with CLIP, shards written (what the flow runs per video).
Targets (issue 2): c >= 0.9 * min(a, b) for ViT-B-32, >= 0.8 * min(a, b) for the tiny config.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

from clipmemcap.sources.activitynet import Segment, Video
from clipmemcap.frames.clip_encoder import ClipEncoder
from clipmemcap.core.config import ClipConfig, DecodeConfig
from clipmemcap.frames.ffmpeg_frames import decode_range
from clipmemcap.frames.embed import Embedded, VideoJob, embed_videos
from clipmemcap.core.shards import write_frame_shard
from clipmemcap.sources.synthetic import write_video

sys.path.insert(0, str(Path(__file__).parent))
from timing import best_times, print_table  # noqa: E402

FPS = 5
TARGETS = {"ViT-B-32": 0.9, "TinyViT": 0.8}


def make_jobs(folder: Path, n: int, duration: float) -> list[VideoJob]:
    jobs = []
    for i in range(n):
        path = folder / f"v_bench{i:06d}.mp4"
        if not path.exists():
            write_video(path, duration, 640, 360, 30)
        # two overlapping segments covering the whole video, as in ActivityNet
        segments = (Segment(0, 0.0, duration * 0.7, "a"), Segment(1, duration * 0.5, duration, "b"))
        jobs.append(VideoJob(path.stem, path, tuple(Video(path.stem, duration, segments).frame_ranges(FPS))))
    return jobs


def measure(model: str, jobs: list[VideoJob], batch: int, out: Path, repeats: int, decode: DecodeConfig) -> dict:
    encoder = ClipEncoder(ClipConfig(model=model, pretrained=None, device="cpu", batch_size=batch))
    size = encoder.image_size

    def decode_all():
        return [b for j in jobs for r in j.frames
                for b in decode_range(j.path, r, FPS, size, batch, decode.ffmpeg_threads)]

    blocks = decode_all()  # also warms the page cache: every measurement reads from memory
    frames = sum(len(b) for b in blocks)
    encoder.encode(blocks[0])  # warm-up

    def end_to_end():
        for result in embed_videos(jobs, encoder, FPS, decode.workers, decode.ffmpeg_threads):
            assert isinstance(result, Embedded), result
            write_frame_shard(out / f"{result.video_id}.parquet", result.video_id, result.times,
                              result.embeddings, "float16")

    t = best_times({"decode": decode_all, "clip": lambda: [encoder.encode(b) for b in blocks],
                    "e2e": end_to_end}, repeats)
    a, b, c = frames / t["clip"], frames / t["decode"], frames / t["e2e"]
    target = TARGETS.get(model)
    return {"model": model, "batch": batch, "threads": torch.get_num_threads(), "frames": frames,
            "clip_fps": a, "decode_fps": b, "e2e_fps": c, "ratio": c / min(a, b), "target": target or "",
            "verdict": "" if target is None else ("ok" if c / min(a, b) >= target else "MISS")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["ViT-B-32", "TinyViT"])
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per video")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--decode-workers", type=int, default=DecodeConfig().workers)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs per measurement")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the synthetic videos here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.workdir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        jobs = make_jobs(folder, args.videos, args.duration)
        decode = DecodeConfig(workers=args.decode_workers)
        rows = [measure(m, jobs, args.batch, Path(tmp), args.repeats, decode) for m in args.models]
    print_table(rows, [("model", "model", ""), ("batch", "batch", "d"), ("threads", "threads", "d"),
                       ("frames", "frames", "d"), ("clip_fps", "(a) clip", ".1f"), ("decode_fps", "(b) decode", ".1f"),
                       ("e2e_fps", "end-to-end", ".1f"), ("ratio", "e2e/min", ".2f"), ("target", "target", ""),
                       ("verdict", "", "")],
                "frames/s; (a) CLIP forward on decoded frames, (b) decoding alone, end-to-end = decode || CLIP + shards")


if __name__ == "__main__":
    main()
