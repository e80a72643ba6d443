"""Needle in a video haystack: each run's accuracy on long clips by clip length and by where in the
clip the event is, from the start (left) to the end (right, what the ``last`` window sees).

An event counts as right when the prediction names its colour and shape at its position
(:func:`clipmemcap.results.slots.event_hits`); its place is its start over the clip's length, in
``PLACES`` bins. Writes ``reports/results/haystack.csv`` (run, length bin, place bin, accuracy,
events) and ``haystack.png``: one heatmap a run.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from clipmemcap.core.config import Config
from clipmemcap.results.placeholder import write_placeholder
from clipmemcap.results.slots import event_hits
from clipmemcap.sources.benchmark import planned_clips

PLACES = 5  # bins of an event's start / the clip's length


def haystack(cfg: Config, predictions: dict[str, list[list[dict]]],
             length_bins: list[tuple[str, float, float]]) -> dict[str, np.ndarray]:
    """Per run: [hits, events] counts, shaped [2, length bins, PLACES], over seeds and long clips."""
    clips = planned_clips(cfg.benchmark, cfg.activitynet.subset)
    out = {}
    for run, per_seed in predictions.items():
        counts = np.zeros((2, len(length_bins), PLACES))
        for rows in per_seed:
            for row, hits in zip(rows, event_hits([(r["prediction"], r["reference"]) for r in rows], cfg.benchmark)):
                length = row["end"] - row["start"]
                column = next((i for i, (_, low, high) in enumerate(length_bins) if low < length <= high), None)
                if column is None:
                    continue
                for start, hit in zip(clips[row["video_id"], row["segment"]].starts, hits):
                    place = min(PLACES - 1, int(PLACES * start / length))
                    counts[:, column, place] += (hit, 1)
        out[run] = counts
    return out


def write_haystack(folder: Path, counts: dict[str, np.ndarray], length_bins: list[tuple[str, float, float]]) -> None:
    labels = [label for label, _, _ in length_bins]
    places = [f"{100 * i // PLACES}–{100 * (i + 1) // PLACES} %" for i in range(PLACES)]
    with open(folder / "haystack.csv", "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["run", "length_bin", "event_place", "accuracy", "events"])
        for run, (hits, events) in counts.items():
            for i, label in enumerate(labels):
                for j, place in enumerate(places):
                    accuracy = hits[i, j] / events[i, j] if events[i, j] else float("nan")
                    writer.writerow([run, label, place, f"{accuracy:.4f}", int(events[i, j])])
    if not counts:
        write_placeholder(folder / "haystack.png", "no haystack: it needs the benchmark's event places (report.slot_accuracy)")
        return
    columns = min(4, len(counts))
    rows = math.ceil(len(counts) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.6 * rows), squeeze=False, layout="constrained")
    for k, (ax, (run, (hits, events))) in enumerate(zip(axes.flat, counts.items())):
        accuracy = np.divide(hits, events, out=np.full_like(hits, np.nan), where=events > 0).T  # [places, lengths]
        image = ax.imshow(accuracy, vmin=0, vmax=1, cmap="viridis", origin="lower", aspect="auto")
        for (j, i), value in np.ndenumerate(accuracy):
            if not np.isnan(value):
                ax.text(i, j, f"{value:.2f}", ha="center", va="center", fontsize=7, color="white" if value < 0.6 else "black")
        ax.set_xticks(range(len(labels)), labels, fontsize=7)
        ax.set_yticks(range(PLACES), places if k % columns == 0 else [], fontsize=7)
        ax.set_title(run, fontsize=9)
    for ax in list(axes.flat)[len(counts):]:
        ax.axis("off")
    fig.supxlabel("clip length")
    fig.supylabel("event's place in the clip (start → end)")
    fig.colorbar(image, ax=axes, shrink=0.8, label="events named right, in place")
    fig.savefig(folder / "haystack.png", dpi=110)
    plt.close(fig)
