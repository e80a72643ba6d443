"""Mapping networks: CLIP embeddings of a clip's frames -> a prefix of L GPT-2 embeddings.

Every mapper takes ``frames [B, T, D]`` (CLIP embeddings), ``times [B, T]`` (seconds from the
clip's start) and ``lengths [B]`` (valid frames per row; the rest is padding) and returns
``prefix [B, L, E]``. An image is a one-frame clip.

- ``mlp``, ``transformer``: ClipCap's image mappers (Mokady et al. 2021), applied to the mean
  embedding of the valid frames (the ``mean`` video baseline; for an image, the image itself).
- ``temporal``: a Transformer over W frame tokens chosen by ``frame_policy`` (``uniform`` or
  ``last``; ``mean``: one token, the mean frame), each frame one token plus an encoding of its
  time, and L learned prefix tokens.
- ``memorizing``: the same Transformer run over the whole clip in consecutive chunks of W frames;
  its kNN layer(s) also attend to the top-k keys of the clip's earlier chunks in an external,
  non-differentiable memory (Wu et al. 2022). See :class:`MemorizingMapper`.

The video mappers name their shared parts as ClipCap's Transformer mapper does (``prefix_const``,
``transformer.layers.*``), so :func:`load_shared` initialises them from a pretrained image mapper.
Configurations are JSON files (``clipmemcap/model/mapper_configs``), read into :class:`MapperConfig`.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from clipmemcap.model.knn_memory import KNNMemory, select
from clipmemcap.model.safe_loading import MAX_PARAMETERS, check_size, check_weights, expected_tensors, read_config

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
    retrieval: str = "top-k"  # memorizing: "random" reads k random memories (the ablation of content-based retrieval)
    xl_cache: bool = False  # memorizing: local attention in the kNN layer also sees the previous chunk

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
        if self.kind not in MAPPERS:
            raise ValueError(f"unknown mapper kind {self.kind!r}; choose one of {sorted(MAPPERS)}")
        if self.memory_backend not in ("torch", "faiss-flat", "faiss-hnsw"):
            raise ValueError(f"unknown memory backend {self.memory_backend!r}; choose torch, faiss-flat or faiss-hnsw")
        if not isinstance(self.xl_cache, bool):
            raise ValueError(f"mapper xl_cache must be true or false, not {str(self.xl_cache)[:40]}")
        if self.embed_dim % self.heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by heads {self.heads}")
        if self.frame_policy not in ("uniform", "last", "mean"):
            raise ValueError(f"unknown frame policy {self.frame_policy!r}; choose uniform, last or mean")
        if self.retrieval not in ("top-k", "random"):
            raise ValueError(f"unknown retrieval {self.retrieval!r}; choose top-k or random")
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


# ---------------------------------------------------------------------------------------------
# Building blocks (ClipCap's Transformer: pre-norm, bias-free query/key/value, ReLU MLP)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head self-attention. ``normalised`` (the kNN layers): queries and keys are
    L2-normalised and scaled by a learned temperature, so keys stored in memory stay comparable
    with later queries."""

    def __init__(self, dim: int, heads: int, normalised: bool = False):
        super().__init__()
        self.heads, self.head_dim, self.normalised = heads, dim // heads, normalised
        self.to_queries = nn.Linear(dim, dim, bias=False)
        self.to_keys_values = nn.Linear(dim, 2 * dim, bias=False)
        self.project = nn.Linear(dim, dim)
        if normalised:
            self.log_scale = nn.Parameter(torch.tensor(math.log(math.sqrt(self.head_dim) * 2)))

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [B, T, E] -> q, k, v [B, H, T, d]."""
        B, T, _ = x.shape
        q = self.to_queries(x).view(B, T, self.heads, self.head_dim).transpose(1, 2)
        k, v = self.to_keys_values(x).view(B, T, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.normalised:
            q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        return q, k, v

    def scale(self) -> torch.Tensor | float:
        return self.log_scale.exp() if self.normalised else self.head_dim**-0.5

    def attend(self, q, k, v, key_mask: torch.Tensor) -> torch.Tensor:
        """key_mask [B, T] (True = may be attended to) -> [B, H, T, d]."""
        scores = (q @ k.transpose(-1, -2)) * self.scale()  # [B, H, T, T]
        scores = scores.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        return scores.softmax(-1) @ v

    def merge(self, out: torch.Tensor) -> torch.Tensor:
        B, H, T, d = out.shape
        return self.project(out.transpose(1, 2).reshape(B, T, H * d))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, normalised: bool = False):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads, normalised)
        self.norm2, self.mlp = nn.LayerNorm(dim), MLP(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor, memory: MemoryStep | ChunkMemory | None = None) -> torch.Tensor:
        q, k, v = self.attn.split(self.norm1(x))
        x = x + self.attn.merge(self.attend(q, k, v, key_mask, memory))
        return x + self.mlp(self.norm2(x))

    def attend(self, q, k, v, key_mask, memory: MemoryStep | ChunkMemory | None) -> torch.Tensor:
        return self.attn.attend(q, k, v, key_mask)  # [B, H, T, d]


class KNNBlock(Block):
    """A block with normalised attention that, given a chunk step's memory, also attends to each
    query's top-k keys among the clip's earlier chunks (Wu et al. 2022): local attention and
    memory attention are softmaxed separately and mixed by a learned per-head sigmoid gate; then
    the chunk's frame keys and values are written to the memory. Without a memory (the temporal
    mappers, a clip's first chunk) it is a plain block with normalised attention."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__(dim, heads, mlp_ratio, normalised=True)
        self.gate = nn.Parameter(torch.zeros(heads))  # sigmoid -> 1: memory, -> 0: local attention

    def attend(self, q, k, v, key_mask, memory: MemoryStep | ChunkMemory | None) -> torch.Tensor:
        if memory is None:
            return self.attn.attend(q, k, v, key_mask)
        out = self.attn.attend(q, *memory.local_context(k, v, key_mask))
        recalled = memory.recall(q, k, v, self.attn.scale())
        if recalled is not None:
            remembered, remembers = recalled  # [B, H, T, d], [B, 1, 1, 1]: whether the row holds any memory
            gate = torch.sigmoid(self.gate)[:, None, None]  # [H, 1, 1]
            out = torch.where(remembers, gate * remembered + (1 - gate) * out, out)
        return out


