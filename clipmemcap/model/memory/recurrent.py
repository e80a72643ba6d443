"""Recurrent memory tokens (Token Turing Machines, Ryoo et al. 2023; Recurrent Memory Transformer,
Bulatov et al. 2022): N memory tokens carried from chunk to chunk and rewritten by a learned write,
trained through time.

The tokens are N slots of the memory layer (a key and a value per head, as the slot memories'),
read through the shared read path (:mod:`clipmemcap.model.memory.read_path`). After each chunk
the write makes N new tokens from the old tokens and the chunk's frames, as TTM's token
summariser does: for each new token, learned importance weights over [old tokens; frames]
(a softmax over them of each key's inner product with the token's learned write vector), and the
new token is that weighted mean of their keys (re-normalised) and values. A clip starts from
learned tokens; it reads nothing before its first frame is written, like every memory here.

The write is part of the memory layer (:class:`RecurrentWrite`, the layer's ``memory_write``):
trained through time, so the read path must say ``differentiable: true`` (the mapper config
refuses anything else). The views are the slot memories' (:mod:`.slots`), whose ``remember``
this write replaces; ``memory_capacity`` is N.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from clipmemcap.model.memory.slots import Slots


class RecurrentWrite(nn.Module):
    """A memory layer's N first tokens and its write."""

    def __init__(self, heads: int, head_dim: int, tokens: int):
        super().__init__()
        self.keys = nn.Parameter(F.normalize(torch.randn(heads, tokens, head_dim), dim=-1))
        self.values = nn.Parameter(0.02 * torch.randn(heads, tokens, head_dim))
        self.write = nn.Parameter(torch.randn(heads, head_dim, tokens) * head_dim**-0.5)  # a vector per new token

    def forward(self, slots: Slots, keys, values, mask, events) -> Slots:
        """``slots`` with a chunk's frames written: keys, values [B, H, W, d], mask [B, W] (the
        frames to write), events [B, W]; ``slots`` holds N tokens, or none before the clip's first
        chunk. A row with no frame in the chunk keeps its tokens."""
        B, H, W, d = keys.shape
        N = self.keys.shape[1]
        if slots.counts.shape[1] == 0:
            slots = Slots(self.keys.expand(B, -1, -1, -1), self.values.expand(B, -1, -1, -1),
                          mask.new_zeros(B, N, dtype=torch.long), mask.new_zeros(B, N, dtype=torch.long),
                          mask.new_zeros(B, N, dtype=torch.long), slots.seen)
        all_keys = torch.cat([slots.keys, keys.to(slots.keys.dtype)], 2)  # [B, H, N + W, d]
        all_values = torch.cat([slots.values, values.to(slots.values.dtype)], 2)
        writable = torch.cat([mask.new_ones(B, N), mask], 1)  # [B, N + W]
        importance = (all_keys @ self.write).masked_fill(~writable[:, None, :, None], float("-inf"))  # [B, H, N + W, N]
        share = importance.softmax(2).transpose(2, 3)  # [B, H, N, N + W]
        new_keys, new_values = F.normalize(share @ all_keys, dim=-1), share @ all_values
        all_events = torch.cat([slots.events, events * mask], 1)  # [B, N + W]
        new_events = all_events.gather(1, share.mean(1).argmax(2))  # [B, N]: the event of its largest share
        wrote = mask.any(1)  # [B]
        seen = slots.seen + mask.sum(1)
        keep = lambda new, old: torch.where(wrote.view(-1, *[1] * (new.dim() - 1)), new, old)  # noqa: E731
        return Slots(keep(new_keys, slots.keys), keep(new_values, slots.values), (seen > 0)[:, None].long().expand(B, N),
                     keep(new_events, slots.events), slots.numbers, seen)
