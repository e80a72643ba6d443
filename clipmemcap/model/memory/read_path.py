"""The read path every memory shares (:mod:`clipmemcap.model.memory`): local attention
combined with the entries a memory offers, by the mapper config's ``combine`` (a per-head sigmoid
gate over two softmaxes, or one joint softmax), and what the final chunk's prefix queries read
recorded for the diagnostics."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from clipmemcap.model.memory import Read

if TYPE_CHECKING:
    from clipmemcap.model.mapper_config import MapperConfig


def same(x: torch.Tensor) -> torch.Tensor:
    """The map between two layouts that are one."""
    return x


def attend_selected(q, keys, values, selected, scale) -> torch.Tensor:
    """Attention of q [B, H, T, d] over the ``selected [B, H, T, n]`` entries of keys, values
    [B, H, n, d]."""
    scores = (q @ keys.transpose(-1, -2).to(q.dtype)) * scale  # [B, H, T, n]
    # A query that selects nothing (its row holds nothing yet) gets a finite fill, so its softmax
    # and gradient stay finite; the caller keeps its local attention.
    return scores.masked_fill(~selected, torch.finfo(scores.dtype).min).softmax(-1) @ values.to(q.dtype)


class ReadPath:
    """What every memory's views share: local attention combined with the read entries. A view
    gives ``local_context`` (what local attention sees), ``entries`` (what the queries may read,
    in the memory's layout, with the maps between the queries' layout and it) and, for the
    diagnostics, ``stored_events`` and ``stored_readable`` of the final chunk's read. ``learned``:
    the memory layer's own write (recurrent memory tokens), else None."""

    cfg: MapperConfig
    records: list[Read] | None = None  # set by clipmemcap.model.memory.diagnostics.recording
    shut = False  # True: write, but read nothing (clipmemcap.model.mappers.memory_shut)

    def attend(self, q, k, v, key_mask, scale: Callable[[], torch.Tensor | float], gate: torch.Tensor,
               learned: torch.nn.Module | None = None) -> torch.Tensor:
        """q, k, v [B', H, T, d], key_mask [B', T] -> [B', H, T, d]; ``scale``: the layer's
        temperature, taken anew at each use (as the paper's layer: the same bits in the gradient);
        ``gate`` [H] and ``learned`` (its memory write, if any): the layer's."""
        local_k, local_v, local_mask = self.local_context(k, v, key_mask)
        found = self.entries(q, k, v, learned)  # a step view writes here, so it runs even when shut
        found = None if self.shut else found
        if self.cfg.combine == "joint":
            return self._joint(q, local_k, local_v, local_mask, scale(), found)
        scores = (q @ local_k.transpose(-1, -2)) * scale()  # [B', H, T, T']
        out = scores.masked_fill(~local_mask[:, None, None, :], float("-inf")).softmax(-1) @ local_v
        if found is None:
            return out
        keys, values, selected, remembers, to_memory, from_memory = found
        remembered = from_memory(attend_selected(to_memory(q), keys, values, selected, scale()))
        weight = torch.sigmoid(gate)[:, None, None]  # [H, 1, 1]
        if self.records is not None:
            with torch.no_grad():
                scores = (q @ keys.transpose(-1, -2).to(q.dtype)) * scale()
                read = scores.masked_fill(~selected, float("-inf")).softmax(-1).nan_to_num(0.0) * weight
            self._record(selected, read, weight.view(1, -1, 1).expand(q.shape[0], -1, q.shape[2]), keys, remembers)
        return torch.where(remembers, weight * remembered + (1 - weight) * out, out)

    def _joint(self, q, local_k, local_v, local_mask, scale, found) -> torch.Tensor:
        """One softmax over the local keys and the read entries."""
        local = ((q @ local_k.transpose(-1, -2)) * scale).masked_fill(~local_mask[:, None, None, :], float("-inf"))
        if found is None:
            return local.softmax(-1) @ local_v
        keys, values, selected, remembers, to_memory, from_memory = found
        read = ((to_memory(q) @ keys.transpose(-1, -2).to(q.dtype)) * scale).masked_fill(~selected, float("-inf"))
        p = torch.cat([local, from_memory(read)], -1).softmax(-1)  # [B', H, T, T' + n]
        T = local.shape[-1]
        if self.records is not None:
            self._record(selected, to_memory(p[..., T:]).detach(), p[..., T:].detach().sum(-1), keys, remembers)
        return p[..., :T] @ local_v + from_memory(to_memory(p[..., T:]) @ values.to(q.dtype))

    def _record(self, selected, weights, mass, keys, remembers) -> None:
        """What the prefix queries (the last L tokens) read; only the view whose layout is the
        queries' (the final chunk) records."""
        L = self.cfg.prefix_length
        self.records.append(Read(selected=selected.expand(*weights.shape)[:, :, -L:].detach(),
                                 weights=weights[:, :, -L:].detach(), memory_mass=mass[:, :, -L:].detach(),
                                 events=self.stored_events, readable=self.stored_readable,
                                 remembers=remembers.flatten().detach()))
