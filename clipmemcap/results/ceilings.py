"""Ceilings: the slot accuracy a perfect recogniser would reach seeing what a run's mapper sees.

On the benchmark the events of every test clip are known (the benchmark's plan redraws them), so
for each frame policy one can say which events its frames show: a recogniser that names every
event it saw, in the right order, and guesses every other one (right with probability 1 / kinds,
kinds = colours x shapes), scores the fraction of the clip's events shown on at least one of its
frames plus that guess for the rest. ``uniform`` and ``last`` see W frames; ``memorizing``
(chunk by chunk) and a window as long as the clip see all of them; ``mean`` (and ClipCap's image
mappers) sees every event but in one averaged token, which keeps no order: a recogniser can only
guess it, and a random order of m events puts 1/m of them in place on average. A memorizing run
with its memory shut sees its final chunk (the last W frames); an ``oracle`` run sees every event.
The clips may be of any test set (the further test sets of other lengths too).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from clipmemcap.core.config import Config
from clipmemcap.core.grid import grid_range
from clipmemcap.core.layout import gate_shut_run
from clipmemcap.model.mappers import MapperConfig, select_frames
from clipmemcap.model.memory.slots import frame_priority
from clipmemcap.sources.benchmark import planned_clips


def _seen(cfg: MapperConfig, n: int) -> np.ndarray | None:
    """Positions of the clip's n frames the mapper sees, in order; None: all, but without order.
    A memory sees its final chunk (the last W frames) and what it holds of the frames before:
    the latest ``memory_capacity`` (knn: a FIFO), the frames of the lowest priorities (reservoir),
    every frame (merge, kmeans, recurrent tokens: each slot a mixture of frames; a bound)."""
    if cfg.kind == "memorizing":
        before = max(0, n - cfg.window)  # frames written before the final chunk
        if cfg.memory == "knn":
            return np.arange(max(0, before - cfg.memory_capacity), n)
        if cfg.memory == "reservoir":
            kept = frame_priority(torch.arange(before)).argsort(stable=True)[: cfg.memory_capacity].numpy()
            return np.union1d(kept, np.arange(before, n))
        return np.arange(n)
    if cfg.kind != "temporal" or cfg.frame_policy == "mean":
        return None
    index, mask = select_frames(torch.tensor([n]), cfg.window, cfg.frame_policy)
    return np.unique(index[0][mask[0]].numpy())


def ceilings(cfg: Config, rows: list[dict]) -> dict[str, np.ndarray]:
    """Per run: each test clip's ceiling, for the clips of ``rows`` (an evaluation's predictions)."""
    clips = planned_clips(cfg.benchmark, cfg.activitynet.subset)
    fps, event_s = cfg.activitynet.fps, cfg.benchmark.event_s
    guess = 1.0 / (len(cfg.benchmark.colours) * len(cfg.benchmark.shapes))  # an unseen event's kind, at random
    views = {}
    for run in cfg.finetune.runs:
        mapper, overrides, _ = cfg.finetune.run(run, cfg.finetune.seeds[0])
        views[run] = MapperConfig.load(mapper, **overrides)
        if cfg.finetune.runs[run].frames == "oracle":
            views[run] = replace(views[run], kind="memorizing")  # sees every event, in order
        elif views[run].kind == "memorizing":
            views[gate_shut_run(run)] = replace(views[run], kind="temporal", frame_policy="last")
    out = {}
    for run, mapper_cfg in views.items():
        scores = []
        for row in rows:
            clip = clips[row["video_id"], row["segment"]]
            times = np.array(grid_range(row["start"], row["end"], fps)) / fps - row["start"]  # clip's frames
            seen = _seen(mapper_cfg, len(times))
            if seen is None:
                scores.append(1.0 / len(clip.starts))
                continue
            shown = np.array([np.any((times[seen] >= start) & (times[seen] < start + event_s)) for start in clip.starts])
            scores.append(float(np.mean(shown + ~shown * guess)))
        out[run] = np.array(scores)
    return out
