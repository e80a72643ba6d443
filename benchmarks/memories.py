"""The cost of each video memory (clipmemcap.model.memory) at the long-range benchmark's sizes.

    python benchmarks/memories.py [--steps 10] [--minutes 10] [--threads 2]

Each slot memory with 64 slots read densely, beside the kNN memory as the study runs it (4,096
entries, top-k 32), a FIFO of 64 (the kNN memory with 64 entries, read densely) and uniform-64:

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

from clipmemcap.model.mappers import MapperConfig, build_mapper
from clipmemcap.model.prefix_lm import caption_vocabulary, load_tokenizer

sys.path.insert(0, str(Path(__file__).parent))
from timing import print_table  # noqa: E402
from training_loop import TOKENIZER_DIR, benchmark_batch, step_ms  # noqa: E402

SIZES = dict(clip_dim=64, embed_dim=64, layers=2, heads=4, prefix_length=4, window=16)
DENSE_64 = dict(memory_capacity=64, retrieval="dense")
MEMORIES = {
    "knn (4,096, top-k)": dict(),
    "fifo (knn, 64, dense)": dict(DENSE_64),
    "reservoir": dict(DENSE_64, memory="reservoir"),
    "merge": dict(DENSE_64, memory="merge"),
    "kmeans": dict(DENSE_64, memory="kmeans"),
    "recurrent tokens": dict(DENSE_64, memory="recurrent", differentiable=True),
    "uniform-64": dict(kind="temporal", frame_policy="uniform", window=64),
}


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
    for name, overrides in MEMORIES.items():
        cfg = MapperConfig.load("video-memorizing", **{**SIZES, **overrides})
        ms_frame, held = stream_cost(cfg, frames)
        rows.append({"memory": name, "train": step_ms(cfg, batch, vocabulary, args.steps), "stream": ms_frame,
                     "kib": held / 1024})
        print(f"{name}: {rows[-1]}", file=sys.stderr)
    print_table(rows, [("memory", "memory", "s"), ("train", "train ms/step", ".1f"), ("stream", "stream ms/frame", ".3f"),
                       ("kib", "memory KiB/clip", ".1f")],
                f"batch 16 (clips of 20-60 s) for train; one {args.minutes:g}-minute clip ({frames} frames) streamed; "
                f"{args.threads} CPU threads, the benchmark's sizes (width 64, 4 heads, window 16)")


if __name__ == "__main__":
    main()
