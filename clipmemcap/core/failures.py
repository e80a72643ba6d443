"""A recorded failure: what could not be used (a video or image id), at which stage, and why."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Failure:
    key: str
    stage: str  # annotations | download | decode | embed
    reason: str
