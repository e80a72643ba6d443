"""The kNN memory (Wu et al. 2022, Memorizing Transformers): a memory layer's chunk attends to its
own tokens and to entries of the clip's earlier chunks, the frame keys and values the layer made.

The read path's knobs (:class:`~clipmemcap.model.mapper_config.MapperConfig`):

- ``retrieval``: which entries each query reads: ``top-k`` (its k highest inner products),
  ``random`` (k at random: the ablation of content-based retrieval), ``dense`` (every entry) or
  ``oracle`` (top-k, plus every entry of a frame that shows an event: the ceiling of selection;
  needs each frame's event, which only the benchmark knows);
- ``combine``: ``gate`` (local and memory attention softmaxed apart, mixed by a learned per-head
  sigmoid gate, as the paper) or ``joint`` (one softmax over local and read entries, whose
  mass on memory is learned through the keys and the layer's temperature);
- ``differentiable``: gradients flow into the earlier chunks' keys and values (all chunks run in
  one pass); else they are detached, as in the paper, and the layer's key and value projections
  learn only from local attention.

Two views of the same memory: :class:`ChunkMemory` runs every chunk of a batch of clips at once
(exact search, the ``torch`` backend, training and evaluation) and :class:`StepMemory` one chunk
after another through a :class:`~clipmemcap.model.memory.store.KNNMemory` (the faiss backends,
streams), which bounds memory by the capacity whatever the clip's length. Both give the same
prefix (tests/test_mappers.py).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch

from clipmemcap.model.memory.read_path import ReadPath, same
from clipmemcap.model.memory.store import KNNMemory, select

if TYPE_CHECKING:
    from clipmemcap.model.mapper_config import MapperConfig


class StepMemory(ReadPath):
    """One memory layer's memory of the clips as one chunk step sees it: the store, which of the
    chunk's frames to store (not padding, nor the frames of a clip that has not started yet), and
    (with ``xl_cache``) the previous chunk's frame keys and values, which local attention also
    sees, detached, as in Transformer-XL. Reads before it writes, one chunk after another."""

    def __init__(self, batch: int, cfg: MapperConfig):
        if cfg.retrieval == "oracle":
            raise ValueError("the oracle read needs each frame's event: it runs on whole clips with "
                             "memory_backend torch, not chunk by chunk")
        self.cfg, self.window = cfg, cfg.window
        self.store = KNNMemory(batch, cfg.heads, cfg.embed_dim // cfg.heads, cfg.memory_capacity, cfg.memory_backend,
                               cfg.retrieval)
        self.frame_mask: torch.Tensor | None = None  # [B, W]: this chunk's frames to store
        self.previous: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # k, v [B, H, W, d], mask [B, W]

    def next_chunk(self, frame_mask: torch.Tensor) -> None:
        self.frame_mask = frame_mask

    def local_context(self, k, v, key_mask):
        """Keys, values and key mask for local attention: this chunk, after the previous one."""
        if not self.cfg.xl_cache or self.previous is None:
            return k, v, key_mask
        pk, pv, pmask = self.previous
        return torch.cat([pk, k], 2), torch.cat([pv, v], 2), torch.cat([pmask, key_mask], 1)

    def entries(self, q, k, v, learned):
        """Read the earlier chunks (None before anything is stored), then store this chunk's frame
        keys and values (detached: this view runs at inference); q, k, v [B, H, W + L, d], frame
        tokens first."""
        found = None
        if not self.store.empty:
            keys, values, selected = self.store.retrieve(q, self.cfg.top_k)
            found = keys, values, selected, self.store.sizes.gt(0)[:, None, None, None], same, same
        k, v = k[:, :, : self.window].detach(), v[:, :, : self.window].detach()
        self.store.add(k, v, self.frame_mask)
        if self.cfg.xl_cache:
            self.previous = (k, v, self.frame_mask)
        return found


class ChunkMemory(ReadPath):
    """A memory layer's memory over every chunk of the clips at once, as :class:`StepMemory` would
    see them one after another: chunk c of a row reads the frame keys and values the layer made
    for the row's earlier chunks, of those the latest ``memory_capacity`` frames (what a FIFO
    memory holds). ``events [B, S, W]``: each frame's event number (0: none), for the oracle read
    and the diagnostics."""

    def __init__(self, frame_mask: torch.Tensor, events: torch.Tensor, cfg: MapperConfig):
        B, S, W = frame_mask.shape  # [B, S chunks, W]
        self.frame_mask, self.cfg = frame_mask, cfg
        self.events = events.flatten(1)  # [B, S * W]
        self.stored: tuple[torch.Tensor, torch.Tensor] | None = None  # see final_chunk
        counts = frame_mask.sum(2)  # [B, S]
        before = counts.cumsum(1) - counts  # [B, S]: frames stored before each chunk
        rank = frame_mask.flatten(1).cumsum(1)  # [B, S * W]: each frame's insertion number, from 1
        chunk = torch.arange(S, device=frame_mask.device)
        self.readable = (frame_mask.flatten(1)[:, None, :]  # [B, S (reading chunk), S * W (frames)]
                         & (chunk.repeat_interleave(W)[None, None, :] < chunk[None, :, None])
                         & (rank[:, None, :] > (before - cfg.memory_capacity)[:, :, None]))
        self.remembers = before > 0  # [B, S]

    @property
    def stored_events(self) -> torch.Tensor:
        return self.events

    @property
    def stored_readable(self) -> torch.Tensor:
        return self.readable[:, -1]

    def final_chunk(self, k: torch.Tensor, v: torch.Tensor) -> ChunkMemory:
        """The view of the top memory layer, which runs on the final chunk alone (above it nothing
        else is used): it reads every chunk's keys and values k, v [B * S, H, W + L, d]."""
        view = copy.copy(self)
        view.stored = self._frames(k, self.cfg.differentiable), self._frames(v, self.cfg.differentiable)
        return view

    def _frames(self, x: torch.Tensor, differentiable: bool = False) -> torch.Tensor:
        """[B * S, H, W + L, d] -> every chunk's frame tokens [B, H, S * W, d] (detached unless
        ``differentiable``)."""
        B, S, W = self.frame_mask.shape
        frames = x.view(B, S, *x.shape[1:])[:, :, :, :W]
        return (frames if differentiable else frames.detach()).transpose(1, 2).flatten(2, 3)

    def local_context(self, k, v, key_mask):
        if not self.cfg.xl_cache:
            return k, v, key_mask
        B, S, W = self.frame_mask.shape
        if self.stored is None:  # every chunk, after the one before it
            shift = lambda x: torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], 1).flatten(0, 1)  # noqa: E731
            previous = [self._frames(x).unflatten(2, (S, W)).transpose(1, 2) for x in (k, v)] + [self.frame_mask]
            pk, pv, pmask = (shift(x) for x in previous)
        else:  # the final chunk, after chunk S - 2
            pk, pv = (x[:, :, -2 * W : -W].detach() if S > 1 else torch.zeros_like(x[:, :, :W]) for x in self.stored)
            pmask = self.frame_mask[:, -2] if S > 1 else torch.zeros_like(self.frame_mask[:, 0])
        return torch.cat([pk, k], 2), torch.cat([pv, v], 2), torch.cat([pmask, key_mask], 1)

    def _forced(self, readable: torch.Tensor) -> torch.Tensor | None:
        """The oracle read's entries: every readable frame that shows an event."""
        if self.cfg.retrieval != "oracle":
            return None
        return readable & (self.events > 0)[:, None, None, :]

    def entries(self, q, k, v, learned):
        """q, k, v [B * S, H, T = W + L, d] (the final chunk's [B, H, T, d] in the top layer's
        view) -> keys, values [B, H, S * W, d], selected [B, H, Q, S * W], whether each query's row
        holds any memory, and the maps from the queries' layout to the memory's (Q = S * T
        queries a row) and back."""
        if self.stored is not None:
            keys, values = self.stored
            readable, remembers = self.readable[:, -1, None, None], self.remembers[:, -1]  # [B, 1, 1, S * W], [B]
            selected = select(q, keys, readable, self.cfg.top_k, self.cfg.retrieval, self._forced(readable))
            return keys, values, selected, remembers[:, None, None, None], same, same
        B, S, W = self.frame_mask.shape
        T = q.shape[2]
        to_memory = lambda x: x.view(B, S, *x.shape[1:]).transpose(1, 2).flatten(2, 3)  # noqa: E731  [B, H, S * T, .]
        from_memory = lambda x: x.view(B, x.shape[1], S, T, x.shape[-1]).transpose(1, 2).flatten(0, 1)  # noqa: E731
        readable = self.readable.repeat_interleave(T, 1)[:, None]  # [B, 1, S * T, S * W]
        keys, values = self._frames(k, self.cfg.differentiable), self._frames(v, self.cfg.differentiable)
        selected = select(to_memory(q), keys, readable, self.cfg.top_k, self.cfg.retrieval, self._forced(readable))
        return keys, values, selected, self.remembers.flatten()[:, None, None, None], to_memory, from_memory

    _records: list[Read] | None = None

    @property
    def records(self) -> list[Read] | None:  # only the final chunk's view records (see _record)
        return self._records if self.stored is not None else None

    @records.setter
    def records(self, value: list[Read] | None) -> None:
        self._records = value
