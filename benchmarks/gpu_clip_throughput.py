"""CLIP ViT-B/32 image-tower throughput on a GPU (fp16 autocast), for the ActivityNet ingest estimate.

    python benchmarks/gpu_clip_throughput.py [--batch 256] [--steps 30]

Uses open_clip's ViT-B-32 when open_clip is installed, else timm's ``vit_base_patch32_clip_224``
(the same architecture: what a machine with only timm can measure). Random weights; frames/s of
224x224 inputs already on the GPU (decoding is measured on the CPU by video_throughput.py).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch


def image_tower() -> tuple[str, torch.nn.Module]:
    try:
        import open_clip
    except ImportError:
        import timm

        return "timm vit_base_patch32_clip_224", timm.create_model("vit_base_patch32_clip_224", pretrained=False)
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    return "open_clip ViT-B-32", model.visual


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU")
    name, model = image_tower()
    model = model.cuda().eval()
    frames = torch.randn(args.batch, 3, 224, 224, device="cuda")
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
        for _ in range(5):
            model(frames)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(args.steps):
            model(frames)
        torch.cuda.synchronize()
    rate = args.batch * args.steps / (time.perf_counter() - start)
    print(f"{name}, batch {args.batch}, fp16 autocast, {torch.cuda.get_device_name()}: {rate:,.0f} frames/s")


if __name__ == "__main__":
    main()
