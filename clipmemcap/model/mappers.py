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
  its memory layer(s) also read a memory of the clip's earlier chunks, a plug-in
  (:mod:`clipmemcap.model.memory`; the kNN memory of Wu et al. 2022 by default). See
  :class:`MemorizingMapper`.

The video mappers name their shared parts as ClipCap's Transformer mapper does (``prefix_const``,
``transformer.layers.*``), so :func:`load_shared` initialises them from a pretrained image mapper.
Configurations are JSON files (``clipmemcap/model/mapper_configs``), read into :class:`MapperConfig`
(:mod:`clipmemcap.model.mapper_config`); the blocks are :mod:`clipmemcap.model.transformer`'s and
the streams :mod:`clipmemcap.model.streams`'.

Every mapper also takes ``events [B, T]``: each frame's event number (0: none), where the clips'
events are known (the benchmark); only a memory's oracle read and the diagnostics use it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from clipmemcap.model.mapper_config import KINDS, MapperConfig
from clipmemcap.model.memory import MEMORIES
from clipmemcap.model.safe_loading import MAX_PARAMETERS, check_size, check_weights, expected_tensors, read_config
from clipmemcap.model.streams import ClipStream, MeanStream, MemorizingStream, SelectionStream
from clipmemcap.model.transformer import MemoryBlock, Transformer, time_encoding, valid_mask

# ---------------------------------------------------------------------------------------------
# ClipCap's image mappers; on a clip they map the mean of its valid frames


class ImageMapper(nn.Module):
    def forward(self, frames: torch.Tensor, times: torch.Tensor, lengths: torch.Tensor, events=None) -> torch.Tensor:
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

    def encode(self, frames, times, frame_mask, memories: dict | None = None) -> torch.Tensor:
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

    def forward(self, frames, times, lengths, events=None) -> torch.Tensor:
        if self.cfg.frame_policy == "mean":  # one token: the mean frame at the mean time
            weights = valid_mask(lengths, frames.shape[1]) / lengths.clamp(min=1)[:, None]  # [B, T]
            mean, at = (frames * weights[..., None]).sum(1, keepdim=True), (times * weights).sum(1, keepdim=True)
            return self.encode(mean, at, torch.ones_like(at, dtype=torch.bool))
        index, mask = select_frames(lengths, self.cfg.window, self.cfg.frame_policy)
        return self.encode(_gather(frames, index), _gather(times, index), mask)


class MemorizingMapper(VideoTransformer):
    """Runs the whole clip in consecutive chunks of W frames, counted back from its end: the
    final chunk is the clip's last W frames (what the ``last`` baseline sees) and the first chunk
    may be partial. Rows are right-aligned: a clip of c chunks starts at step S - c, so every
    clip's final chunk is the batch's final step, whose prefix outputs are returned. Padding
    frames are masked and never stored.

    A chunk's memory-layer keys depend only on its own frames (the layers below attend within the
    chunk), so with exact search (``memory_backend: torch``) every chunk runs at once (the
    memory's ``whole`` view); the layers above the top memory layer run on the final chunk alone.
    The faiss backends and streams run chunk after chunk (:meth:`step`, the ``steps`` view), which
    bounds memory by the capacity whatever the clip's length. ``records`` and ``memory_is_shut``:
    see :mod:`clipmemcap.model.memory.diagnostics` and :func:`memory_shut`."""

    def __init__(self, cfg: MapperConfig):
        super().__init__(cfg)
        self.whole, self.steps = MEMORIES[cfg.memory]()
        self.records: list | None = None
        self.memory_is_shut = False
        self.stepwise = False  # step_by_step

    def new_memories(self, batch: int) -> dict:
        """An empty memory for each memory layer, for :meth:`step` (which records no reads)."""
        memories = {i: self.steps(batch, self.cfg) for i in self.cfg.knn_layers}
        for memory in memories.values():
            memory.shut = self.memory_is_shut
        return memories

    def forward(self, frames, times, lengths, events=None) -> torch.Tensor:
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
        if self.cfg.memory_backend != "torch" or self.stepwise:
            memories = self.new_memories(B)
            for step in range(S):
                prefix = self.step(memories, frames[:, step], times[:, step], mask[:, step])
            return prefix
        if events is None:
            if self.cfg.retrieval == "oracle":
                raise ValueError("the oracle read needs each frame's event (the benchmark's clips); none were given")
            events = torch.zeros(B, T, dtype=torch.long, device=frames.device)
        memory = self.whole(mask, _gather(events, index).view(B, S, W) * mask, self.cfg)
        memory.shut, memory.records = self.memory_is_shut, self.records
        top = max(self.cfg.knn_layers)
        x, key_mask = self.tokens(frames.flatten(0, 1), times.flatten(0, 1), mask.flatten(0, 1))  # [B * S, W + L, E]
        for i, layer in enumerate(self.transformer.layers):
            if i < top:
                x = layer(x, key_mask, memory if isinstance(layer, MemoryBlock) else None)
                continue
            if i == top:  # from here on only the final chunk matters; the earlier ones give keys and values
                _, k, v = layer.attn.split(layer.norm1(x))
                x, key_mask = x.view(B, S, *x.shape[1:])[:, -1], key_mask.view(B, S, -1)[:, -1]
                x = layer(x, key_mask, memory.final_chunk(k, v))
            else:
                x = layer(x, key_mask)
        return x[:, W:]

    def step(self, memories: dict, frames, times, mask) -> torch.Tensor:
        """One chunk: frames [B, W, D], times [B, W], mask [B, W] -> prefix [B, L, E]; stores the
        chunk's frames (where ``mask``) in the memories."""
        for memory in memories.values():
            memory.next_chunk(mask)
        return self.encode(frames * mask[..., None], times * mask, mask, memories)

    def stream(self, n: int) -> ClipStream:
        return MemorizingStream(self, n)


MAPPERS = {"mlp": MLPMapper, "transformer": TransformerMapper, "temporal": TemporalMapper,
           "memorizing": MemorizingMapper}
assert tuple(MAPPERS) == KINDS


@contextlib.contextmanager
def memory_shut(mapper: nn.Module) -> Iterator[nn.Module]:
    """The mapper with every memory read shut (local attention only; the memory is still
    written), for as long as the block runs: a memorizing mapper's recognition without its
    retrieval."""
    if mapper.cfg.kind != "memorizing":
        raise ValueError(f"a {mapper.cfg.kind} mapper has no memory to shut")
    mapper.memory_is_shut = True
    try:
        yield mapper
    finally:
        mapper.memory_is_shut = False


@contextlib.contextmanager
def step_by_step(mapper: nn.Module) -> Iterator[nn.Module]:
    """The mapper running a memorizing clip chunk after chunk (the ``steps`` view, as a stream
    does: the same prefix), for as long as the block runs: exact search over every chunk at once
    grows with the square of the clip's length, chunk after chunk linearly (long test clips). No
    change for other mappers, nor for the oracle read (it needs each frame's event: whole clips);
    the steps view records no reads."""
    if mapper.cfg.kind != "memorizing" or mapper.cfg.retrieval == "oracle":
        yield mapper
        return
    mapper.stepwise = True
    try:
        yield mapper
    finally:
        mapper.stepwise = False


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
