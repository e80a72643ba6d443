"""A mapper's configuration: JSON files (``clipmemcap/model/mapper_configs``, or any path) read
into :class:`MapperConfig`, every field checked, since a config may come from a shared folder."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from clipmemcap.model.memory import MEMORIES
from clipmemcap.model.safe_loading import read_config

KINDS = ("mlp", "transformer", "temporal", "memorizing")
RETRIEVALS = ("top-k", "random", "dense", "oracle")

MAPPER_CONFIGS = Path(__file__).parent / "mapper_configs"
# Bounds of a config's sizes: far beyond any real mapper (ClipCap's: 8 layers of 768, 10 frames),
# and short of sizes whose mere construction would exhaust memory or time.
_INT_BOUNDS = {"clip_dim": (1, 16_384), "embed_dim": (1, 16_384), "prefix_length": (1, 1_024), "clip_length": (1, 1_024),
               "layers": (1, 256), "heads": (1, 256), "window": (1, 4_096), "top_k": (1, 65_536),
               "memory_capacity": (1, 1 << 24)}


@dataclass(frozen=True)
class MapperConfig:
    kind: str  # mlp | transformer | temporal | memorizing
    clip_dim: int = 512  # D
    embed_dim: int = 768  # E, GPT-2's width
    prefix_length: int = 10  # L
    clip_length: int = 10  # transformer image mapper: tokens made from one embedding
    layers: int = 8
    heads: int = 8
    mlp_ratio: float = 2.0
    window: int = 10  # W: frames per step of the video mappers
    frame_policy: str = "uniform"  # temporal: uniform | last | mean
    time_scale: float = 5.0  # time encoding positions per second (5 = one per 5 fps frame)
    knn_layers: tuple[int, ...] = (-2,)  # layers with normalised attention (+ memory if memorizing)
    top_k: int = 32
    # Entries per clip; FIFO eviction beyond. 4,096 frames (13.6 min at 5 fps) hold the longest
    # ActivityNet video (755 s) whole, and bound the exact search, so cost stays linear in length.
    memory_capacity: int = 4_096
    memory_backend: str = "torch"
    xl_cache: bool = False  # memorizing: local attention in the kNN layer also sees the previous chunk
    # memorizing: the memory's mechanism (clipmemcap.model.memory: knn, or the slot memories
    # reservoir, merge and kmeans, and recurrent memory tokens, whose slots memory_capacity counts) and its read path
    # (clipmemcap.model.memory.read_path): which entries a query reads, whether gradients reach them, and
    # how memory and local attention are combined
    memory: str = "knn"
    retrieval: str = "top-k"  # top-k | random | dense | oracle
    differentiable: bool = False
    combine: str = "gate"  # gate | joint

    def __post_init__(self):
        # A config may come from a shared folder: every size is bounded before anything is built.
        for name, (low, high) in _INT_BOUNDS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"mapper {name} must be an integer in [{low}, {high:,}], not {str(value)[:40]}")
        for name, high in (("mlp_ratio", 64.0), ("time_scale", 1e4)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= high:
                raise ValueError(f"mapper {name} must be a number in (0, {high:g}], not {str(value)[:40]}")
        if not (isinstance(self.knn_layers, (list, tuple)) and len(self.knn_layers) <= self.layers and all(
                isinstance(i, int) and not isinstance(i, bool) and -self.layers <= i < self.layers for i in self.knn_layers)):
            raise ValueError(f"mapper knn_layers must be layer indices of its {self.layers} layers, "
                             f"not {str(self.knn_layers)[:40]}")
        object.__setattr__(self, "knn_layers", tuple(i % self.layers for i in self.knn_layers))
        if self.kind not in KINDS:
            raise ValueError(f"unknown mapper kind {str(self.kind)[:40]!r}; choose one of {sorted(KINDS)}")
        if self.memory_backend not in ("torch", "faiss-flat", "faiss-hnsw"):
            raise ValueError(f"unknown memory backend {self.memory_backend!r}; choose torch, faiss-flat or faiss-hnsw")
        for name in ("xl_cache", "differentiable"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"mapper {name} must be true or false, not {str(getattr(self, name))[:40]}")
        if self.memory not in MEMORIES:
            raise ValueError(f"unknown memory {str(self.memory)[:40]!r}; choose one of {', '.join(MEMORIES)}")
        if self.memory != "knn" and (self.memory_backend != "torch" or self.xl_cache):
            raise ValueError(f"the {self.memory} memory keeps its slots in torch and has no Transformer-XL cache: "
                             "memory_backend torch, xl_cache false")
        if self.memory == "recurrent" and not self.differentiable:
            raise ValueError("recurrent memory tokens are trained through time: their read path must say "
                             "differentiable: true")
        if self.combine not in ("gate", "joint"):
            raise ValueError(f"unknown memory combine {str(self.combine)[:40]!r}; choose gate or joint")
        if (self.differentiable or self.retrieval == "oracle") and self.memory_backend != "torch":
            raise ValueError(f"a differentiable or oracle read runs on whole clips: memory_backend torch, "
                             f"not {self.memory_backend}")
        if self.embed_dim % self.heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by heads {self.heads}")
        if self.frame_policy not in ("uniform", "last", "mean"):
            raise ValueError(f"unknown frame policy {self.frame_policy!r}; choose uniform, last or mean")
        if self.retrieval not in RETRIEVALS:
            raise ValueError(f"unknown retrieval {str(self.retrieval)[:40]!r}; choose one of {', '.join(RETRIEVALS)}")
        if self.memory_capacity < self.window:
            raise ValueError(f"memory_capacity {self.memory_capacity} is smaller than one window ({self.window})")

    @classmethod
    def load(cls, source: str | Path, **overrides) -> MapperConfig:
        """From a JSON file, or the name of one in ``clipmemcap/model/mapper_configs``."""
        path = Path(source)
        if not path.is_file():
            path = MAPPER_CONFIGS / f"{source}.json"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in MAPPER_CONFIGS.glob("*.json")))
            raise FileNotFoundError(f"no mapper config {source!r} (known: {known})")
        return cls.of({**read_config(path, "mapper config"), **overrides}, path)

    @classmethod
    def of(cls, fields: dict, source: str | Path = "mapper config") -> MapperConfig:
        """From a dict of fields; an unknown field or a bad value is an error naming ``source``."""
        unknown = fields.keys() - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"{source}: unknown mapper settings {', '.join(sorted(map(str, unknown)))}")
        try:
            return cls(**fields)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: {err}") from None