def attend_selected(q, keys, values, selected, scale) -> torch.Tensor:
    """Attention of q [B, H, T, d] over the ``selected [B, H, T, n]`` entries of the memory's
    keys, values [B, H, n, d] (detached: gradients reach the queries, never the memory)."""
    scores = (q @ keys.transpose(-1, -2).to(q.dtype)) * scale  # [B, H, T, n]
    # A query that selects nothing (its row holds nothing yet) gets a finite fill, so its softmax
    # and gradient stay finite; the caller keeps its local attention.
    return scores.masked_fill(~selected, torch.finfo(scores.dtype).min).softmax(-1) @ values.to(q.dtype)


class Transformer(nn.Module):
    def __init__(self, cfg: MapperConfig, knn_layers: tuple[int, ...] = ()):
        super().__init__()
        self.layers = nn.ModuleList(
            KNNBlock(cfg.embed_dim, cfg.heads, cfg.mlp_ratio) if i in knn_layers else Block(cfg.embed_dim, cfg.heads, cfg.mlp_ratio)
            for i in range(cfg.layers))

    def forward(self, x, key_mask, memories: dict[int, MemoryStep] | None = None):
        """``memories``: each kNN layer's memory, by layer index."""
        for i, layer in enumerate(self.layers):
            x = layer(x, key_mask, memories[i] if memories and isinstance(layer, KNNBlock) else None)
        return x


