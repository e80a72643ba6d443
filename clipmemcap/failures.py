"""A recorded failure: what could not be used, at which stage, and why."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Failure:
    video_id: str
    stage: str  # annotations | download | decode | embed
    reason: str
