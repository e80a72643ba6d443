"""Beam search with GPT-2's KV cache vs the recompute-everything loop of ClipCap's reference code.

    python benchmarks/beam_search.py [--batch 32] [--beam 5] [--max-tokens 67] [--layers 12]

GPT-2 124M architecture (random weights; no hub here), prefix of 10, CPU. Both loops run on the
same weights and must return the same tokens. Target (issue 5): cached >= 5x faster at beam 5,
batch 32. The reference loop's cost grows with the square of the length, so a shorter
``--max-tokens`` understates the speed-up.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from transformers import GPT2Config

from clipmemcap.model.beam import beam_search
from clipmemcap.model.prefix_lm import PrefixLM, load_gpt2

sys.path.insert(0, str(Path(__file__).parent))
from timing import best_times, print_table  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--beam", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=67)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    torch.manual_seed(0)
    lm = PrefixLM(load_gpt2(GPT2Config(n_layer=args.layers)), eos_token_id=50256).eval()
    prefix = torch.randn(args.batch, 10, 768) * 0.1
    outputs = {}

    def run(use_cache: bool):
        outputs[use_cache] = beam_search(lm, prefix, args.beam, args.max_tokens, stop_ids=(13,), use_cache=use_cache)

    t = best_times({"cached": lambda: run(True), "reference": lambda: run(False)}, args.repeats)
    same = outputs[True] == outputs[False]
    tokens = sum(len(s) for s in outputs[True])
    print_table([{"batch": args.batch, "beam": args.beam, "max_tokens": args.max_tokens, "tokens": tokens,
                  "cached_s": t["cached"], "reference_s": t["reference"], "speedup": t["reference"] / t["cached"],
                  "same": "yes" if same else "NO"}],
                [("batch", "batch", "d"), ("beam", "beam", "d"), ("max_tokens", "max tokens", "d"),
                 ("tokens", "tokens out", "d"), ("cached_s", "cached s", ".2f"), ("reference_s", "reference s", ".2f"),
                 ("speedup", "speed-up", ".1f"), ("same", "same tokens", "")],
                "GPT-2 124M architecture, random weights, CPU")


if __name__ == "__main__":
    main()