def valid_mask(lengths: torch.Tensor, T: int) -> torch.Tensor:
    return torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]  # [B, T]


def time_encoding(times: torch.Tensor, dim: int, scale: float) -> torch.Tensor:
    """Sinusoidal encoding of absolute time [B, T] (seconds) -> [B, T, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=times.device) / half)
    angles = times[..., None].float() * scale * freqs  # [B, T, half]
    return torch.cat([angles.sin(), angles.cos()], -1)


# ---------------------------------------------------------------------------------------------
# ClipCap's image mappers; on a clip they map the mean of its valid frames


class ImageMapper(nn.Module):
    def forward(self, frames: torch.Tensor, times: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = valid_mask(lengths, frames.shape[1])[..., None]  # [B, T, 1]
        mean = (frames * mask).sum(1) / mask.sum(1).clamp(min=1)  # [B, D]
        return self.map(mean)

    def stream(self, n: int) -> ClipStream:
        return MeanStream(n, lambda mean, at: self.map(mean[:, 0]))


class MLPMapper(ImageMapper):
    """Linear(D -> E*L/2) -> Tanh -> Linear(-> E*L)."""

    def __init__(self, cfg: MapperConfig):
        super().__init__()
        self.cfg = cfg
        hidden = cfg.embed_dim * cfg.prefix_length // 2
        self.model = nn.Sequential(nn.Linear(cfg.clip_dim, hidden), nn.Tanh(),
                                   nn.Linear(hidden, cfg.embed_dim * cfg.prefix_length))

    def map(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.model(embedding).view(-1, self.cfg.prefix_length, self.cfg.embed_dim)


class TransformerMapper(ImageMapper):
    """Linear(D -> clip_length*E) joined with a learned constant of L*E; the output is the
    constant's positions after a bidirectional Transformer."""

    def __init__(self, cfg: MapperConfig):
        super().__init__()
        self.cfg = cfg
        self.linear = nn.Linear(cfg.clip_dim, cfg.clip_length * cfg.embed_dim)
        self.prefix_const = nn.Parameter(torch.randn(cfg.prefix_length, cfg.embed_dim))
        self.transformer = Transformer(cfg)

    def map(self, embedding: torch.Tensor) -> torch.Tensor:
        B = embedding.shape[0]
        x = self.linear(embedding).view(B, self.cfg.clip_length, self.cfg.embed_dim)
        x = torch.cat([x, self.prefix_const.expand(B, -1, -1)], 1)  # [B, clip_length + L, E]
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        return self.transformer(x, mask)[:, self.cfg.clip_length :]


# ---------------------------------------------------------------------------------------------
# Video mappers


