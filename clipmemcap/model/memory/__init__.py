"""Video memories: what a memory layer of the memorizing mapper reads besides its own chunk.

The memorizing mapper (:class:`clipmemcap.model.mappers.MemorizingMapper`) runs a clip as
consecutive chunks of W frames; its memory layers (``knn_layers``) each have a memory of the
clip's earlier chunks. A memory is a plug-in, chosen by the mapper config's ``memory`` (one
module a mechanism, registered in :data:`MEMORIES`: ``knn`` in :mod:`.knn`, the slot memories
``reservoir``, ``merge`` and ``kmeans`` in :mod:`.slots`, ``recurrent`` memory tokens in
:mod:`.recurrent`), and gives a memory layer

- ``attend(q, k, v, key_mask, scale, gate, learned) -> [B, H, T, d]``: the layer's attention for this
  chunk's queries: its own tokens, combined with what it reads from the memory; it also writes
  the chunk's frame keys and values (and their times, through the keys' time encoding);
  ``learned`` is the layer's own part of the memory (:func:`learned_write`), if the mechanism
  has one;
- ``records``: when a list (:func:`clipmemcap.model.memory.diagnostics.recording`), what the
  final chunk's prefix queries read is appended to it as a :class:`Read`, for the diagnostics.

Each mechanism has two views of one memory: ``whole(frame_mask, events, cfg)`` over every chunk
of a batch at once (training, evaluation), and ``steps(batch, cfg)`` one chunk after another
(streams, the faiss backends), giving the same prefix. ``shut = True`` on a view makes it read
nothing (the memory-shut decoding).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from clipmemcap.model.mapper_config import MapperConfig


@dataclass
class Read:
    """What the prefix queries of a batch's final chunks read in one memory layer."""
    selected: torch.Tensor  # [B, H, L, n] bool: the entries each prefix query read
    weights: torch.Tensor  # [B, H, L, n]: each entry's share of the query's attention output
    memory_mass: torch.Tensor  # [B, H, L]: the attention's weight on memory (the gate, or the joint softmax's mass)
    events: torch.Tensor  # [B, n]: each entry's event number (0: none) where the clips' events are known
    readable: torch.Tensor  # [B, n] bool: the entries the final chunk may read (stored, not evicted)
    remembers: torch.Tensor  # [B] bool: whether the row holds any memory


def _knn():
    from clipmemcap.model.memory import knn

    return knn.ChunkMemory, knn.StepMemory


def _slots():
    from clipmemcap.model.memory import slots

    return slots.WholeSlots, slots.StepSlots


# name -> () -> (whole view, step view); imported on use, since a mechanism's module imports Read
MEMORIES = {"knn": _knn, "reservoir": _slots, "merge": _slots, "kmeans": _slots, "recurrent": _slots}


def learned_write(cfg: MapperConfig) -> torch.nn.Module | None:
    """A memory layer's learned part of its memory: recurrent memory tokens' write; else None."""
    if cfg.kind != "memorizing" or cfg.memory != "recurrent":
        return None
    from clipmemcap.model.memory.recurrent import RecurrentWrite

    return RecurrentWrite(cfg.heads, cfg.embed_dim // cfg.heads, cfg.memory_capacity)
