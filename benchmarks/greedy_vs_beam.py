"""Does beam search change any slot? Greedy (beam 1) against the evaluate stage's beam on the
fine-tuned runs of the long-range benchmark, on the test clips, and what each costs.

    python benchmarks/greedy_vs_beam.py [--runs memorizing uniform] [--seed 0] [--beam 5]

Needs the trained runs (`dvc repro`); reads them, writes nothing. Prints per run: test clips, the
clips whose slots differ between the two decodings, both slot accuracies and decoding times.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from clipmemcap.core.config import load_config
from clipmemcap.core.layout import Layout
from clipmemcap.model.beam import beam_search, captions
from clipmemcap.model.captioner import load_caption_model, stop_ids
from clipmemcap.results.slots import clip_scores, slots
from clipmemcap.training.datasets import ActivityNetClips, collate

sys.path.insert(0, str(Path(__file__).parent))
from timing import print_table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", default=["memorizing", "uniform"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--beam", type=int, default=5)
    args = parser.parse_args()
    cfg = load_config()
    layout = Layout.of(cfg)
    clips = ActivityNetClips(layout.activitynet, "test")
    rows = []
    for run in args.runs:
        model, tokenizer = load_caption_model(cfg, layout.finetune(run, args.seed))
        stops, texts, seconds = stop_ids(cfg, tokenizer), {}, {}
        device = next(model.parameters()).device
        for beam in (1, args.beam):
            texts[beam], start = [], time.perf_counter()
            for first in range(0, len(clips), cfg.evaluate.batch_size):
                batch = collate([clips[i] for i in range(first, min(len(clips), first + cfg.evaluate.batch_size))],
                                tokenizer, max_tokens=1)
                with torch.inference_mode():
                    prefix = model.mapper(batch.frames.to(device), batch.times.to(device), batch.lengths.to(device))
                texts[beam] += captions(tokenizer, beam_search(model.lm, prefix, beam, cfg.evaluate.max_tokens, stops))
            seconds[beam] = time.perf_counter() - start
        references = [clips.rows[i]["caption"] for i in range(len(clips))]
        differ = sum(slots(a, cfg.benchmark) != slots(b, cfg.benchmark) for a, b in zip(texts[1], texts[args.beam]))
        rows.append({"run": run, "clips": len(clips), "differ": differ,
                     "greedy": clip_scores(zip(texts[1], references), cfg.benchmark).mean(),
                     "beam": clip_scores(zip(texts[args.beam], references), cfg.benchmark).mean(),
                     "t_greedy": seconds[1], "t_beam": seconds[args.beam]})
    print_table(rows, [("run", "run", "s"), ("clips", "test clips", "d"), ("differ", "slots differ", "d"),
                       ("greedy", "greedy acc", ".3f"), ("beam", f"beam {args.beam} acc", ".3f"),
                       ("t_greedy", "greedy s", ".1f"), ("t_beam", f"beam {args.beam} s", ".1f")],
                f"seed {args.seed}; slot accuracy over all test clips (long and control)")


if __name__ == "__main__":
    main()
