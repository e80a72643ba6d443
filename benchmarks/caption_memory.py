"""Peak memory of `clipmemcap caption` on one whole video of 1 and of 60 minutes.

    python benchmarks/caption_memory.py [--minutes 1 60] [--checkpoint DIR ...] [--params params.yaml]

Writes synthetic videos of moving shapes (160x120, 5 fps h264), captions each as ONE clip in a
fresh process with each given (default: the latest) fine-tuning run and the settings it was
trained with, and prints wall time and peak RSS (the child's ru_maxrss). Target (issue 8): the
60-minute peak within 1.2x of the 1-minute one: frames stream through decoding, CLIP and the
mapper, whatever its memory (one checkpoint per memory mechanism: presets/lengths.yaml's runs).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from clipmemcap.sources.synthetic import write_video

sys.path.insert(0, str(Path(__file__).parent))
from timing import print_table  # noqa: E402

# Runs the command in a child and prints the child's peak RSS (KiB): a wrapper per measurement,
# because RUSAGE_CHILDREN reports the largest child a process ever waited for.
PEAK_RSS = ("import resource, subprocess, sys; done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); "
            "print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 60.0])
    parser.add_argument("--checkpoint", nargs="+", default=[None],
                        help="fine-tuning run folders, one row each (default: the latest run)")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        videos = {}
        for minutes in args.minutes:
            videos[minutes] = Path(folder) / f"v_{int(minutes * 60):011d}.mp4"
            write_video(videos[minutes], minutes * 60, 160, 120, fps=5)
        for checkpoint in args.checkpoint:
            first = len(rows)
            for minutes, video in videos.items():
                command = [sys.executable, "-m", "clipmemcap.cli", "caption", str(video), "--params", args.params]
                command += ["--checkpoint", checkpoint] if checkpoint else []
                start = time.perf_counter()
                code, peak_kib = subprocess.run([sys.executable, "-c", PEAK_RSS, *command], capture_output=True,
                                                text=True, check=True).stdout.split()
                if code != "0":
                    sys.exit(f"captioning the {minutes:g}-minute video failed (exit {code}): {' '.join(command)}")
                rows.append({"run": Path(checkpoint).name if checkpoint else "latest", "minutes": minutes,
                             "frames": int(minutes * 60 * 5), "wall": time.perf_counter() - start,
                             "rss": int(peak_kib) / 1024})
                rows[-1]["ratio"] = rows[-1]["rss"] / rows[first]["rss"]
    print_table(rows, [("run", "run", "s"), ("minutes", "minutes", "g"), ("frames", "frames", "d"), ("wall", "wall s", ".1f"),
                       ("rss", "peak RSS MiB", ".0f"), ("ratio", f"vs {args.minutes[0]:g} min", ".2f")],
                "one clip per video (the whole video); target: 60 min within 1.2x of 1 min")


if __name__ == "__main__":
    main()
