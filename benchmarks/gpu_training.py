"""GPU training step: GPT-2 124M prefix LM at batch 40 (prefix 10 + 40 tokens), two loops side by side.

    python benchmarks/gpu_training.py [--steps 50] [--compile]

- ``fp32 eager``: the plain loop (fp32, eager, for-each AdamW);
- ``ours``: what clipmemcap.training.loop does on a GPU (bf16 autocast) plus fused AdamW, and
  ``torch.compile`` with ``--compile``.
Random weights of the real architectures (no hub needed). Prints samples/s for both, measured in
the same run on the same batches. Needs CUDA; exits with a message otherwise.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from transformers import GPT2Config

from clipmemcap.model.mappers import MapperConfig, build_mapper
from clipmemcap.model.prefix_lm import PrefixLM, load_gpt2

sys.path.insert(0, str(Path(__file__).parent))
from timing import print_table  # noqa: E402


def run(steps: int, bf16: bool, fused: bool, compile_model: bool, batch: int) -> float:
    torch.manual_seed(0)
    device = torch.device("cuda")
    mapper = build_mapper(MapperConfig.load("clipcap-mlp")).to(device)
    lm = PrefixLM(load_gpt2(GPT2Config()), eos_token_id=50256).to(device).train()
    parameters = list(mapper.parameters()) + list(lm.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=2e-5, fused=fused)
    frames = torch.randn(batch, 1, 512, device=device)
    times, lengths = torch.zeros(batch, 1, device=device), torch.ones(batch, dtype=torch.long, device=device)
    tokens = torch.randint(0, 50256, (batch, 40), device=device)
    mask = torch.ones_like(tokens)

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            loss = lm(mapper(frames, times, lengths), tokens, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()

    if compile_model:
        lm.gpt2 = torch.compile(lm.gpt2)
    for _ in range(5):  # warm-up (and compilation)
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--batch", type=int, default=40)
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("benchmarks/gpu_training.py needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 baseline stays true fp32
    plain = run(args.steps, bf16=False, fused=False, compile_model=False, batch=args.batch)
    ours = run(args.steps, bf16=True, fused=True, compile_model=args.compile, batch=args.batch)
    print_table([{"loop": "fp32 eager", "sps": plain, "x": 1.0},
                 {"loop": "bf16 + fused AdamW" + (" + compile" if args.compile else ""), "sps": ours, "x": ours / plain}],
                [("loop", "loop", ""), ("sps", "samples/s", ".1f"), ("x", "speed-up", ".2f")],
                f"GPT-2 124M + ClipCap MLP mapper, batch {args.batch}, prefix 10 + 40 tokens, {torch.cuda.get_device_name()}")


if __name__ == "__main__":
    main()
