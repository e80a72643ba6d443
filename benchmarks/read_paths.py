"""The step cost of every run of the read-path factorial (presets/memory.yaml), beside uniform-64's.

    python benchmarks/read_paths.py [--steps 20] [--threads 2]

ms per training step (forward, backward, clipping, AdamW) at batch 16 on the long-range
benchmark's sizes (benchmarks/training_loop.py: clips of 20-60 s at 5 fps, tiny GPT-2 scoring the
captions' tokens), each run's mapper as the preset configures it, on ``--threads`` CPU threads.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from clipmemcap.core.config import apply_preset
from clipmemcap.model.mappers import MapperConfig
from clipmemcap.model.prefix_lm import caption_vocabulary, load_tokenizer

sys.path.insert(0, str(Path(__file__).parent))
from timing import print_table  # noqa: E402
from training_loop import TOKENIZER_DIR, benchmark_batch, step_ms  # noqa: E402

ROOT = Path(__file__).parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(ROOT / "params.yaml", Path(tmp) / "params.yaml")
        cfg = apply_preset(Path(tmp) / "params.yaml", ROOT / "presets" / "memory.yaml")
    tokenizer = load_tokenizer(TOKENIZER_DIR)
    batch, captions = benchmark_batch(tokenizer)
    vocabulary = caption_vocabulary(tokenizer, captions, [13])
    rows = []
    for run in cfg.finetune.runs:
        if cfg.finetune.runs[run].frames == "oracle":
            continue  # 16 frames a clip: the cost of uniform's window, not of a memory
        mapper, overrides, _ = cfg.finetune.run(run, 0)
        mapper_cfg = MapperConfig.load(mapper, **{**overrides, "clip_dim": 64, "embed_dim": 64})
        rows.append({"run": run, "ms": step_ms(mapper_cfg, batch, vocabulary, args.steps)})
        print(f"{run}: {rows[-1]['ms']:.1f} ms", file=sys.stderr)
    reference = next(r["ms"] for r in rows if r["run"] == "uniform-64")
    for row in rows:
        row["ratio"] = row["ms"] / reference
    print_table(rows, [("run", "run", "s"), ("ms", "ms/step", ".1f"), ("ratio", "x uniform-64", ".2f")],
                f"best of {args.steps} steps, batch 16, {args.threads} CPU threads, the benchmark's sizes")


if __name__ == "__main__":
    main()
