"""Memories of a fixed number of slots that make room by forgetting or by merging: what the
published long-video memories keep of a clip, read through the kNN memory's read path
(:mod:`clipmemcap.model.memory.read_path`; ``retrieval: dense`` reads every slot, as they do).

A slot is one key and one value of the memory layer's width (every head's), the number of frames
it holds, and the latest event among them (for the diagnostics). ``memory_capacity`` is the number
of slots, N. After each chunk the chunk's frames are appended, in time order, and while a clip
holds more than N slots its memory makes room (``memory``):

- ``reservoir``: keeps a uniform random sample of every frame seen so far (reservoir sampling: each
  frame number has a fixed pseudo-random priority and the N lowest stay; HERMES' random retention);
- ``merge``: merges the two most similar adjacent slots (cosine similarity of their keys over
  every head), count-weighted, until N remain (MovieChat's and MA-LMM's consolidation);
- ``kmeans``: clusters the slots into N, two iterations of count-weighted k-means started from the
  memory before the chunk (Streaming dense video captioning's and MC-ViT's consolidation).

A merged key is re-normalised, as every key of the layer is; values are count-weighted means.
(A FIFO of the latest N frames is the ``knn`` memory with ``memory_capacity`` N.)

Both views run one function, :func:`remember`, chunk after chunk: :class:`WholeSlots` on every
chunk's keys and values at once (training, evaluation; gradients reach the slots when the config
says ``differentiable``) and :class:`StepSlots` one chunk after another (streams). Recurrent
memory tokens (:mod:`.recurrent`) use the same views with a learned write instead of
:func:`remember` (:func:`write_chunk`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from clipmemcap.model.memory.read_path import ReadPath, same
from clipmemcap.model.memory.store import select

if TYPE_CHECKING:
    from clipmemcap.model.mapper_config import MapperConfig

MECHANISMS = ("reservoir", "merge", "kmeans")
KMEANS_ITERATIONS = 2


@dataclass
class Slots:
    """A batch of clips' memories; a row's held slots come first."""
    keys: torch.Tensor  # [B, H, n, d]
    values: torch.Tensor  # [B, H, n, d]
    counts: torch.Tensor  # [B, n]: frames a slot holds (0: empty)
    events: torch.Tensor  # [B, n]: the latest event among them (0: none)
    numbers: torch.Tensor  # [B, n]: the slot's latest frame number in its clip (reservoir's priorities)
    seen: torch.Tensor  # [B]: frames ever written

    @classmethod
    def empty(cls, like: torch.Tensor, batch: int) -> Slots:
        """``like [B, H, W, d]``: the keys of the first chunk (device, dtype, heads, width)."""
        _, H, _, d = like.shape
        zeros = like.new_zeros(batch, 0, dtype=torch.long)
        return cls(like.new_zeros(batch, H, 0, d), like.new_zeros(batch, H, 0, d), like.new_zeros(batch, 0),
                   zeros, zeros, like.new_zeros(batch, dtype=torch.long))

    @property
    def held(self) -> torch.Tensor:
        return self.counts > 0  # [B, n]

    def padded(self, n: int) -> Slots:
        """With empty slots up to ``n``."""
        grow = n - self.counts.shape[1]
        pad = lambda x, dim: torch.cat([x, x.new_zeros(*x.shape[:dim], grow, *x.shape[dim + 1:])], dim)  # noqa: E731
        return Slots(pad(self.keys, 2), pad(self.values, 2), pad(self.counts, 1), pad(self.events, 1),
                     pad(self.numbers, 1), self.seen)

    def take(self, index: torch.Tensor) -> Slots:
        """The slots at ``index [B, m]``."""
        at = index[:, None, :, None].expand(-1, self.keys.shape[1], -1, self.keys.shape[3])
        return Slots(self.keys.gather(2, at), self.values.gather(2, at), self.counts.gather(1, index),
                     self.events.gather(1, index), self.numbers.gather(1, index), self.seen)


def remember(slots: Slots, keys, values, mask, events, capacity: int, mechanism: str) -> Slots:
    """``slots`` with a chunk's frames written: keys, values [B, H, W, d], mask [B, W] (the frames
    to write), events [B, W]; at most ``capacity`` slots a row afterwards."""
    numbers = slots.seen[:, None] + mask.long().cumsum(1) - 1
    grown = Slots(torch.cat([slots.keys, keys.to(slots.keys.dtype)], 2), torch.cat([slots.values, values.to(slots.values.dtype)], 2),
                  torch.cat([slots.counts, mask.to(slots.counts.dtype)], 1), torch.cat([slots.events, events * mask], 1),
                  torch.cat([slots.numbers, numbers], 1), slots.seen + mask.sum(1))
    grown = grown.take((~grown.held).to(torch.uint8).argsort(dim=1, stable=True))  # held slots first, in time order
    if grown.counts.shape[1] <= capacity:
        return grown
    if mechanism == "reservoir":
        priority = frame_priority(grown.numbers).masked_fill(~grown.held, torch.iinfo(torch.long).max)
        return grown.take(priority.topk(capacity, 1, largest=False).indices.sort(1).values)
    if mechanism == "merge":
        return _merge(grown, capacity)
    if mechanism == "kmeans":
        return _kmeans(grown, capacity)
    raise ValueError(f"unknown slot memory {mechanism!r}; choose one of {', '.join(MECHANISMS)}")


def write_chunk(slots: Slots, keys, values, mask, events, cfg: MapperConfig, learned) -> Slots:
    """A chunk written by the memory's mechanism: ``learned`` (the memory layer's write, for
    recurrent memory tokens: :mod:`.recurrent`), else :func:`remember`."""
    if learned is not None:
        return learned(slots, keys, values, mask, events)
    return remember(slots, keys, values, mask, events, cfg.memory_capacity, cfg.memory)


def frame_priority(x: torch.Tensor) -> torch.Tensor:
    """A fixed pseudo-random 32-bit integer per frame number (a 32-bit integer mix)."""
    x = x + 1
    for _ in range(2):
        x = ((x ^ (x >> 16)) * 0x45D9F3B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def _similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of slots over every head: a [B, H, n, d], b [B, H, m, d] -> [B, n, m]."""
    return (a @ b.transpose(-1, -2)).mean(1)  # keys are unit vectors per head