class VideoTransformer(nn.Module):
    """W frame tokens (projection + time encoding) and L learned prefix tokens through the
    Transformer; returns the prefix tokens' outputs. Frames are centred and whitened with the
    training data's statistics (buffers set by pre-training, identity until then): the same
    function class, but an optimiser that starts on equal footing in every direction. Without
    it, gradient descent learns the few directions that hold most of the variance first: in the
    benchmark's random-weight CLIP embeddings colour holds 74 % of it and shape 5 %, and the
    captioners learned colours but not shapes."""

    def __init__(self, cfg: MapperConfig):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("frame_mean", torch.zeros(cfg.clip_dim))
        self.register_buffer("frame_whitening", torch.eye(cfg.clip_dim))  # [D, D]
        self.frame_proj = nn.Linear(cfg.clip_dim, cfg.embed_dim)
        self.prefix_const = nn.Parameter(torch.randn(cfg.prefix_length, cfg.embed_dim))
        self.transformer = Transformer(cfg, cfg.knn_layers)

    def tokens(self, frames, times, frame_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """frames [B, W, D], times [B, W], frame_mask [B, W] -> tokens [B, W + L, E] (frames, then
        the prefix) and their key mask [B, W + L]."""
        B, W, _ = frames.shape
        frames = (frames - self.frame_mean) @ self.frame_whitening
        x = self.frame_proj(frames) + time_encoding(times, self.cfg.embed_dim, self.cfg.time_scale)
        x = torch.cat([x, self.prefix_const.expand(B, -1, -1)], 1)
        return x, torch.cat([frame_mask, frame_mask.new_ones(B, self.cfg.prefix_length)], 1)

    def encode(self, frames, times, frame_mask, memories: dict[int, MemoryStep] | None = None) -> torch.Tensor:
        """frames [B, W, D], times [B, W], frame_mask [B, W] -> prefix [B, L, E]."""
        x, key_mask = self.tokens(frames, times, frame_mask)
        return self.transformer(x, key_mask, memories)[:, frames.shape[1]:]

    def set_frame_statistics(self, mean: np.ndarray, whitening: np.ndarray) -> None:
        """mean [D] and whitening [D, D] (see :func:`clipmemcap.training.datasets.frame_statistics`)."""
        self.frame_mean.copy_(torch.as_tensor(mean))
        self.frame_whitening.copy_(torch.as_tensor(whitening))


def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x [B, T, ...], index [B, W] -> [B, W, ...]."""
    return x[torch.arange(x.shape[0], device=x.device)[:, None], index]


def select_frames(lengths: torch.Tensor, window: int, policy: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices [B, W] of the frames a temporal mapper sees, and their mask. A clip of at most W
    frames is seen whole."""
    steps = torch.arange(window, device=lengths.device)[None, :]  # [1, W]
    n = lengths[:, None]
    if policy == "uniform":
        spread = torch.round(steps * (n - 1).clamp(min=0) / max(window - 1, 1)).long()
        index = torch.where(n > window, spread, steps)
    elif policy == "last":
        index = (n - window).clamp(min=0) + steps
    else:
        raise ValueError(f"unknown frame policy {policy!r}; choose uniform or last")
    mask = steps < n
    return index.clamp(max=(n - 1).clamp(min=0)), mask


class TemporalMapper(VideoTransformer):
    def stream(self, n: int) -> ClipStream:
        if self.cfg.frame_policy == "mean":
            return MeanStream(n, lambda mean, at: self.encode(mean, at, torch.ones_like(at, dtype=torch.bool)))
        index, mask = select_frames(torch.tensor([n]), self.cfg.window, self.cfg.frame_policy)
        return SelectionStream(n, index[0], lambda frames, times: self.encode(frames, times, mask.to(frames.device)))

    def forward(self, frames, times, lengths) -> torch.Tensor:
        if self.cfg.frame_policy == "mean":  # one token: the mean frame at the mean time
            weights = valid_mask(lengths, frames.shape[1]) / lengths.clamp(min=1)[:, None]  # [B, T]
            mean, at = (frames * weights[..., None]).sum(1, keepdim=True), (times * weights).sum(1, keepdim=True)
            return self.encode(mean, at, torch.ones_like(at, dtype=torch.bool))
        index, mask = select_frames(lengths, self.cfg.window, self.cfg.frame_policy)
        return self.encode(_gather(frames, index), _gather(times, index), mask)


class MemoryStep:
    """One kNN layer's memory of the clips as one chunk step sees it: the store, which of the chunk's frames to
    store (not padding, nor the frames of a clip that has not started yet), and (with ``xl``) the
    previous chunk's frame keys and values, which local attention also sees, detached, as in
    Transformer-XL. :class:`KNNBlock` reads and writes through it, one chunk after another."""

    def __init__(self, store: KNNMemory, top_k: int, window: int, xl: bool):
        self.store, self.top_k, self.window, self.xl = store, top_k, window, xl
        self.frame_mask: torch.Tensor | None = None  # [B, W]: this chunk's frames to store (False: padding, not started)
        self.previous: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # k, v [B, H, W, d], mask [B, W]

    def next_chunk(self, frame_mask: torch.Tensor) -> None:
        self.frame_mask = frame_mask

    def local_context(self, k, v, key_mask):
        """Keys, values and key mask for local attention: this chunk, after the previous one."""
        if not self.xl or self.previous is None:
            return k, v, key_mask
        pk, pv, pmask = self.previous
        return torch.cat([pk, k], 2), torch.cat([pv, v], 2), torch.cat([pmask, key_mask], 1)

    def recall(self, q, k, v, scale):
        """Read the earlier chunks (None before anything is stored), then store this chunk's frame
        keys and values; q, k, v [B, H, W + L, d], frame tokens first."""
        recalled = None
        if not self.store.empty:
            keys, values, selected = self.store.retrieve(q, self.top_k)
            recalled = attend_selected(q, keys, values, selected, scale), self.store.sizes.gt(0)[:, None, None, None]
        k, v = k[:, :, : self.window].detach(), v[:, :, : self.window].detach()
        self.store.add(k, v, self.frame_mask)
        if self.xl:
            self.previous = (k, v, self.frame_mask)
        return recalled


class ChunkMemory:
    """A kNN layer's memory over every chunk of the clips at once, as :class:`MemoryStep` would
    see them one after another: chunk c of a row reads (top-k) the frame keys and values the
    layer made for the row's earlier chunks, of those the latest ``capacity`` frames (what a FIFO
    memory holds). Exact search (the ``torch`` backend)."""

    def __init__(self, frame_mask: torch.Tensor, cfg: MapperConfig):
        B, S, W = frame_mask.shape  # [B, S chunks, W]
        self.frame_mask, self.cfg = frame_mask, cfg
        self.stored: tuple[torch.Tensor, torch.Tensor] | None = None  # see final_chunk
        counts = frame_mask.sum(2)  # [B, S]
        before = counts.cumsum(1) - counts  # [B, S]: frames stored before each chunk
        rank = frame_mask.flatten(1).cumsum(1)  # [B, S * W]: each frame's insertion number, from 1
        chunk = torch.arange(S, device=frame_mask.device)
        self.readable = (frame_mask.flatten(1)[:, None, :]  # [B, S (reading chunk), S * W (frames)]
                         & (chunk.repeat_interleave(W)[None, None, :] < chunk[None, :, None])
                         & (rank[:, None, :] > (before - cfg.memory_capacity)[:, :, None]))
        self.remembers = before > 0  # [B, S]

    def final_chunk(self, k: torch.Tensor, v: torch.Tensor) -> ChunkMemory:
        """The view of the top kNN layer, which runs on the final chunk alone (above it nothing
        else is used): it reads every chunk's keys and values k, v [B * S, H, W + L, d]."""
        view = copy.copy(self)
        view.stored = self._frames(k), self._frames(v)
        return view

    def _frames(self, x: torch.Tensor) -> torch.Tensor:
        """[B * S, H, W + L, d] -> every chunk's frame tokens, detached, [B, H, S * W, d]."""
        B, S, W = self.frame_mask.shape
        return x.view(B, S, *x.shape[1:])[:, :, :, :W].detach().transpose(1, 2).flatten(2, 3)

    def local_context(self, k, v, key_mask):
        if not self.cfg.xl_cache:
            return k, v, key_mask
        B, S, W = self.frame_mask.shape
        if self.stored is None:  # every chunk, after the one before it
            shift = lambda x: torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], 1).flatten(0, 1)  # noqa: E731
            previous = [self._frames(x).unflatten(2, (S, W)).transpose(1, 2) for x in (k, v)] + [self.frame_mask]
            pk, pv, pmask = (shift(x) for x in previous)
        else:  # the final chunk, after chunk S - 2
            pk, pv = (x[:, :, -2 * W : -W] if S > 1 else torch.zeros_like(x[:, :, :W]) for x in self.stored)
            pmask = self.frame_mask[:, -2] if S > 1 else torch.zeros_like(self.frame_mask[:, 0])
        return torch.cat([pk, k], 2), torch.cat([pv, v], 2), torch.cat([pmask, key_mask], 1)

    def recall(self, q, k, v, scale):
        """q, k, v [B * S, H, T = W + L, d] (the final chunk's [B, H, T, d] in the top layer's
        view) -> the reads, shaped like q, and whether each query's row holds any memory."""
        if self.stored is not None:
            keys, values = self.stored
            readable, remembers = self.readable[:, -1, None, None], self.remembers[:, -1]  # [B, 1, 1, S * W], [B]
            selected = select(q, keys, readable, self.cfg.top_k, self.cfg.retrieval)
            return attend_selected(q, keys, values, selected, scale), remembers[:, None, None, None]
        B, S, W = self.frame_mask.shape
        H, T, d = q.shape[1:]
        queries = q.view(B, S, H, T, d).transpose(1, 2).flatten(2, 3)  # [B, H, S * T, d]
        readable = self.readable.repeat_interleave(T, 1)[:, None]  # [B, 1, S * T, S * W]
        keys, values = self._frames(k), self._frames(v)
        selected = select(queries, keys, readable, self.cfg.top_k, self.cfg.retrieval)
        remembered = attend_selected(queries, keys, values, selected, scale).view(B, H, S, T, d).transpose(1, 2)
        return remembered.flatten(0, 1), self.remembers.flatten()[:, None, None, None]


