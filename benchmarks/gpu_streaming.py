"""The mappers on a GPU: the same prefix as on the CPU, the same when streamed, and flat GPU memory
when one clip of 1 to 60 minutes streams through the memorizing mapper.

    python benchmarks/gpu_streaming.py [--minutes 1 10 60]

Default mapper sizes (ViT-B/32's 512-d frames, GPT-2's 768-d prefix, 8 layers), random weights.
Checks, printed and exiting non-zero on a mismatch: (1) each video mapper's prefix for a batch of
clips on CUDA equals the CPU's (max abs difference <= 1e-3: TF32 and kernel order differ);
(2) streaming a clip in 256-frame pieces equals ``forward`` on CUDA; (3) beam search on CUDA
gives the CPU's tokens. Then a table: wall time and peak CUDA memory streaming 5 fps clips.
Needs CUDA; exits with a message otherwise.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
from transformers import GPT2Config

from clipmemcap.model.beam import beam_search
from clipmemcap.model.mappers import MapperConfig, build_mapper
from clipmemcap.model.prefix_lm import PrefixLM, load_gpt2

sys.path.insert(0, str(Path(__file__).parent))
from timing import print_table  # noqa: E402

PIECE = 256


def mapper(name: str, **overrides):
    torch.manual_seed(0)
    return build_mapper(MapperConfig.load(name, **overrides)).eval()


def clips(lengths: list[int], dim: int = 512):
    g = torch.Generator().manual_seed(0)
    T = max(lengths)
    frames, times = torch.randn(len(lengths), T, dim, generator=g), torch.arange(T).float().repeat(len(lengths), 1) / 5
    return frames, times, torch.tensor(lengths)


def streamed(model, frames, times):
    stream = model.stream(len(frames))
    for first in range(0, len(frames), PIECE):
        stream.feed(frames[first : first + PIECE], times[first : first + PIECE])
    return stream.prefix()


def checks() -> list[str]:
    failures = []
    cuda = torch.device("cuda")
    batch = clips([300, 17, 1, 64])
    for name, options in (("video-memorizing", {}), ("video-temporal", {}), ("video-temporal", {"frame_policy": "mean"})):
        cpu_model = mapper(name, **options)
        gpu_model = mapper(name, **options).to(cuda)
        with torch.inference_mode():
            on_cpu = cpu_model(*batch)
            on_gpu = gpu_model(*(t.to(cuda) for t in batch))
            one = streamed(gpu_model, batch[0][0, :300].to(cuda), batch[1][0, :300].to(cuda))
        gap, stream_gap = (on_gpu.cpu() - on_cpu).abs().max().item(), (one - on_gpu[:1]).abs().max().item()
        label = f"{name} {options or ''}".strip()
        print(f"{label}: CUDA vs CPU max |diff| {gap:.2e}; streamed vs forward on CUDA {stream_gap:.2e}")
        if gap > 1e-3 or stream_gap > 1e-3:
            failures.append(label)

    lm_cpu = PrefixLM(load_gpt2(GPT2Config(n_layer=2)), eos_token_id=50256).eval()
    lm_gpu = copy.deepcopy(lm_cpu).to(cuda)
    prefix = torch.randn(3, 10, 768, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        same = beam_search(lm_cpu, prefix, 5, 12) == beam_search(lm_gpu, prefix.to(cuda), 5, 12)
    print(f"beam search, CUDA vs CPU: {'same tokens' if same else 'DIFFERENT tokens'}")
    return failures + ([] if same else ["beam search"])


def memory_table(minutes: list[float]) -> None:
    cuda = torch.device("cuda")
    model = mapper("video-memorizing").to(cuda)
    rows = []
    for m in minutes:
        n = int(m * 60 * 5)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        stream = model.stream(n)
        with torch.inference_mode():
            for first in range(0, n, PIECE):  # frames made piece by piece, as decoding hands them over
                size = min(PIECE, n - first)
                stream.feed(torch.randn(size, 512, device=cuda), torch.arange(first, first + size, device=cuda) / 5)
            stream.prefix()
        torch.cuda.synchronize()
        rows.append({"minutes": m, "frames": n, "wall": time.perf_counter() - start,
                     "peak": torch.cuda.max_memory_allocated() / 2**20})
    for row in rows:
        row["ratio"] = row["peak"] / rows[0]["peak"]
    print_table(rows, [("minutes", "minutes", "g"), ("frames", "frames", "d"), ("wall", "wall s", ".2f"),
                       ("peak", "peak CUDA MiB", ".1f"), ("ratio", f"vs {minutes[0]:g} min", ".2f")],
                f"memorizing mapper (default sizes, W = 10, memory capacity 4,096), one clip, on {torch.cuda.get_device_name()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 10.0, 60.0])
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU")
    failures = checks()
    memory_table(args.minutes)
    if failures:
        sys.exit(f"mismatch on CUDA: {', '.join(failures)}")


if __name__ == "__main__":
    main()
