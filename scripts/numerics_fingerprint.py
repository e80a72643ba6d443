#!/usr/bin/env python3
"""Fingerprint of this machine's torch numerics under the project's pins: the SHA-256 (first 16
hex digits) of

  clip     the TinyViT-112 image tower's embeddings of 64 fixed random 112-px frames;
  train    every weight after 30 fused-AdamW steps of a small memorizing mapper + GPT-2-shaped LM
           on fixed random frames and tokens (the ops of pre-training and fine-tuning).

Two machines whose digests agree under a setting make the same bytes for these ops under it.
Compare with reports/numerics/*.json (other CPUs; README "Reproducible to the byte"):

    .venv/bin/python scripts/numerics_fingerprint.py
    FINGERPRINT_NO_MKLDNN=1 .venv/bin/python scripts/numerics_fingerprint.py   # oneDNN off

FINGERPRINT_THREADS sets torch's threads (default 2, as the committed results were made with:
the thread count changes how reductions split, and so the training digest). Importing clipmemcap
applies the project's pins (clipmemcap/core/numerics.py) before torch loads; a variable set in the
environment wins, so other settings can be tried without editing the code.
"""

import hashlib
import json
import os
import platform
import time
from pathlib import Path

import clipmemcap  # noqa: F401  (pins before torch loads)
import open_clip
import torch
from transformers import GPT2Config

from clipmemcap.model.captioner import CaptionModel
from clipmemcap.model.mappers import MapperConfig, build_mapper
from clipmemcap.model.prefix_lm import PrefixLM, load_gpt2

SETTINGS = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR")


def digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().contiguous().numpy().tobytes()).hexdigest()[:16]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor()


def clip_embeddings(generator: torch.Generator) -> torch.Tensor:
    torch.manual_seed(0)
    config = json.loads((Path(clipmemcap.__file__).parent / "frames/clip_configs/TinyViT-112.json").read_text())
    clip = open_clip.model.CLIP(**config).eval()
    with torch.no_grad():
        return clip.encode_image(torch.rand(64, 3, 112, 112, generator=generator))  # [64, 64]


def trained_weights(generator: torch.Generator) -> tuple[torch.Tensor, float]:
    torch.manual_seed(0)
    mapper = build_mapper(MapperConfig.load("video-memorizing", clip_dim=64, embed_dim=64, heads=4, layers=2,
                                            prefix_length=4, window=16, top_k=8))
    lm = PrefixLM(load_gpt2(GPT2Config(vocab_size=512, n_positions=64, n_embd=64, n_layer=2, n_head=4,
                                           bos_token_id=0, eos_token_id=0)), 0)
    model = CaptionModel(mapper, lm)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01, fused=True)
    frames, times = torch.randn(8, 80, 64, generator=generator), torch.arange(80).float().expand(8, 80) / 5
    lengths = torch.tensor([80, 70, 64, 50, 33, 20, 16, 9])
    tokens = torch.randint(1, 512, (8, 12), generator=generator)
    mask = torch.ones_like(tokens, dtype=torch.bool)
    for _ in range(30):
        loss = lm(mapper(frames, times, lengths), tokens, mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return torch.cat([p.flatten() for p in model.parameters()]), float(loss.detach())


def main() -> None:
    torch.set_num_threads(int(os.environ.get("FINGERPRINT_THREADS", "2")))
    if os.environ.get("FINGERPRINT_NO_MKLDNN"):
        torch.backends.mkldnn.enabled = False
    generator = torch.Generator().manual_seed(1)  # one stream: the frames, then the training data
    start = time.perf_counter()
    embeddings = clip_embeddings(generator)
    clip_s = time.perf_counter() - start
    start = time.perf_counter()
    weights, loss = trained_weights(generator)
    train_s = time.perf_counter() - start
    print(json.dumps({
        "cpu": cpu_model(),
        "settings": {name: os.environ.get(name) for name in SETTINGS}
                    | {"mkldnn": torch.backends.mkldnn.enabled, "torch": torch.__version__,
                       "threads": torch.get_num_threads()},
        "clip": digest(embeddings),
        "train": digest(weights),
        "loss": loss,
        "seconds": {"clip": round(clip_s, 2), "train": round(train_s, 2)},
    }))


if __name__ == "__main__":
    main()
