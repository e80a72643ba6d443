"""A recorded failure: what could not be used (a video or image id), at which stage, and why."""

from __future__ import annotations

from dataclasses import dataclass

from clipmemcap.core.redact import redact


@dataclass(frozen=True, order=True)
class Failure:
    key: str
    stage: str  # annotations | download | decode | embed
    reason: str

    def __post_init__(self):
        # Reasons quote servers' and tools' messages, which quote URLs with their tokens.
        object.__setattr__(self, "reason", redact(self.reason))
