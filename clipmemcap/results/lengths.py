"""Accuracy against clip length: every run on the test set's long clips and on each further test
set of the benchmark (``benchmark.test_lengths``: fixed sets of longer clips, evaluated by every
run as trained on the 20-60 s clips).

Writes

    metrics/lengths.json               per run and length (``20-60s``: the test set's long clips;
                                       then each further set by its name): ``slot_accuracy_long``
                                       (mean over seeds) and its ``_std`` and 95 % interval
                                       (``slot_accuracy_long_ci95``), ``set_accuracy_long``, the
                                       ``ceiling`` (ceilings.py: what a perfect recogniser seeing the
                                       run's frames would score), ``clips``, ``seconds`` (the set's
                                       length range) and ``margin_vs_<reference>_ci95``: the paired
                                       interval of the run minus ``report.length_reference``
                                       (``margin_vs_uniform64_ci95``: the dash dropped)
    reports/results/lengths.csv        the same, one row per run and length
    reports/results/lengths.png        accuracy against clip length, a panel a run: its 95 % band,
                                       its ceiling and the reference run drawn in

and the verdicts of ``report.length_hypotheses`` (pre-registered: reports/protocol.md).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from clipmemcap.core.config import Config
from clipmemcap.core.layout import Layout, run_name
from clipmemcap.results.ceilings import ceilings
from clipmemcap.results.paired import difference_ci, mean_ci, shift_ci
from clipmemcap.results.placeholder import write_placeholder
from clipmemcap.results.scores import Scores


def base_label(cfg: Config) -> str:
    low, high = cfg.benchmark.long_s
    return f"{low:g}-{high:g}s"


def length_sets(cfg: Config) -> dict[str, tuple[str, tuple[float, float]]]:
    """label -> (split, length range): the test set's long clips, then each further set."""
    sets = {base_label(cfg): ("test", cfg.benchmark.long_s)}
    for name, span in cfg.benchmark.test_lengths.items():
        sets[name] = f"test-{name}", span
    return sets


def scores_by_length(cfg: Config, base: Scores) -> dict[str, Scores]:
    """label -> the per-clip scores (a ``Scores``) of every run on that set; ``base``: the test
    set's, already read."""
    layout, out = Layout.of(cfg), {}
    for label, (split, _) in length_sets(cfg).items():
        if split == "test":
            out[label] = base
            continue
        predictions = {}
        for run in cfg.finetune.runs:
            for seed in cfg.finetune.seeds_of(run):
                path = layout.predictions(run, seed, split=split)
                if not path.exists():
                    raise FileNotFoundError(f"no predictions of {run_name(run, seed)} on {split} ({path}): "
                                            "run its evaluate stage again")
                predictions.setdefault(run, []).append(json.loads(path.read_text()))
        out[label] = Scores(cfg, predictions)
    return out


def reference_key(reference: str) -> str:
    return f"margin_vs_{reference.replace('-', '')}_ci95"


def summarise_lengths(cfg: Config, by_length: dict[str, Scores]) -> dict[str, dict[str, dict]]:
    """run -> label -> the figures of the module docstring."""
    sets, reference = length_sets(cfg), cfg.report.length_reference
    out: dict[str, dict[str, dict]] = {run: {} for run in cfg.finetune.runs}
    for label, scores in by_length.items():
        ceiling = ceilings(cfg, scores.rows)
        for run in cfg.finetune.runs:
            long = scores.long(run)  # [seeds, clips]
            per_seed = long.mean(1)
            entry = {"slot_accuracy_long": float(per_seed.mean()), "slot_accuracy_long_std": float(per_seed.std()),
                     "slot_accuracy_long_ci95": mean_ci(long),
                     "set_accuracy_long": float(scores.sets[run][:, ~scores.short].mean()),
                     "ceiling": float(ceiling[run][~scores.short].mean()), "clips": int(long.shape[1]),
                     "seeds": int(long.shape[0]), "seconds": list(sets[label][1])}
            if reference in scores.tables and run != reference:
                entry[reference_key(reference)] = difference_ci(long, scores.long(reference))
            out[run][label] = entry
    return out


def length_verdicts(cfg: Config, by_length: dict[str, Scores]) -> dict[str, dict]:
    """The verdicts of ``report.length_hypotheses`` (config.LengthHypothesis' rules)."""
    base, out = base_label(cfg), {}
    runs = set(cfg.finetune.runs)
    for name, h in cfg.report.length_hypotheses.items():
        missing = [r for r in (*h.a, *([h.b] if h.b else [])) if r not in runs] + \
                  [length for length in h.lengths if length not in by_length]
        if missing:
            out[name] = {"claim": h.claim, "verdict": "not run", "missing": missing}
            continue
        a = max(h.a, key=lambda run: by_length[base].long(run).mean())  # chosen on 20-60 s only
        per_length = {}
        for length in h.lengths:
            mine = by_length[length].long(a)
            if h.b:
                ci = difference_ci(mine, by_length[length].long(h.b))
                estimate = float(mine.mean() - by_length[length].long(h.b).mean())
            else:
                ci = shift_ci(mine, by_length[base].long(a))
                estimate = float(mine.mean() - by_length[base].long(a).mean())
            verdict = "supported" if ci[0] > h.line else "refuted" if ci[1] <= h.line else "inconclusive"
            per_length[length] = {"estimate": round(estimate, 6), "ci95": ci, "verdict": verdict}
        verdicts = [v["verdict"] for v in per_length.values()]
        overall = "supported" if all(v == "supported" for v in verdicts) else \
            "refuted" if "refuted" in verdicts else "inconclusive"
        against = f"minus {h.b}" if h.b else f"minus itself at {base}"
        out[name] = {"claim": f"{h.claim} ({a} {against} above {h.line:+g} at {', '.join(h.lengths)})", "run": a,
                     "lengths": per_length, "verdict": overall}
    return out


