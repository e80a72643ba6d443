"""Streaming: one clip of a known number of frames, fed in blocks of any size, holding only what
its mapper needs (a chunk, the chosen frames, or a running mean), so an hour-long clip never
holds all its frames. ``mapper.stream(n)`` gives the prefix ``forward`` gives for the clip."""

from __future__ import annotations

import math

import torch


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

    def __init__(self, mapper, n: int):
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
