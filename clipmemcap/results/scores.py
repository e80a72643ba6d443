"""Per-clip scores of every run on one list of test clips: the slot and set accuracy of each
clip, ``[seeds, clips]`` a run, which every figure of the report draws on."""

from __future__ import annotations

import numpy as np

from clipmemcap.core.config import Config
from clipmemcap.results.slots import clip_scores as slot_clip_scores
from clipmemcap.results.slots import set_scores


class Scores:
    """Per-clip slot scores (``tables``) and order-free set scores (``sets``) of every run,
    ``[seeds, clips]``, on one list of test clips; ``predictions``: the rows, sorted alike."""

    def __init__(self, cfg: Config, predictions: dict[str, list[list[dict]]]):
        self.tables, self.sets, self.predictions, self.rows, first = {}, {}, {}, None, None  # rows: the clips
        for run, per_seed in predictions.items():
            rows = [sorted(seed_rows, key=lambda r: (r["video_id"], r["segment"])) for seed_rows in per_seed]
            for seed_rows in rows:
                if self.rows is None:
                    self.rows, first = seed_rows, run
                elif [(r["video_id"], r["segment"]) for r in seed_rows] != [(r["video_id"], r["segment"]) for r in self.rows]:
                    raise ValueError(f"{run} was evaluated on other test clips than {first}: paired comparisons "
                                     "need the same test set (run its evaluate stages again)")
            pairs = [[(r["prediction"], r["reference"]) for r in seed_rows] for seed_rows in rows]
            self.tables[run] = np.stack([slot_clip_scores(p, cfg.benchmark) for p in pairs])
            self.sets[run] = np.stack([set_scores(p, cfg.benchmark) for p in pairs])
            self.predictions[run] = rows
        self.lengths = np.array([r["end"] - r["start"] for r in self.rows])
        self.short = self.lengths <= cfg.benchmark.short_s[1]

    def long(self, run: str) -> np.ndarray:
        return self.tables[run][:, ~self.short]

    def control(self, run: str) -> np.ndarray:
        return self.tables[run][:, self.short]

    def on(self, clips: str, run: str) -> np.ndarray:
        """``clips``: long | control."""
        return self.long(run) if clips == "long" else self.control(run)

    def errors(self, run: str) -> dict[str, list[float]]:
        """Per seed, on long clips: set accuracy (both clip sets), the share of clips with an
        identity error (an event not named) and with an order swap (every event named, out of order)."""
        sets, slots = self.sets[run], self.tables[run]
        long = ~self.short
        return {"set_accuracy_long": sets[:, long].mean(1).tolist(), "set_accuracy_short": sets[:, self.short].mean(1).tolist(),
                "identity_error_rate_long": (sets[:, long] < 1).mean(1).tolist(),
                "order_swap_rate_long": ((sets[:, long] == 1) & (slots[:, long] < 1)).mean(1).tolist()}

    def in_bin(self, run: str, low: float, high: float) -> np.ndarray:
        return self.tables[run][:, (low < self.lengths) & (self.lengths <= high)]