def lengths_markdown(lengths: dict[str, dict[str, dict]], verdicts: dict[str, dict], reference: str) -> str:
    """results.md's section: every run at every length, and the length hypotheses' verdicts."""
    labels = list(next(iter(lengths.values()), {}))
    if len(labels) < 2 and not verdicts:
        return ""
    key = reference_key(reference)
    lines = ["", f"Long-clip slot accuracy at every clip length (mean over seeds; ceiling in brackets), and the run "
                 f"minus {reference} at that length (paired 95 % interval):", "",
             "| run | " + " | ".join(f"{label} | − {reference}" for label in labels) + " |",
             "|---|" + "---|---|" * len(labels)]
    for run, per_length in lengths.items():
        cells = [f"{v['slot_accuracy_long']:.3f} ({v['ceiling']:.2f}) | "
                 + (f"[{v[key][0]:+.3f}, {v[key][1]:+.3f}]" if key in v else "") for v in per_length.values()]
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    if verdicts:
        lines += ["", "Pre-registered length hypotheses (reports/protocol.md):", "",
                  "| | claim | per length: estimate [95 % interval] | verdict |", "|---|---|---|---|"]
        for name, h in verdicts.items():
            detail = "; ".join(f"{length}: {v['estimate']:+.3f} [{v['ci95'][0]:+.3f}, {v['ci95'][1]:+.3f}]"
                               for length, v in h.get("lengths", {}).items())
            lines.append(f"| {name} | {h['claim']} | {detail} | **{h['verdict']}** |")
    return "\n".join(lines) + "\n"


def write_lengths(folder: Path, lengths: dict[str, dict[str, dict]], reference: str) -> None:
    key = reference_key(reference)
    with open(folder / "lengths.csv", "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["run", "length", "seconds_low", "seconds_high", "clips", "slot_accuracy_long",
                         "slot_accuracy_long_std", "ci95_low", "ci95_high", "set_accuracy_long", "ceiling",
                         f"margin_vs_{reference}_low", f"margin_vs_{reference}_high"])
        for run, per_length in lengths.items():
            for label, v in per_length.items():
                margin = v.get(key, ["", ""])
                writer.writerow([run, label, *v["seconds"], v["clips"], f"{v['slot_accuracy_long']:.4f}",
                                 f"{v['slot_accuracy_long_std']:.4f}", *(f"{x:.4f}" for x in v["slot_accuracy_long_ci95"]),
                                 f"{v['set_accuracy_long']:.4f}", f"{v['ceiling']:.4f}", *margin])
    runs = {run: dict(sorted(per_length.items(), key=lambda item: item[1]["seconds"]))
            for run, per_length in lengths.items() if per_length}
    if not runs:
        write_placeholder(folder / "lengths.png", "no lengths: they need the benchmark's slot accuracy (report.slot_accuracy)")
        return
    # one panel a run, the reference drawn in each: eleven runs' bands on one axis are unreadable
    columns = min(4, len(runs))
    rows = math.ceil(len(runs) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.6 * rows), sharex=True, sharey=True,
                             squeeze=False, layout="constrained")
    for ax, (run, per_length) in zip(axes.flat, runs.items()):
        x = [float(np.mean(v["seconds"])) for v in per_length.values()]
        if reference in runs and run != reference:
            ax.plot([float(np.mean(v["seconds"])) for v in runs[reference].values()],
                    [v["slot_accuracy_long"] for v in runs[reference].values()], color="0.55", linestyle="--",
                    label=reference)
        y = np.array([v["slot_accuracy_long"] for v in per_length.values()])
        low, high = np.array([v["slot_accuracy_long_ci95"] for v in per_length.values()]).T
        # bars as well as the band: a run at one length (the default repro) has no band to draw
        ax.errorbar(x, y, yerr=[y - low, high - y], marker="o", capsize=2, color="C0", label="accuracy, 95 % interval")
        ax.fill_between(x, low, high, color="C0", alpha=0.2)
        ax.plot(x, [v["ceiling"] for v in per_length.values()], color="C3", linestyle=":", marker="_", markersize=12,
                label="ceiling")
        if len(x) > 1:  # lengths from 20 s to 10 min; one point has no scale to speak of
            ax.set_xscale("log")
        ax.set_xticks(x, list(per_length), fontsize=7, rotation=30)
        ax.minorticks_off()
        ax.set(ylim=(0, 1.02), title=run)
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(runs):]:
        ax.axis("off")
    handles, labels = max((ax.get_legend_handles_labels() for ax in axes.flat), key=lambda h: len(h[0]))
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=8)
    fig.supylabel("long-clip slot accuracy", fontsize=9)
    fig.suptitle("Accuracy against clip length (test set), every run trained on 20-60 s clips", fontsize=10)
    fig.savefig(folder / "lengths.png", dpi=120)
    plt.close(fig)
