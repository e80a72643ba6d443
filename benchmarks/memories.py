"""The cost of each video memory (clipmemcap.model.memory) at the long-range benchmark's sizes.

    python benchmarks/memories.py [--steps 10] [--minutes 10] [--threads 2]

Every run of presets/lengths.yaml that sees every frame, built as its finetune stage builds it:
each memory of 64 slots with the combined read path, the kNN memory (4,096 entries) with today's
and the combined read path, uniform-64 and all-frames:

- train: best ms of a training step at batch 16 on clips of 20-60 s (benchmarks/training_loop.py);
- stream: ms per frame of one ``--minutes``-long clip streamed through the mapper in blocks of
  50 frames (what ``clipmemcap caption`` does), and the bytes the stream holds at the end (its
  memories, or uniform-64's chosen frames).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from clipmemcap.core.config import load_config, read_settings
from clipmemcap.model.mappers import MapperConfig, build_mapper
from clipmemcap.model.prefix_lm import caption_vocabulary, load_tokenizer

sys.path.insert(0, str(Path(__file__).parent))
from timing import print_table  # noqa: E402
from training_loop import TOKENIZER_DIR, benchmark_batch, step_ms  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIZES = dict(clip_dim=64, embed_dim=64)  # the tiny CLIP's and GPT-2's widths; the rest: params.yaml + the preset
PRESET = ROOT / "presets" / "lengths.yaml"


def preset_mappers() -> dict[str, MapperConfig]:
    """The mapper of every run of presets/lengths.yaml that sees every frame (not the oracle),
    with params.yaml's finetune.mapper_overrides, as its finetune stage builds it."""
    shared = load_config(ROOT / "params.yaml").finetune.mapper_overrides
    runs = read_settings(PRESET, "preset")["finetune"]["runs"]
    return {name: MapperConfig.load(run["mapper"], **{**SIZES, **shared, **run.get("mapper_overrides", {})})
            for name, run in runs.items() if run.get("frames", "all") == "all"}


def held_bytes(obj, depth: int = 3) -> int:
    """Bytes of the tensors an object (a stream, its memories, their stores or slots) holds; a
    model's weights are not counted."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (tuple, list)):
        return sum(held_bytes(x, depth) for x in obj)
    if depth and hasattr(obj, "__dict__") and type(obj).__module__.startswith("clipmemcap") \
            and not isinstance(obj, torch.nn.Module):
        return sum(held_bytes(x, depth - 1) for x in vars(obj).values())
    return 0


def stream_cost(cfg: MapperConfig, frames: int) -> tuple[float, int]:
    """ms per frame of one clip streamed in blocks of 50, and the bytes the stream holds at the end
    (its memories, or a window's frames)."""
    torch.manual_seed(0)
    mapper = build_mapper(cfg).eval()
    clip, times = torch.randn(frames, cfg.clip_dim), torch.arange(frames) / 5.0
    with torch.no_grad():
        stream = mapper.stream(frames)
        start = time.perf_counter()
        for at in range(0, frames, 50):
            stream.feed(clip[at : at + 50], times[at : at + 50])
        stream.prefix()
        seconds = time.perf_counter() - start
    return 1000 * seconds / frames, held_bytes(stream, depth=4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(TOKENIZER_DIR)
    batch, captions = benchmark_batch(tokenizer)
    vocabulary = caption_vocabulary(tokenizer, captions, [13])
    frames = int(args.minutes * 60 * 5)
    rows = []
    for name, cfg in preset_mappers().items():
        ms_frame, held = stream_cost(cfg, frames)
        rows.append({"memory": name, "train": step_ms(cfg, batch, vocabulary, args.steps), "stream": ms_frame,
                     "kib": held / 1024})
        print(f"{name}: {rows[-1]}", file=sys.stderr)
    print_table(rows, [("memory", "memory", "s"), ("train", "train ms/step", ".1f"), ("stream", "stream ms/frame", ".3f"),
                       ("kib", "memory KiB/clip", ".1f")],
                f"batch 16 (clips of 20-60 s) for train; one {args.minutes:g}-minute clip ({frames} frames) streamed; "
                f"{args.threads} CPU threads, presets/lengths.yaml's mappers at the benchmark's sizes")


if __name__ == "__main__":
    main()