class MemorizingMapper(VideoTransformer):
    """Runs the whole clip in consecutive chunks of W frames, counted back from its end: the
    final chunk is the clip's last W frames (what the ``last`` baseline sees) and the first chunk
    may be partial. Rows are right-aligned: a clip of c chunks starts at step S - c, so every
    clip's final chunk is the batch's final step, whose prefix outputs are returned. Padding
    frames are masked and never stored.

    A chunk's kNN-layer keys depend only on its own frames (the layers below attend within the
    chunk), so with exact search (``memory_backend: torch``) every chunk runs at once
    (:class:`ChunkMemory`); the layers above the top kNN layer run on the final chunk alone.
    The faiss backends and streams run chunk after chunk through a :class:`KNNMemory`
    (:meth:`step`), which bounds memory by the capacity whatever the clip's length."""

    def new_memories(self, batch: int) -> dict[int, MemoryStep]:
        """An empty memory for each kNN layer, for :meth:`step`."""
        cfg = self.cfg
        return {i: MemoryStep(KNNMemory(batch, cfg.heads, cfg.embed_dim // cfg.heads, cfg.memory_capacity,
                                        cfg.memory_backend, cfg.retrieval), cfg.top_k, cfg.window, cfg.xl_cache)
                for i in cfg.knn_layers}

    def forward(self, frames, times, lengths) -> torch.Tensor:
        B, T, D = frames.shape
        W = self.cfg.window
        chunks = ((lengths + W - 1) // W).clamp(min=1)  # [B]
        S = int(chunks.max())
        chunk = torch.arange(S, device=frames.device)[None, :] - (S - chunks)[:, None]  # [B, S]; < 0 = not started
        index = ((lengths - chunks * W)[:, None, None] + chunk[..., None] * W
                 + torch.arange(W, device=frames.device))  # [B, S, W]
        mask = (chunk[..., None] >= 0) & (index >= 0) & (index < lengths[:, None, None])  # [B, S, W]
        index = index.clamp(min=0, max=T - 1).flatten(1)
        frames = (_gather(frames, index) * mask.flatten(1)[..., None]).view(B, S, W, D)
        times = _gather(times, index).view(B, S, W) * mask
        if self.cfg.memory_backend != "torch":
            memories = self.new_memories(B)
            for step in range(S):
                prefix = self.step(memories, frames[:, step], times[:, step], mask[:, step])
            return prefix
        memory = ChunkMemory(mask, self.cfg)
        top = max(self.cfg.knn_layers)
        x, key_mask = self.tokens(frames.flatten(0, 1), times.flatten(0, 1), mask.flatten(0, 1))  # [B * S, W + L, E]
        for i, layer in enumerate(self.transformer.layers):
            if i < top:
                x = layer(x, key_mask, memory if isinstance(layer, KNNBlock) else None)
                continue
            if i == top:  # from here on only the final chunk matters; the earlier ones give keys and values
                _, k, v = layer.attn.split(layer.norm1(x))
                x, key_mask = x.view(B, S, *x.shape[1:])[:, -1], key_mask.view(B, S, -1)[:, -1]
                x = layer(x, key_mask, memory.final_chunk(k, v))
            else:
                x = layer(x, key_mask)
        return x[:, W:]

    def step(self, memories: dict[int, MemoryStep], frames, times, mask) -> torch.Tensor:
        """One chunk: frames [B, W, D], times [B, W], mask [B, W] -> prefix [B, L, E]; stores the
        chunk's frames (where ``mask``) in the memories."""
        for memory in memories.values():
            memory.next_chunk(mask)
        return self.encode(frames * mask[..., None], times * mask, mask, memories)

    def stream(self, n: int) -> ClipStream:
        return MemorizingStream(self, n)


# ---------------------------------------------------------------------------------------------
# Streaming: one clip of a known number of frames, fed in blocks of any size, holding only what
# its mapper needs (a chunk, the chosen frames, or a running mean), so an hour-long clip never
# holds all its frames. ``mapper.stream(n)`` gives the prefix ``forward`` gives for the clip.


class ClipStream:
    def __init__(self, n: int):
        if n < 1:
            raise ValueError("a clip needs at least one frame")
        self.n, self.seen = n, 0

    def feed(self, frames: torch.Tensor, times: torch.Tensor) -> None:
        """The clip's next frames [t, D] and their times [t] (seconds from the clip's start)."""
        if self.seen + len(frames) > self.n:
            raise ValueError(f"the clip has {self.n} frames; {self.seen + len(frames)} were fed")
        self._feed(frames, times)
        self.seen += len(frames)

    def prefix(self) -> torch.Tensor:
        """[1, L, E], once all ``n`` frames were fed."""
        if self.seen != self.n:
            raise ValueError(f"the clip has {self.n} frames; only {self.seen} were fed")
        return self._prefix()


class MeanStream(ClipStream):
    """The mean frame at the mean time, [1, 1, D] and [1, 1], handed to ``finish``."""

    def __init__(self, n: int, finish):
        super().__init__(n)
        self.finish, self.total, self.total_time = finish, None, None

    def _feed(self, frames, times):
        block, at = frames.sum(0), times.sum()
        self.total = block if self.total is None else self.total + block
        self.total_time = at if self.total_time is None else self.total_time + at

    def _prefix(self):
        return self.finish((self.total / self.n)[None, None], (self.total_time / self.n).reshape(1, 1))


class SelectionStream(ClipStream):
    """Keeps only the frames at ``index`` [W]; hands them, [1, W, D] and [1, W], to ``finish``."""

    def __init__(self, n: int, index: torch.Tensor, finish):
        super().__init__(n)
        self.index, self.finish, self.kept = index.tolist(), finish, {}

    def _feed(self, frames, times):
        for i in set(self.index) & set(range(self.seen, self.seen + len(frames))):
            self.kept[i] = (frames[i - self.seen], times[i - self.seen])

    def _prefix(self):
        frames, times = zip(*(self.kept[i] for i in self.index))
        return self.finish(torch.stack(frames)[None], torch.stack(times)[None])


class MemorizingStream(ClipStream):
    """Runs each chunk as soon as its frames are in, laid out as ``MemorizingMapper.forward``
    lays out a clip of n frames: chunks counted back from the end, the first one partial and
    right-aligned."""

    def __init__(self, mapper: MemorizingMapper, n: int):
        super().__init__(n)
        W = mapper.cfg.window
        self.mapper, self.window = mapper, W
        self.need = n - (math.ceil(n / W) - 1) * W  # frames of the next chunk; the first may be partial
        self.pending, self.last = None, None  # frames and times short of the next chunk
        self.memories = mapper.new_memories(1)

    def _feed(self, frames, times):
        if self.pending is not None:
            frames, times = torch.cat([self.pending[0], frames]), torch.cat([self.pending[1], times])
        first = 0
        while len(frames) - first >= self.need:
            self._run(frames[first : first + self.need], times[first : first + self.need])
            first, self.need = first + self.need, self.window
        self.pending = (frames[first:], times[first:])

    def _run(self, frames, times):
        W, k = self.window, len(frames)
        pad = W - k  # only the first chunk is short: its frames sit at the window's end
        window = torch.cat([frames.new_zeros(pad, frames.shape[1]), frames])[None]  # [1, W, D]
        window_times = torch.cat([times.new_zeros(pad), times])[None]
        mask = (torch.arange(W, device=frames.device) >= pad)[None]
        self.last = self.mapper.step(self.memories, window, window_times, mask)

    def _prefix(self):
        return self.last


MAPPERS = {"mlp": MLPMapper, "transformer": TransformerMapper, "temporal": TemporalMapper,
           "memorizing": MemorizingMapper}


@contextlib.contextmanager
def memory_shut(mapper: nn.Module) -> Iterator[nn.Module]:
    """The mapper with every kNN layer's gate shut (sigmoid(-inf) = 0: local attention only), for
    as long as the block runs: a memorizing mapper's recognition without its retrieval."""
    if mapper.cfg.kind != "memorizing":
        raise ValueError(f"a {mapper.cfg.kind} mapper has no memory to shut")
    gates = [layer.gate for layer in mapper.transformer.layers if isinstance(layer, KNNBlock)]
    saved = [gate.detach().clone() for gate in gates]
    with torch.no_grad():
        for gate in gates:
            gate.fill_(float("-inf"))
    try:
        yield mapper
    finally:
        with torch.no_grad():
            for gate, value in zip(gates, saved):
                gate.copy_(value)


def build_mapper(cfg: MapperConfig) -> nn.Module:
    check_size(lambda: MAPPERS[cfg.kind](cfg), MAX_PARAMETERS, f"a {cfg.kind} mapper of {cfg.layers} layers of {cfg.embed_dim}")
    return MAPPERS[cfg.kind](cfg)


def save_mapper(mapper: nn.Module, folder: Path) -> None:
    """``config.json`` + ``model.safetensors``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(asdict(mapper.cfg), indent=2))
    save_file({k: v.contiguous() for k, v in mapper.state_dict().items()}, str(folder / "model.safetensors"))


def load_mapper(folder: Path, device: str = "cpu") -> nn.Module:
    """A saved mapper; the folder is untrusted (:mod:`clipmemcap.model.safe_loading`)."""
    cfg = MapperConfig.of(read_config(folder / "config.json", "mapper config"), folder / "config.json")
    check_weights(folder / "model.safetensors", expected_tensors(lambda: build_mapper(cfg)))
    mapper = build_mapper(cfg)
    mapper.load_state_dict(load_file(str(folder / "model.safetensors"), device=device))
    return mapper.to(device)


def load_shared(target: nn.Module, source: dict[str, torch.Tensor]) -> list[str]:
    """Copy every tensor of ``source`` whose name and shape ``target`` shares (a pretrained image
    mapper into a video mapper); returns the names copied."""
    own = target.state_dict()
    shared = [name for name, value in source.items() if name in own and own[name].shape == value.shape]
    target.load_state_dict({name: source[name] for name in shared}, strict=False)
    return shared
