"""Memorizing mapper cost, and kNN search latency and recall per memory backend (CPU).

    python benchmarks/memorizing_mapper.py [--lengths 50 200 1000 5000] [--sizes 1000 ... 256000]

1. Time per clip of the memorizing mapper (every frame, chunks of W = 10) and of the temporal
   baseline (W = 10 sampled frames), default sizes (E = 768, 8 layers, 8 heads), batch 1.
   Targets (issue 4): memorizing cost per frame processed <= 2x the baseline's; total cost linear
   in clip length.
2. kNN search latency for one chunk's queries (8 heads x 20 tokens, d = 96) against memories of
   1 k to 256 k keys of clustered, CLIP-like data, per backend, with recall@32 against exact search.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from clipmemcap.model.memory.store import KNNMemory
from clipmemcap.model.mappers import MapperConfig, build_mapper

sys.path.insert(0, str(Path(__file__).parent))
from timing import best_times, print_table  # noqa: E402


def mapper_rows(lengths: list[int], repeats: int) -> list[dict]:
    torch.manual_seed(0)
    memorizing = build_mapper(MapperConfig.load("video-memorizing")).eval()
    temporal = build_mapper(MapperConfig.load("video-temporal")).eval()
    W = memorizing.cfg.window
    rows = []
    for n in lengths:
        frames, times, lengths_ = torch.randn(1, n, 512), (torch.arange(n).float() / 5)[None], torch.tensor([n])
        with torch.inference_mode():
            t = best_times({"memorizing": lambda: memorizing(frames, times, lengths_),
                            "temporal": lambda: temporal(frames, times, lengths_)}, repeats)
        per_frame_mem, per_frame_base = t["memorizing"] / n, t["temporal"] / min(n, W)
        rows.append({"frames": n, "memorizing_s": t["memorizing"], "temporal_s": t["temporal"],
                     "mem_ms_frame": 1e3 * per_frame_mem, "base_ms_frame": 1e3 * per_frame_base,
                     "ratio": per_frame_mem / per_frame_base})
    return rows


def clustered(n: int, dim: int, seed: int, clusters: int = 256) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(clusters, dim, generator=g), dim=-1)
    return F.normalize(centres[torch.randint(clusters, (n,), generator=g)] + 0.3 * torch.randn(n, dim, generator=g), dim=-1)


def search_rows(sizes: list[int], backends: list[str], repeats: int, approx_max: int, k: int = 32) -> list[dict]:
    heads, dim, tokens = 8, 96, 20
    rows = []
    for size in sizes:
        keys = torch.stack([clustered(size, dim, seed=h) for h in range(heads)])  # [H, n, d]
        values = torch.arange(size).float()[None, :, None].expand(heads, size, dim)  # value = key's id
        queries = torch.stack([clustered(tokens, dim, seed=100 + h) for h in range(heads)])
        truth = (queries @ keys.transpose(1, 2)).topk(k, -1).indices
        for backend in backends:
            if backend == "faiss-hnsw" and size > approx_max:
                continue
            memory = KNNMemory(1, heads, dim, size, backend)
            start = time.perf_counter()
            for i in range(0, size, 4096):
                memory.add(keys[None, :, i : i + 4096], values[None, :, i : i + 4096])
            build = time.perf_counter() - start
            t = best_times({"search": lambda: memory.retrieve(queries[None], k)}, repeats)["search"]
            _, _, selected = memory.retrieve(queries[None], k)  # [1, H, q, n]; slot = key id
            recall = np.mean([len(set(f.nonzero().flatten().tolist()) & set(g.tolist())) / k
                              for f, g in zip(selected[0].flatten(0, 1), truth.flatten(0, 1))])
            rows.append({"keys": size, "backend": backend, "search_ms": 1e3 * t, "build_s": build, "recall": recall})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[50, 200, 1000, 5000])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000, 64000, 256000])
    parser.add_argument("--backends", nargs="+", default=["torch", "faiss-flat", "faiss-hnsw"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--approx-max-keys", type=int, default=64000,
                        help="largest memory to build an HNSW index for (8 heads take minutes at 256 k)")
    args = parser.parse_args()
    print_table(mapper_rows(args.lengths, args.repeats),
                [("frames", "frames", "d"), ("memorizing_s", "memorizing s", ".3f"), ("temporal_s", "temporal s", ".3f"),
                 ("mem_ms_frame", "mem ms/frame", ".2f"), ("base_ms_frame", "base ms/frame", ".2f"),
                 ("ratio", "ratio", ".2f")],
                "per clip, batch 1; ratio = memorizing cost per frame / baseline cost per frame (target <= 2)\n")
    print_table(search_rows(args.sizes, args.backends, args.repeats, args.approx_max_keys),
                [("keys", "keys", "d"), ("backend", "backend", ""), ("search_ms", "search ms", ".2f"),
                 ("build_s", "build s", ".2f"), ("recall", "recall@32", ".3f")],
                "one chunk's queries (8 heads x 20 tokens, d = 96); recall against exact top-32")


if __name__ == "__main__":
    main()
