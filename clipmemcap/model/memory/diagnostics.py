"""What a memory read, measured instead of guessed: on clips whose event frames are known (the
benchmark), which entries the prefix queries of the final chunk read in the top memory layer.

    with recording(mapper) as reads:
        mapper(frames, times, lengths, events)
    totals.add(reads)
    totals.metrics()  # -> retrieval_recall, retrieval_base_rate, ...

Per clip that holds any memory: ``retrieval_recall``, the fraction of the entries read (over every
prefix query and head) that are event frames, beside ``retrieval_base_rate``, the fraction of the
readable entries that are (what a read at random gets); ``retrieval_attention_on_events``: the
share of the attention paid to memory that lands on event frames; ``retrieval_event_coverage``:
of the events with a frame in memory, the fraction with at least one frame read by some prefix
query; ``memory_weight`` (and ``memory_weight_head_<h>``): the weight of memory in the layer's
output, the sigmoid gate or the joint softmax's mass on memory. Clip means, over clips with memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from clipmemcap.model.memory import Read


@contextlib.contextmanager
def recording(mapper) -> Iterator[list[Read]]:
    """The reads of every forward pass of ``mapper`` (a memorizing one, memory_backend torch)
    while the block runs."""
    if mapper.cfg.kind != "memorizing" or mapper.cfg.memory_backend != "torch":
        raise ValueError("reads are recorded from a memorizing mapper with memory_backend torch")
    mapper.records = []
    try:
        yield mapper.records
    finally:
        mapper.records = None


class ReadTotals:
    """Sums over clips of the diagnostics of the module docstring."""

    def __init__(self):
        self.clips, self.events, self.covered = 0, 0, 0
        self.recall = self.base_rate = self.on_events = 0.0
        self.mass: torch.Tensor | None = None  # [H]

    def add(self, reads: list[Read]) -> None:
        for read in reads:
            rows = read.remembers & read.readable.any(1)
            for r in rows.nonzero().flatten().tolist():
                self._add_clip(read.selected[r], read.weights[r], read.memory_mass[r], read.events[r], read.readable[r])

    def _add_clip(self, selected, weights, mass, events, readable) -> None:
        """selected, weights [H, L, n], mass [H, L], events [n], readable [n]."""
        event = (events > 0) & readable
        read = selected & readable
        self.clips += 1
        self.recall += float((read & event).sum() / read.sum().clamp(min=1))
        self.base_rate += float(event.sum() / readable.sum())
        self.on_events += float((weights * event).sum() / weights.sum().clamp(min=1e-12))
        for number in events[event].unique().tolist():
            self.events += 1
            self.covered += bool((read & (events == number)).any())
        per_head = mass.double().mean(1)
        self.mass = per_head if self.mass is None else self.mass + per_head

    def metrics(self) -> dict[str, float]:
        if not self.clips:
            return {}
        out = {"retrieval_recall": self.recall / self.clips, "retrieval_base_rate": self.base_rate / self.clips,
               "retrieval_attention_on_events": self.on_events / self.clips,
               "retrieval_event_coverage": self.covered / max(self.events, 1), "retrieval_clips": self.clips,
               "memory_weight": float(self.mass.mean()) / self.clips}
        out |= {f"memory_weight_head_{h}": float(m) / self.clips for h, m in enumerate(self.mass)}
        return out