def _merge(slots: Slots, capacity: int) -> Slots:
    """Merge the most similar adjacent pair of each row holding more than ``capacity``, until none
    does; then keep the first ``capacity`` slots (the rest are empty)."""
    rows = torch.arange(slots.counts.shape[0], device=slots.counts.device)
    while int(slots.held.sum(1).max()) > capacity:
        n = slots.counts.shape[1]
        pair = (slots.keys[:, :, :-1] * slots.keys[:, :, 1:]).sum(-1).mean(1)  # [B, n - 1]
        first = pair.masked_fill(~(slots.held[:, :-1] & slots.held[:, 1:]), float("-inf")).argmax(1)  # [B]
        merging = slots.held.sum(1) > capacity  # [B]; the other rows drop their last slot, which is empty
        a, b = first, first + 1
        ca, cb = slots.counts[rows, a], slots.counts[rows, b]
        total = (ca + cb).clamp(min=1)  # rows that do not merge may pair empty slots
        wa, wb = (ca / total)[:, None, None], (cb / total)[:, None, None]
        key = F.normalize(wa * slots.keys[rows, :, a] + wb * slots.keys[rows, :, b], dim=-1)  # [B, H, d]
        value = wa * slots.values[rows, :, a] + wb * slots.values[rows, :, b]
        keys, values = slots.keys.clone(), slots.values.clone()
        keys[rows, :, a] = torch.where(merging[:, None, None], key, slots.keys[rows, :, a])
        values[rows, :, a] = torch.where(merging[:, None, None], value, slots.values[rows, :, a])
        counts, events, numbers = slots.counts.clone(), slots.events.clone(), slots.numbers.clone()
        counts[rows, a] = torch.where(merging, ca + cb, ca)
        events[rows, a] = torch.where(merging, torch.maximum(slots.events[rows, a], slots.events[rows, b]), slots.events[rows, a])
        numbers[rows, a] = torch.where(merging, slots.numbers[rows, b], slots.numbers[rows, a])
        gone = torch.where(merging, b, n - 1)  # [B]
        keep = torch.arange(n - 1, device=gone.device)[None, :]
        slots = Slots(keys, values, counts, events, numbers, slots.seen).take(keep + (keep >= gone[:, None]).long())
    return slots.take(torch.arange(capacity, device=rows.device).expand(len(rows), -1))


def _kmeans(slots: Slots, capacity: int) -> Slots:
    """Count-weighted k-means of each row's held slots into ``capacity`` clusters, started from
    its first ``capacity`` slots (once the memory is full: the memory before this chunk, whose
    centres the chunk's frames join); a row holding no more keeps its slots. A cluster left empty
    is dropped."""
    B, n = slots.counts.shape
    held = slots.held.sum(1)  # [B]
    kept = slots.take(torch.arange(capacity, device=held.device).expand(B, -1))
    centres = kept
    weights = slots.counts.to(slots.keys.dtype)
    for _ in range(KMEANS_ITERATIONS):
        nearest = _similarity(slots.keys, centres.keys).argmax(2)  # [B, n]
        member = F.one_hot(nearest, capacity).to(weights.dtype) * weights[..., None]  # [B, n, N]
        mass = member.sum(1)  # [B, N]
        share = (member / mass.clamp(min=1e-12)[:, None, :]).transpose(1, 2)[:, None]  # [B, 1, N, n]
        keys = torch.where(mass[:, None, :, None] > 0, F.normalize(share @ slots.keys, dim=-1), centres.keys)
        values = torch.where(mass[:, None, :, None] > 0, share @ slots.values, centres.values)
        events = torch.where(member > 0, slots.events[..., None], 0).amax(1)
        numbers = torch.where(member > 0, slots.numbers[..., None], 0).amax(1)
        centres = Slots(keys, values, mass, events, numbers, slots.seen)
    centres = centres.take((~centres.held).to(torch.uint8).argsort(dim=1, stable=True))
    small = (held <= capacity)[:, None]
    pick = lambda x, y: torch.where(small if x.dim() == 2 else small[:, None, :, None], x, y)  # noqa: E731
    return Slots(pick(kept.keys, centres.keys), pick(kept.values, centres.values), pick(kept.counts, centres.counts),
                 pick(kept.events, centres.events), pick(kept.numbers, centres.numbers), slots.seen)


