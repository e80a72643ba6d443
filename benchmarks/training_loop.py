"""Training loop throughput: the full loop (Parquet reads, collation, logging) vs the raw step;
and the step's cost for the long-range benchmark's runs.

    python benchmarks/training_loop.py [--videos 200] [--batch 40] [--steps 60] [--vocabulary full captions]

On a synthetic ActivityNet-layout dataset (frame shards of 5 fps videos, 3 segments each, CLIP
dim 512) with a tiny memorizing mapper and a tiny GPT-2, CPU:
  raw:  forward + backward + AdamW on batches already collated in memory,
  loop: clipmemcap.training.loop.train() on the same batches read from the shards.
Both are timed in steady state, from the end of the first step to the end of the last (the loop's
final checkpoint and validation, and both warm-ups, are left out).
Target (issue 5): loop >= 0.9 x raw samples/s (data loading is never the bottleneck).

Second table: ms per training step (forward, backward, clipping, AdamW) at the benchmark's sizes
(tiny GPT-2 with the real 50,257-token vocabulary, 2-layer mappers of width 64, W = 16, batch 16,
clips of 20-60 s at 5 fps, captions of the benchmark's kind), for the `uniform` baseline and
`memorizing`, with GPT-2's full output layer and with `model.vocabulary: captions`. Targets (issue
15): the baseline step >= 3x faster than with the full layer; memorizing <= 1.5x the baseline.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import GPT2Config

from clipmemcap.training.datasets import ActivityNetClips, collate, epoch_order
from clipmemcap.core.config import TrainConfig
from clipmemcap.model.mappers import MapperConfig, build_mapper
from clipmemcap.model.captioner import Batch
from clipmemcap.model.prefix_lm import PrefixLM, caption_vocabulary, load_gpt2, load_tokenizer
from clipmemcap.core.layout import ActivityNetPaths
from clipmemcap.core.shards import file_digests, write_frame_shard, write_segments
from clipmemcap.training.loop import CaptionModel, train

sys.path.insert(0, str(Path(__file__).parent))
from timing import best_times, print_table  # noqa: E402

TOKENIZER_DIR = Path(__file__).parents[1] / "clipmemcap" / "model" / "gpt2_tokenizer"


def make_dataset(folder: Path, videos: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    rows = []
    for v in range(videos):
        video_id = f"v_{v:011d}"
        n = int(rng.integers(100, 600))  # 20 s - 2 min at 5 fps
        write_frame_shard(folder / "frames" / f"{video_id}.parquet", video_id, np.arange(n) / 5,
                          rng.standard_normal((n, 512)).astype(np.float32), "float16")
        for s in range(3):
            start = float(rng.uniform(0, n / 5 - 10))
            rows.append({"video_id": video_id, "segment": s, "start": start, "end": start + float(rng.uniform(5, 30)),
                         "caption": "a person does something and then something else", "split": "train"})
    write_segments(folder / "segments" / "train.parquet", rows)
    files = [p.relative_to(folder) for p in folder.rglob("*.parquet")]
    (folder / "manifest.json").write_text(json.dumps({"files": file_digests(folder, files)}))


def model() -> CaptionModel:
    torch.manual_seed(0)
    mapper = build_mapper(MapperConfig.load("video-memorizing", embed_dim=64, heads=4, layers=2, prefix_length=10))
    gpt2 = load_gpt2(GPT2Config(n_embd=64, n_layer=2, n_head=2, n_positions=128))
    return CaptionModel(mapper, PrefixLM(gpt2, 50256))


def benchmark_batch(tokenizer, B: int = 16, seed: int = 0) -> tuple[Batch, list[str]]:
    """A batch at the long-range benchmark's sizes, clips of 20-60 s at 5 fps (64-d frames) and
    two-event captions of its kind, and its captions."""
    rng = np.random.default_rng(seed)
    lengths = torch.tensor(rng.integers(100, 301, B))  # 20-60 s at 5 fps
    T = int(lengths.max())
    frames, times = torch.randn(B, T, 64), (torch.arange(T) / 5.0)[None].repeat(B, 1)
    words = [f"a {c} {s}" for c in ("red", "green", "blue", "yellow") for s in ("circle", "square", "triangle")]
    captions = [f"{words[rng.integers(12)]}, then {words[rng.integers(12)]}." for _ in range(B)]
    ids = tokenizer(captions)["input_ids"]
    width = max(map(len, ids))
    events = torch.zeros(B, T, dtype=torch.long)
    for row, n in enumerate(lengths.tolist()):  # two 1-s events somewhere in each clip
        for number, start in enumerate(sorted(rng.choice(n - 5, 2, replace=False)), 1):
            events[row, start : start + 5] = number
    return Batch([None] * B, frames, times, lengths, torch.tensor([i + [0] * (width - len(i)) for i in ids]),
                 torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids]), events), captions


def step_ms(mapper_cfg: MapperConfig, batch: Batch, vocabulary: list[int] | None, steps: int) -> float:
    """Best ms of a training step (forward, backward, clipping, AdamW as train() builds it) of a
    captioner with this mapper and the tiny GPT-2."""
    torch.manual_seed(0)
    gpt2 = load_gpt2(GPT2Config(n_embd=64, n_layer=2, n_head=2, n_positions=128))
    net = CaptionModel(build_mapper(mapper_cfg), PrefixLM(gpt2, 50256, **({"vocabulary": vocabulary} if vocabulary else {})))
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, fused=True)

    def step():
        loss = net(batch)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()

    step()
    return 1000 * best_times({"s": step}, steps)["s"]


def step_costs(tokenizer, vocabularies: list[str], steps: int = 20) -> None:
    batch, captions = benchmark_batch(tokenizer)
    rows = []
    for vocabulary in vocabularies:
        kept = caption_vocabulary(tokenizer, captions, [13]) if vocabulary == "captions" else None
        for run, over in (("uniform", {"kind": "temporal", "frame_policy": "uniform"}), ("memorizing", {})):
            cfg = MapperConfig.load("video-memorizing", clip_dim=64, embed_dim=64, layers=2, heads=4, prefix_length=4,
                                    window=16, **over)
            rows.append({"vocabulary": vocabulary, "run": run, "ms": step_ms(cfg, batch, kept, steps)})
    for row in rows:
        baseline = next(r["ms"] for r in rows if r["vocabulary"] == row["vocabulary"] and r["run"] == "uniform")
        full = next((r["ms"] for r in rows if r["vocabulary"] == "full" and r["run"] == "uniform"), float("nan"))
        row["vs_baseline"], row["speedup"] = row["ms"] / baseline, full / baseline
    print_table(rows, [("vocabulary", "vocabulary", "s"), ("run", "run", "s"), ("ms", "ms/step", ".1f"),
                       ("vs_baseline", "x baseline", ".2f"), ("speedup", "baseline speed-up", ".2f")],
                "best of 20 steps, batch 16, CPU; targets: baseline speed-up >= 3, memorizing <= 1.5 x baseline")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=200)
    parser.add_argument("--batch", type=int, default=40)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--vocabulary", nargs="+", default=["full", "captions"], choices=["full", "captions"])
    args = parser.parse_args()
    tokenizer = load_tokenizer(TOKENIZER_DIR)
    step_costs(tokenizer, args.vocabulary)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "activitynet"
        make_dataset(data_dir, args.videos)
        data = ActivityNetClips(ActivityNetPaths(data_dir, Path(tmp) / "cache"), "train")
        steps = min(args.steps, len(data) // args.batch)
        if steps < 2:
            parser.error(f"{len(data)} clips make {steps} batch(es) of {args.batch}; the loop needs 2: raise --videos")
        cfg = TrainConfig(lr=1e-4, batch_size=args.batch, epochs=1, checkpoint_every=10**6, device="cpu")

        raw_model = model()
        optimizer = torch.optim.AdamW(raw_model.parameters(), lr=cfg.lr)
        subset = [data[i] for i in epoch_order(len(data), cfg.seed, 0)[: steps * args.batch]]
        batches = [collate(subset[i * args.batch : (i + 1) * args.batch], tokenizer, cfg.max_tokens) for i in range(steps)]
        stamps = []
        for batch in batches:  # the step's math as train() does it: clipping included
            loss = raw_model(batch)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(raw_model.parameters(), cfg.grad_clip)
            optimizer.step()
            stamps.append(time.perf_counter())
        # steady state: from the end of step 1 to the end of the last, on both sides
        raw = (steps - 1) * args.batch / (stamps[-1] - stamps[0])

        chosen = epoch_order(len(data), cfg.seed, 0)[: steps * args.batch]  # the raw loop's samples
        slot = {sample: position for position, sample in enumerate(epoch_order(len(chosen), cfg.seed, 0))}

        class FirstSteps:
            """The raw loop's batches, in its order once train() shuffles them, read from the shards."""

            def __len__(self):
                return len(chosen)

            def __getitem__(self, i):
                return data[chosen[slot[i]]]

        stamps = []
        train(model(), FirstSteps(), [subset[0]], tokenizer, cfg, Path(tmp) / "out",
              on_step=lambda step: stamps.append(time.perf_counter()))
        loop = (steps - 1) * args.batch / (stamps[-1] - stamps[0])
    print_table([{"batch": args.batch, "steps": steps, "raw": raw, "loop": loop, "ratio": loop / raw}],
                [("batch", "batch", "d"), ("steps", "steps", "d"), ("raw", "raw samples/s", ".1f"),
                 ("loop", "loop samples/s", ".1f"), ("ratio", "loop/raw", ".2f")],
                "tiny memorizing mapper + tiny GPT-2, CPU; target loop/raw >= 0.9")


if __name__ == "__main__":
    main()
