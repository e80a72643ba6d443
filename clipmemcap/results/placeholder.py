"""The picture an output gets when its run cannot draw it.

DVC wants every declared output, so a run without what a plot needs (the real experiment has no
benchmark event places) writes a picture that says why instead.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt


def write_placeholder(path: Path, why: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 1.5))
    ax.text(0.5, 0.5, why, ha="center", va="center")
    ax.axis("off")
    fig.savefig(path, dpi=110)
    plt.close(fig)