def _entries(q, slots: Slots, cfg: MapperConfig):
    """What q [B', H, T, d] may read of ``slots`` (one row a query row): see ReadPath."""
    readable = slots.held[:, None, None, :]  # [B', 1, 1, N]
    forced = readable & (slots.events > 0)[:, None, None, :] if cfg.retrieval == "oracle" else None
    selected = select(q, slots.keys, readable, cfg.top_k, cfg.retrieval, forced)
    return slots.keys, slots.values, selected, slots.held.any(1)[:, None, None, None], same, same


class StepSlots(ReadPath):
    """One memory layer's slots, one chunk after another (streams): reads, then writes the chunk's
    frames (detached: this view runs at inference)."""

    def __init__(self, batch: int, cfg: MapperConfig):
        if cfg.retrieval == "oracle":
            raise ValueError("the oracle read needs each frame's event: it runs on whole clips, not chunk by chunk")
        self.cfg, self.batch = cfg, batch
        self.slots: Slots | None = None
        self.frame_mask: torch.Tensor | None = None

    def next_chunk(self, frame_mask: torch.Tensor) -> None:
        self.frame_mask = frame_mask

    def local_context(self, k, v, key_mask):
        return k, v, key_mask

    def entries(self, q, k, v, learned):
        W = self.cfg.window
        found = None if self.slots is None or not self.slots.held.any() else _entries(q, self.slots, self.cfg)
        k, v = k[:, :, :W].detach(), v[:, :, :W].detach()
        slots = self.slots or Slots.empty(k, self.batch)
        self.slots = write_chunk(slots, k, v, self.frame_mask, torch.zeros_like(self.frame_mask, dtype=torch.long),
                                 self.cfg, learned)
        return found


class WholeSlots(ReadPath):
    """A memory layer's slots over every chunk of the clips at once: chunk c of a row reads the
    slots :func:`remember` leaves after the row's earlier chunks. ``frame_mask, events [B, S, W]``."""

    def __init__(self, frame_mask: torch.Tensor, events: torch.Tensor, cfg: MapperConfig):
        self.frame_mask, self.events, self.cfg = frame_mask, events, cfg
        self.final: tuple[torch.Tensor, torch.Tensor] | None = None  # the top layer's k, v (final_chunk)
        self.final_slots: Slots | None = None  # the slots the final chunk read, in the top layer's view

    def _before_each_chunk(self, k, v, chunks: int, learned) -> list[Slots]:
        """k, v [B * S, H, W + L, d] -> the slots before each of the first ``chunks`` chunks."""
        B, S, W = self.frame_mask.shape
        frames = [x.view(B, S, *x.shape[1:])[:, :, :, :W] for x in (k, v)]  # [B, S, H, W, d]
        if not self.cfg.differentiable:
            frames = [x.detach() for x in frames]
        slots, before = Slots.empty(frames[0][:, 0], B), []
        for c in range(chunks):
            before.append(slots)
            slots = write_chunk(slots, frames[0][:, c], frames[1][:, c], self.frame_mask[:, c], self.events[:, c],
                                self.cfg, learned)
        return before

    def final_chunk(self, k: torch.Tensor, v: torch.Tensor) -> WholeSlots:
        """The view of the top memory layer, which runs on the final chunk alone; it writes every
        chunk's k, v [B * S, H, W + L, d] before reading."""
        view = copy.copy(self)
        view.final = k, v
        return view

    def local_context(self, k, v, key_mask):
        return k, v, key_mask

    def entries(self, q, k, v, learned):
        """q, k, v [B * S, H, W + L, d] (the final chunk's [B, H, W + L, d] in the top layer's view)."""
        if self.final is not None:
            self.final_slots = self._before_each_chunk(*self.final, self.frame_mask.shape[1], learned)[-1]
            return _entries(q, self.final_slots, self.cfg)
        before = self._before_each_chunk(k, v, self.frame_mask.shape[1], learned)
        width = max(s.counts.shape[1] for s in before)
        padded = [s.padded(width) for s in before]
        stacked = Slots(*(torch.stack([getattr(s, f) for s in padded], 1).flatten(0, 1)
                          for f in ("keys", "values", "counts", "events", "numbers", "seen")))
        return _entries(q, stacked, self.cfg)

    @property
    def stored_events(self) -> torch.Tensor:
        return self.final_slots.events

    @property
    def stored_readable(self) -> torch.Tensor:
        return self.final_slots.held

    _records = None

    @property
    def records(self):  # only the final chunk's view records
        return self._records if self.final is not None else None

    @records.setter
    def records(self, value) -> None:
        self._records = value
