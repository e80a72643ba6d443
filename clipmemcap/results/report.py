"""The experiment's results: every run's evaluation, mean and spread over seeds.

Reads ``metrics/runs/<run>-<seed>.json`` and the predictions of each run and seed, and writes

    metrics/summary.json               per run: each metric's mean over seeds and its standard
                                       deviation (``<metric>_std``); with slot accuracy also
                                       ``slot_accuracy_long_margin``: the run minus the best other run
    metrics/run.json                   the entry of one run (``report.run``) under plain metric
                                       names, so that ``dvc metrics diff`` between two experiments
                                       that pick different runs lines them up (README)
    reports/results/results.md         the same as a Markdown table
    reports/results/slot_accuracy.csv  slot accuracy per clip-length bin and run (benchmark only)
    reports/results/plot.png           slot accuracy vs clip length (benchmark), else the metrics per run

Short clips (at most ``benchmark.short_s[1]`` seconds) are the control set; every longer clip
counts as long.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display here or in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from clipmemcap.core.atomic import write_json  # noqa: E402
from clipmemcap.core.config import Config, run_command, settings_parser  # noqa: E402
from clipmemcap.core.layout import Layout, run_name  # noqa: E402
from clipmemcap.results.slots import slot_accuracy  # noqa: E402

TABLE_METRICS = ("bleu_4", "meteor", "rouge_l", "cider_d")


def _length_bins(cfg: Config) -> list[tuple[str, float, float]]:
    """(label, low, high] bins of clip length: the control set, then long clips in bins of
    ``length_bin_s`` (the first one also takes anything between the two ranges)."""
    short_top, (low, top) = cfg.benchmark.short_s[1], cfg.benchmark.long_s
    edges = [low]
    while edges[-1] < top:
        edges.append(min(top, edges[-1] + cfg.report.length_bin_s))
    long = [(f"{a:g}–{b:g} s", short_top if i == 0 else a, b) for i, (a, b) in enumerate(zip(edges, edges[1:]))]
    return [(f"≤{short_top:g} s (control)", 0.0, short_top), *long]


def _slot_metrics(cfg: Config, rows: list[dict]) -> tuple[dict[str, float], dict[str, float]]:
    """Slot accuracy on long and short clips, and per length bin."""
    def score(selected):
        return slot_accuracy([(r["prediction"], r["reference"]) for r in selected], cfg.benchmark)

    short = [r for r in rows if r["end"] - r["start"] <= cfg.benchmark.short_s[1]]
    long = [r for r in rows if r["end"] - r["start"] > cfg.benchmark.short_s[1]]
    by_bin = {label: score([r for r in rows if low < r["end"] - r["start"] <= high])
              for label, low, high in _length_bins(cfg)}
    return {"slot_accuracy_long": score(long), "slot_accuracy_short": score(short)}, by_bin


def collect(cfg: Config) -> tuple[dict[str, dict[str, list[float]]], dict[str, dict[str, list[float]]]]:
    """Per run: each metric's values over seeds; and slot accuracy per length bin over seeds."""
    metrics, bins, layout = {}, {}, Layout.of(cfg)
    for run in cfg.finetune.runs:
        metrics[run], bins[run] = {}, {}
        for seed in cfg.finetune.seeds:
            path = layout.run_metrics(run, seed)
            if not path.exists():
                raise FileNotFoundError(f"no evaluation of {run_name(run, seed)} ({path}): run its evaluate stage first")
            values = json.loads(path.read_text())
            if cfg.report.slot_accuracy:
                rows = json.loads((layout.evaluation(run, seed) / "predictions.json").read_text())
                slots, by_bin = _slot_metrics(cfg, rows)
                values = {**slots, **values}
                for label, value in by_bin.items():
                    bins[run].setdefault(label, []).append(value)
            for key, value in values.items():
                metrics[run].setdefault(key, []).append(value)
    empty = {label for per_run in bins.values() for label, values in per_run.items() if np.isnan(values).all()}
    return metrics, {run: {k: v for k, v in per_run.items() if k not in empty} for run, per_run in bins.items()}


def summarise(metrics: dict[str, dict[str, list[float]]]) -> dict[str, dict[str, float]]:
    summary = {run: {k: v for key, values in per_run.items()
                     for k, v in ((key, float(np.mean(values))), (f"{key}_std", float(np.std(values))))}
               for run, per_run in metrics.items()}
    if len(summary) > 1 and all("slot_accuracy_long" in s for s in summary.values()):
        for run, values in summary.items():
            best_other = max(s["slot_accuracy_long"] for other, s in summary.items() if other != run)
            values["slot_accuracy_long_margin"] = values["slot_accuracy_long"] - best_other
    return summary


def _table(summary: dict[str, dict[str, float]], seeds: int) -> str:
    columns = [c for c in ("slot_accuracy_long", "slot_accuracy_short", *TABLE_METRICS) if c in next(iter(summary.values()))]
    lines = [f"Mean ± standard deviation over {seeds} seed(s); corpus-level caption metrics.", "",
             "| run | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for run, values in summary.items():
        cells = [f"{values[c]:.3f} ± {values[c + '_std']:.3f}" for c in columns]
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _plot(path: Path, summary: dict, bins: dict[str, dict[str, list[float]]]) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if any(bins.values()):
        labels = list(next(iter(bins.values())))
        for run, per_bin in bins.items():
            ax.errorbar(range(len(labels)), [np.mean(per_bin[label]) for label in labels],
                        yerr=[np.std(per_bin[label]) for label in labels], marker="o", capsize=3, label=run)
        ax.set_xticks(range(len(labels)), labels, rotation=20)
        ax.set(xlabel="clip length", ylabel="slot accuracy", ylim=(0, 1.02), title="Slot accuracy vs clip length")
    else:
        runs = list(summary)
        for i, metric in enumerate(TABLE_METRICS):
            ax.bar(np.arange(len(runs)) + i * 0.2, [summary[r][metric] for r in runs], 0.2, label=metric)
        ax.set_xticks(np.arange(len(runs)) + 0.3, runs)
        ax.set(ylabel="score", title="Caption metrics per run")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(cfg: Config) -> dict:
    if cfg.report.run not in cfg.finetune.runs:
        raise ValueError(f"report.run {cfg.report.run!r} is not one of finetune.runs ({', '.join(cfg.finetune.runs)})")
    metrics, bins = collect(cfg)
    summary = summarise(metrics)
    write_json(Layout.summary, summary)
    write_json(Layout.run_summary, summary[cfg.report.run])
    out_dir = Layout.results
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.md").write_text(_table(summary, len(cfg.finetune.seeds)))
    with open(out_dir / "slot_accuracy.csv", "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["length_bin", "run", "slot_accuracy", "slot_accuracy_std"])
        for run, per_bin in bins.items():
            for label, values in per_bin.items():
                writer.writerow([label, run, f"{np.mean(values):.4f}", f"{np.std(values):.4f}"])
    _plot(out_dir / "plot.png", summary, bins)
    return summary


def main(argv: list[str] | None = None) -> None:
    """``python -m clipmemcap.results``: the report stage."""
    def work(args, cfg) -> None:
        report(cfg)
        print((Layout.results / "results.md").read_text())

    run_command(settings_parser(__doc__, prog="python -m clipmemcap.results"), work, argv)
