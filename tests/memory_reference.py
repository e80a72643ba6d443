"""The prefixes and gradients of today's kNN memory configurations, as digests: what
``tests/assets/knn_prefix_digests.json`` holds (written by the code before memories became
plug-ins, commit b364843) and what the plug-in must reproduce bit for bit.

    .venv/bin/python tests/memory_reference.py > tests/assets/knn_prefix_digests.json
"""

import hashlib
import json

import torch

from clipmemcap.model.mappers import MapperConfig, build_mapper

SIZES = dict(clip_dim=16, embed_dim=32, heads=4, prefix_length=3, window=4, top_k=4)
# today's settings: the benchmark's (2 layers, the kNN layer at -2), and the other knobs one at a time
CASES = {"benchmark": {"layers": 2}, "three-layers": {"layers": 3}, "xl-cache": {"layers": 2, "xl_cache": True},
         "small-capacity": {"layers": 2, "memory_capacity": 6}, "bottom": {"layers": 4, "knn_layers": [0]},
         "two-knn-layers": {"layers": 3, "knn_layers": [0, 1]}, "random": {"layers": 2, "retrieval": "random"},
         "faiss-flat": {"layers": 2, "memory_backend": "faiss-flat"}}


def _digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().contiguous().numpy().tobytes()).hexdigest()


def digests() -> dict[str, dict[str, str]]:
    """Per case: the prefix of a batch of clips of 1-23 frames, and the gradient of every weight."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {}
        for name, options in CASES.items():
            torch.manual_seed(0)
            mapper = build_mapper(MapperConfig.load("video-memorizing", **{**SIZES, **options}))
            g = torch.Generator().manual_seed(1)
            frames, times = torch.randn(5, 23, 16, generator=g), torch.rand(5, 23, generator=g).cumsum(1)
            lengths = torch.tensor([23, 1, 9, 16, 12])
            torch.manual_seed(2)  # random retrieval draws from torch's generator
            prefix = mapper(frames, times, lengths)
            prefix.square().sum().backward()
            out[name] = {"prefix": _digest(prefix),
                         **{f"grad:{k}": _digest(p.grad) for k, p in mapper.named_parameters() if p.grad is not None}}
        return out
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    print(json.dumps(digests(), indent=1, sort_keys=True))
