"""COCO ingest throughput: images embedded per second end to end against CLIP alone.

    python benchmarks/image_throughput.py [--models ViT-B-32] [--images 256]

On synthetic COCO-like JPEGs (640x480 and similar, quality 92; random CLIP weights), at the same
batch size and torch thread count:
  (a) CLIP forward alone on images already decoded and resized in memory,
  end to end: Pillow decode || one ffmpeg resize per batch || CLIP, shards written.
Target (issue 3): end to end >= 0.85 x (a) for ViT-B-32.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from clipmemcap.frames.clip_encoder import ClipEncoder
from clipmemcap.core.config import ClipConfig, DecodeConfig
from clipmemcap.frames.ffmpeg_frames import decode_images
from clipmemcap.frames.embed import embed_stream
from clipmemcap.core.shards import write_image_shard
from clipmemcap.sources.synthetic import make_coco_source

sys.path.insert(0, str(Path(__file__).parent))
from timing import best_times, print_table  # noqa: E402

TARGETS = {"ViT-B-32": 0.85}


def measure(model: str, items: list[tuple[str, Path]], batch: int, out: Path, repeats: int, decode: DecodeConfig) -> dict:
    encoder = ClipEncoder(ClipConfig(model=model, pretrained=None, device="cpu", batch_size=batch))
    batches = [items[i : i + batch] for i in range(0, len(items), batch)]

    def decode_batch(job):
        return decode_images(job, encoder.image_size, 10**8, decode.ffmpeg_threads)

    ready = [block for job in batches for block in decode_batch(job)]  # also warms the page cache
    encoder.encode(ready[0][:2])  # warm-up

    def end_to_end():
        for job, embeddings in embed_stream(batches, encoder, decode_batch, lambda job: job[0][0], decode.workers):
            write_image_shard(out / f"{job[0][0]}.parquet", np.array([int(k) for k, _ in job]), embeddings, "float16")

    t = best_times({"clip": lambda: [encoder.encode(block) for block in ready], "e2e": end_to_end}, repeats)
    a, c = len(items) / t["clip"], len(items) / t["e2e"]
    target = TARGETS.get(model)
    return {"model": model, "batch": batch, "threads": torch.get_num_threads(), "images": len(items),
            "clip_ips": a, "e2e_ips": c, "ratio": c / a, "target": target or "",
            "verdict": "" if target is None else ("ok" if c / a >= target else "MISS")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["ViT-B-32", "TinyViT"])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--decode-workers", type=int, default=DecodeConfig().workers)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs per measurement")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        source = make_coco_source(Path(tmp) / "coco", n_images=args.images)
        items = [(str(i), source.images_root / f) for i, f in sorted(source.files.items())]
        decode = DecodeConfig(workers=args.decode_workers)
        rows = [measure(m, items, args.batch, Path(tmp), args.repeats, decode) for m in args.models]
    print_table(rows, [("model", "model", ""), ("batch", "batch", "d"), ("threads", "threads", "d"),
                       ("images", "images", "d"), ("clip_ips", "(a) clip", ".1f"), ("e2e_ips", "end-to-end", ".1f"),
                       ("ratio", "e2e/clip", ".2f"), ("target", "target", ""), ("verdict", "", "")],
                "images/s; (a) CLIP forward on decoded, resized images; end-to-end = decode || CLIP + shards")


if __name__ == "__main__":
    main()
