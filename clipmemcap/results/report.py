"""The experiment's results: every run's evaluation, mean and spread over seeds.

Reads ``metrics/runs/<run>-<seed>.json`` and the predictions of each run and seed, and writes

    metrics/summary.json               per run: each metric's mean over seeds and its standard
                                       deviation (``<metric>_std``), among them what a memory read
                                       (``retrieval_*``, ``memory_weight*``: evaluate.py); with slot
                                       accuracy also the test clip counts (``test_clips_long``,
                                       ``test_clips_short``), ``set_accuracy_long``/``_short`` (order-
                                       free), ``order_swap_rate_long`` and ``identity_error_rate_long``
                                       (slots.py), ``slot_accuracy_long_margin`` (the run minus the best
                                       other run), ``slot_accuracy_long_margin_ci95``: the paired 95 %
                                       interval of ``report.memory_run`` minus the run (paired.py), and
                                       for each of ``report.references``
                                       ``slot_accuracy_{long,short}_margin_ci95_vs_<reference>``: the
                                       run minus the reference
    metrics/hypotheses.json            the verdicts of reports/protocol.md's hypotheses H1-H4, of
                                       ``report.hypotheses`` (pre-registered later), and the
                                       exploratory ``report.comparisons`` (a minus b)
    metrics/run.json                   the entry of one run (``report.run``) under plain metric
                                       names, so that ``dvc metrics diff`` between two experiments
                                       that pick different runs lines them up (README)
    reports/results/results.md         the same as a Markdown table
    reports/results/slot_accuracy.csv  slot accuracy per clip-length bin and run, with 95 % intervals
    reports/results/plot.png           slot accuracy vs clip length with interval bands (benchmark),
                                       else the caption metrics per run
    reports/results/learning_curves.png  every run's and seed's validation loss after each epoch
                                       (with the epochs run and the best one in results.md)
    reports/results/haystack.{png,csv}  long-clip accuracy by clip length x the event's place (haystack.py),
                                       a column for each further test set of other lengths
    metrics/lengths.json, reports/results/lengths.{csv,png}  every run at every clip length
                                       (the benchmark's further test sets: lengths.py)

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
from clipmemcap.core.layout import Layout, gate_shut_run, run_name  # noqa: E402
from clipmemcap.results.ceilings import ceilings  # noqa: E402
from clipmemcap.results.haystack import haystack, write_haystack  # noqa: E402
from clipmemcap.results.paired import difference_ci, mean_ci, ratio_ci  # noqa: E402
from clipmemcap.results.lengths import (length_verdicts, lengths_markdown, scores_by_length,  # noqa: E402
                                        summarise_lengths, write_lengths)
from clipmemcap.results.scores import Scores  # noqa: E402

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


def collect(cfg: Config) -> tuple[dict[str, dict[str, list[float]]], Scores | None]:
    """Per run: each caption metric's values over seeds; and the per-clip slot scores. A memorizing
    run decoded with its memory shut too (evaluate.py) adds the run ``<run>-gate-shut``."""
    metrics, predictions, layout, expected = {}, {}, Layout.of(cfg), {}
    for run in cfg.finetune.runs:
        for seed in cfg.finetune.seeds_of(run):
            path = layout.run_metrics(run, seed)
            if not path.exists():
                raise FileNotFoundError(f"no evaluation of {run_name(run, seed)} ({path}): run its evaluate stage first")
            values = json.loads(path.read_text())
            decodings = {run: (values, False)}
            if "gate_shut" in values:
                decodings[gate_shut_run(run)] = values.pop("gate_shut"), True
            for name, (scores, shut) in decodings.items():
                expected[name] = cfg.finetune.seeds_of(run)
                for key, value in scores.items():
                    metrics.setdefault(name, {}).setdefault(key, []).append(value)
                if cfg.report.slot_accuracy:
                    predictions.setdefault(name, []).append(json.loads(layout.predictions(run, seed, shut).read_text()))
    for name, values in metrics.items():
        if len(values["clips"]) != len(expected[name]):
            raise ValueError(f"{name} was evaluated for only some of the seeds {list(expected[name])}: "
                             "run the evaluate stages again")
    return metrics, Scores(cfg, predictions) if cfg.report.slot_accuracy else None


def summarise(cfg: Config, metrics: dict[str, dict[str, list[float]]], scores: Scores | None) -> dict[str, dict]:
    """Per run: every metric's mean over seeds and its spread (``<metric>_std``); with slot scores
    also the clip counts, ``slot_accuracy_long_margin`` (the run minus the best other run) and,
    for every run but ``report.memory_run``, ``slot_accuracy_long_margin_ci95``: the paired 95 %
    interval of memory_run minus the run on long clips."""
    per_seed = {run: dict(values) for run, values in metrics.items()}
    if scores is not None:
        for run in per_seed:
            per_seed[run] = {"slot_accuracy_long": scores.long(run).mean(1).tolist(),
                             "slot_accuracy_short": scores.control(run).mean(1).tolist(), **scores.errors(run),
                             **per_seed[run]}
    summary = {run: {k: v for key, values in values_of.items()
                     for k, v in ((key, float(np.mean(values))), (f"{key}_std", float(np.std(values))))}
               for run, values_of in per_seed.items()}
    if scores is None:
        return summary
    memory = cfg.report.memory_run
    for run, values in summary.items():
        values["test_clips_long"], values["test_clips_short"] = int((~scores.short).sum()), int(scores.short.sum())
        if len(summary) > 1:
            best_other = max(s["slot_accuracy_long"] for other, s in summary.items() if other != run)
            values["slot_accuracy_long_margin"] = values["slot_accuracy_long"] - best_other
        if run != memory and memory in summary:
            values["slot_accuracy_long_margin_ci95"] = difference_ci(scores.long(memory), scores.long(run))
        for reference in (r for r in cfg.report.references if r in summary and r != run):
            for clips in ("long", "short"):
                on = "long" if clips == "long" else "control"
                values[f"slot_accuracy_{clips}_margin_ci95_vs_{reference}"] = difference_ci(
                    scores.on(on, run), scores.on(on, reference))
    for run, per_clip in ceilings(cfg, scores.rows).items():
        if run not in summary:  # a memorizing run decoded only with its memory open
            continue
        summary[run]["slot_accuracy_long_ceiling"] = float(per_clip[~scores.short].mean())
        summary[run]["slot_accuracy_short_ceiling"] = float(per_clip[scores.short].mean())
    return summary


HYPOTHESES = ("H1", "H2", "H3", "H4")  # reports/protocol.md


def hypotheses(cfg: Config, summary: dict[str, dict], scores: Scores) -> dict[str, dict]:
    """The verdicts of reports/protocol.md's hypotheses, by its decision rules: a hypothesis is
    "supported" only when its whole 95 % interval is on its side of the line, "refuted" when the
    whole interval is on the other side, and "inconclusive" otherwise; "not run" when a run it
    needs is missing."""
    rep, runs = cfg.report, set(summary)

    def verdict(ci: list[float], line: float, above: bool) -> str:
        if (ci[0] > line) if above else (ci[1] < line):
            return "supported"
        if (ci[1] <= line) if above else (ci[0] >= line):
            return "refuted"
        return "inconclusive"

    memory, out = rep.memory_run, {}

    def margin(other: str, line: float, above: bool) -> dict:
        """memory_run minus ``other``, with the interval the summary already holds."""
        estimate = summary[memory]["slot_accuracy_long"] - summary[other]["slot_accuracy_long"]
        ci = summary[other]["slot_accuracy_long_margin_ci95"]
        return {"estimate": round(estimate, 6), "ci95": ci, "verdict": verdict(ci, line, above)}

    baselines = [run for run in rep.baselines if run in runs]
    if memory in runs and baselines:
        best = max(baselines, key=lambda run: summary[run]["slot_accuracy_long"])
        out["H1"] = {"claim": f"{memory} beats the best fixed-window run ({best}) on long clips",
                     "compared_with": best, **margin(best, 0.0, True)}
    else:
        out["H1"] = {"claim": f"{memory} beats the best fixed-window run on long clips", "verdict": "not run"}
    if memory in runs:
        ratio = summary[memory]["slot_accuracy_long"] / max(summary[memory]["slot_accuracy_short"], 1e-9)
        ci = ratio_ci(scores.long(memory), scores.control(memory))
        out["H2"] = {"claim": f"{memory} keeps at least 90 % of its control accuracy on long clips",
                     "estimate": round(ratio, 6), "ci95": ci, "verdict": verdict(ci, 0.9, True)}
    else:
        out["H2"] = {"claim": f"{memory} keeps at least 90 % of its control accuracy on long clips", "verdict": "not run"}
    claims = {"H3": (rep.all_frames_run, f"{memory} is within 5 points of {rep.all_frames_run} on long clips",
                     -0.05, True),
              "H4": (rep.random_run, f"top-k retrieval beats random retrieval ({rep.random_run}) on long clips",
                     0.0, True)}
    for name, (other, claim, line, above) in claims.items():
        out[name] = {"claim": claim, **margin(other, line, above)} if {memory, other} <= runs else \
            {"claim": claim, "verdict": "not run"}
    for name, h in rep.hypotheses.items():
        claim = f"{h.claim} ({h.a} minus {h.b} on {h.clips} clips above {h.line:+g})"
        if not {h.a, h.b} <= runs:
            out[name] = {"claim": claim, "verdict": "not run"}
            continue
        ci = difference_ci(scores.on(h.clips, h.a), scores.on(h.clips, h.b))
        estimate = float(scores.on(h.clips, h.a).mean() - scores.on(h.clips, h.b).mean())
        out[name] = {"claim": claim, "estimate": round(estimate, 6), "ci95": ci, "verdict": verdict(ci, h.line, True)}
    for name, (a, b) in rep.comparisons.items():
        claim = f"exploratory: {a} minus {b} on long clips"
        if not {a, b} <= runs:
            out[name] = {"claim": claim, "verdict": "not run"}
            continue
        ci = difference_ci(scores.long(a), scores.long(b))
        ahead = f"{a} ahead" if ci[0] > 0 else f"{b} ahead" if ci[1] < 0 else "no difference shown"
        estimate = summary[a]["slot_accuracy_long"] - summary[b]["slot_accuracy_long"]
        out[name] = {"claim": claim, "estimate": round(estimate, 6), "ci95": ci, "verdict": ahead}
    return out


def _table(summary: dict[str, dict], seeds: int, memory: str, more: dict[str, int]) -> str:
    columns = [c for c in ("slot_accuracy_long", "slot_accuracy_short", *TABLE_METRICS) if c in next(iter(summary.values()))]
    more_text = "".join(f", {run} over {n}" for run, n in more.items())
    lines = [f"Mean ± standard deviation over {seeds} seed(s){more_text}; corpus-level caption metrics.", "",
             "| run | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for run, values in summary.items():
        cells = [f"{values[c]:.3f} ± {values[c + '_std']:.3f}" for c in columns]
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    if "slot_accuracy_long_ceiling" in next(iter(summary.values())):
        lines += ["", "Ceilings: the slot accuracy of a perfect recogniser that sees what the run sees "
                      "(the events on its frames, in order, and a guess at the others; `mean` keeps no order).", "",
                  "| run | long clips | control clips |", "|---|---|---|"]
        lines += [f"| {run} | {v['slot_accuracy_long_ceiling']:.3f} | {v['slot_accuracy_short_ceiling']:.3f} |"
                  for run, v in summary.items()]
    if "protocol_bleu_4" in next(iter(summary.values())):
        columns = ("protocol_mean_bleu_3", "protocol_mean_bleu_4", "protocol_mean_meteor", "protocol_mean_cider",
                   "protocol_bleu_4", "protocol_meteor")
        lines += ["", "ActivityNet's official protocol on ground-truth segments (x 100; tIoU 0.3/0.5/0.7/0.9): "
                      "the mean of the scores against val_1 and against val_2 (as MDVC and BMT report), then "
                      "both files pooled (the evaluator's `-r val_1.json val_2.json`).", "",
                  "| run | BLEU-3 | BLEU-4 | METEOR | CIDEr | BLEU-4 pooled | METEOR pooled |", "|---|" + "---|" * 6]
        lines += [f"| {run} | " + " | ".join(f"{100 * v[c]:.2f}" for c in columns) + " |" for run, v in summary.items()
                  if "protocol_bleu_4" in v]
    margins = {run: v for run, v in summary.items() if "slot_accuracy_long_margin_ci95" in v}
    if margins:
        some = next(iter(summary.values()))
        lines += ["", f"Long-clip slot accuracy of {memory} minus each other run, on the same "
                      f"{some['test_clips_long']} long test clips ({some['test_clips_short']} control clips): "
                      "paired bootstrap 95 % interval (clips and seeds resampled).", "",
                  "| run | margin | 95 % interval |", "|---|---|---|"]
        for run, values in margins.items():
            low, high = values["slot_accuracy_long_margin_ci95"]
            margin = summary[memory]["slot_accuracy_long"] - values["slot_accuracy_long"]
            lines.append(f"| {run} | {margin:+.3f} | [{low:+.3f}, {high:+.3f}] |")
    return "\n".join(lines) + "\n"


def _diagnostics_table(summary: dict[str, dict], references: tuple[str, ...]) -> str:
    """Errors by kind, what each memory read, and every run against the references."""
    lines = ["", "Errors on long clips (mean over seeds): set accuracy forgives the order; an identity error "
                 "names an event wrong or not at all; an order swap names every event, out of order.", "",
             "| run | slot accuracy | set accuracy | clips with an identity error | clips with an order swap |",
             "|---|---|---|---|---|"]
    lines += [f"| {run} | {v['slot_accuracy_long']:.3f} | {v['set_accuracy_long']:.3f} | {v['identity_error_rate_long']:.3f} "
              f"| {v['order_swap_rate_long']:.3f} |" for run, v in summary.items()]
    read = {run: v for run, v in summary.items() if "retrieval_recall" in v}
    if read:
        lines += ["", "What the memory read (the final chunk's prefix queries in the top memory layer, every head; "
                      "clips with memory): recall = the share of entries read that are event frames, against the "
                      "base rate of event frames among those stored; the share of memory attention on event frames; "
                      "the events with a frame in memory that some query read; the weight of memory in the layer's "
                      "output (gate, or joint softmax mass), per head.", "",
                  "| run | recall | base rate | attention on events | events read | memory weight | per head |",
                  "|---|---|---|---|---|---|---|"]
        for run, v in read.items():
            heads = " / ".join(f"{v[k]:.2f}" for k in sorted(k for k in v if k.startswith("memory_weight_head_")
                                                                and not k.endswith("_std")))
            lines.append(f"| {run} | {v['retrieval_recall']:.3f} | {v['retrieval_base_rate']:.3f} | "
                         f"{v['retrieval_attention_on_events']:.3f} | {v['retrieval_event_coverage']:.3f} | "
                         f"{v['memory_weight']:.3f} | {heads} |")
    present = [r for r in references if r in summary]
    if present:
        cell = lambda v, key: "" if key not in v else f"[{v[key][0]:+.3f}, {v[key][1]:+.3f}]"  # noqa: E731
        header = " | ".join(f"long − {r} | control − {r}" for r in present)
        lines += ["", "Every run minus each reference, paired 95 % intervals (clips and seeds resampled).", "",
                  f"| run | long | control | {header} |", "|---|---|---|" + "---|" * (2 * len(present))]
        for run, v in summary.items():
            cells = " | ".join(f"{cell(v, f'slot_accuracy_long_margin_ci95_vs_{r}')} | "
                               f"{cell(v, f'slot_accuracy_short_margin_ci95_vs_{r}')}" for r in present)
            lines.append(f"| {run} | {v['slot_accuracy_long']:.3f} | {v['slot_accuracy_short']:.3f} | {cells} |")
    return "\n".join(lines) + "\n"


def _hypotheses_table(verdicts: dict[str, dict]) -> str:
    lines = ["", "Pre-registered hypotheses (reports/protocol.md) and exploratory comparisons (report.comparisons):", "",
             "| | claim | estimate | 95 % interval | verdict |", "|---|---|---|---|---|"]
    for name, h in verdicts.items():
        ci = f"[{h['ci95'][0]:+.3f}, {h['ci95'][1]:+.3f}]" if "ci95" in h else ""
        estimate = f"{h['estimate']:+.3f}" if "estimate" in h else ""
        lines.append(f"| {name} | {h['claim']} | {estimate} | {ci} | **{h['verdict']}** |")
    return "\n".join(lines) + "\n"


def _bins(cfg: Config, scores: Scores) -> dict[str, dict[str, tuple[float, float, list[float]]]]:
    """Per run and clip-length bin: mean and spread over seeds, and the 95 % interval."""
    out = {}
    for run in scores.tables:
        out[run] = {}
        for label, low, high in _length_bins(cfg):
            table = scores.in_bin(run, low, high)
            if table.shape[1]:
                per_seed = table.mean(1)
                out[run][label] = (float(per_seed.mean()), float(per_seed.std()), mean_ci(table))
    return out


def _plot(path: Path, summary: dict, bins: dict) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if bins:
        labels = list(next(iter(bins.values())))
        for run, per_bin in bins.items():
            means = [per_bin[label][0] for label in labels]
            line, = ax.plot(range(len(labels)), means, marker="o", label=run)
            ax.fill_between(range(len(labels)), [per_bin[label][2][0] for label in labels],
                            [per_bin[label][2][1] for label in labels], color=line.get_color(), alpha=0.15)
        ax.set_xticks(range(len(labels)), labels, rotation=20)
        ax.set(xlabel="clip length", ylabel="slot accuracy (band: 95 % interval)", ylim=(0, 1.02),
               title="Slot accuracy vs clip length")
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


def learning_curves(cfg: Config) -> dict[str, list[np.ndarray]]:
    """Per run: each seed's validation loss after every epoch, ``[epochs, 2]`` (step, loss), from
    the fine-tuning logs (dvclive's ``plots/metrics/val/loss.tsv``)."""
    curves = {}
    for run in cfg.finetune.runs:
        for seed in cfg.finetune.seeds_of(run):
            path = Layout.finetune_logs(run, seed) / "plots" / "metrics" / "val" / "loss.tsv"
            if path.exists():
                curves.setdefault(run, []).append(np.loadtxt(path, skiprows=1, ndmin=2))
    return curves


def _plot_learning_curves(path: Path, curves: dict[str, list[np.ndarray]]) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, (run, seeds) in enumerate(curves.items()):
        for j, curve in enumerate(seeds):
            ax.plot(curve[:, 0], curve[:, 1], color=f"C{i % 10}", alpha=0.8, label=run if j == 0 else None)
    ax.set(xlabel="step", ylabel="validation loss", title="Fine-tuning: validation loss after each epoch (one line a seed)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _training_table(curves: dict[str, list[np.ndarray]]) -> str:
    lines = ["", "Training: epochs run and the epoch of the lowest validation loss, per seed "
                 "(a best epoch equal to the last one: still improving).", "",
             "| run | epochs run | best epoch | lowest validation loss |", "|---|---|---|---|"]
    for run, seeds in curves.items():
        lines.append(f"| {run} | " + " / ".join(str(len(c)) for c in seeds) + " | "
                     + " / ".join(str(int(c[:, 1].argmin()) + 1) for c in seeds) + " | "
                     + " / ".join(f"{c[:, 1].min():.3f}" for c in seeds) + " |")
    return "\n".join(lines) + "\n"


def report(cfg: Config) -> dict:
    if cfg.report.run not in cfg.finetune.runs:
        raise ValueError(f"report.run {cfg.report.run!r} is not one of finetune.runs ({', '.join(cfg.finetune.runs)})")
    metrics, scores = collect(cfg)
    summary = summarise(cfg, metrics, scores)
    write_json(Layout.summary, summary)
    write_json(Layout.run_summary, summary[cfg.report.run])
    out_dir = Layout.results
    out_dir.mkdir(parents=True, exist_ok=True)
    more = {run: len(cfg.finetune.seeds_of(run)) for run in cfg.finetune.runs
            if len(cfg.finetune.seeds_of(run)) != len(cfg.finetune.seeds)}
    text = _table(summary, len(cfg.finetune.seeds), cfg.report.memory_run, more)
    bins = {}
    if scores is not None:
        verdicts = hypotheses(cfg, summary, scores)
        text += _hypotheses_table(verdicts) + _diagnostics_table(summary, cfg.report.references)
        bins = _bins(cfg, scores)
        by_length = scores_by_length(cfg, scores)
        lengths, length_hypotheses = summarise_lengths(cfg, by_length), length_verdicts(cfg, by_length)
        verdicts |= length_hypotheses
        text += lengths_markdown(lengths, length_hypotheses, cfg.report.length_reference)
        long_bins = _length_bins(cfg)[1:]
        counts = haystack(cfg, scores.predictions, long_bins)
        for label, further in list(by_length.items())[1:]:  # each further test set: one column of its own
            extra = haystack(cfg, further.predictions, [(label, 0.0, float("inf"))])
            counts = {run: np.concatenate([c, extra.get(run, np.zeros((2, 1, c.shape[2])))], 1) for run, c in counts.items()}
            long_bins = [*long_bins, (label, 0.0, float("inf"))]
        write_haystack(out_dir, counts, long_bins)
    else:  # a DVC metric is always written: the real experiment says why it has no verdicts
        lengths = {}
        write_haystack(out_dir, {}, [])
        verdicts = {name: {"verdict": "not run", "why": "report.slot_accuracy is false: the hypotheses are about "
                                                        "the benchmark's slot accuracy"} for name in HYPOTHESES}
    write_json(Layout.hypotheses, verdicts)
    write_json(Layout.lengths, lengths)
    write_lengths(out_dir, lengths, cfg.report.length_reference)
    curves = learning_curves(cfg)
    if curves:
        text += _training_table(curves)
        _plot_learning_curves(out_dir / "learning_curves.png", curves)
    (out_dir / "results.md").write_text(text)
    with open(out_dir / "slot_accuracy.csv", "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["length_bin", "run", "slot_accuracy", "slot_accuracy_std", "ci95_low", "ci95_high"])
        for run, per_bin in bins.items():
            for label, (mean, std, (low, high)) in per_bin.items():
                writer.writerow([label, run, f"{mean:.4f}", f"{std:.4f}", f"{low:.4f}", f"{high:.4f}"])
    _plot(out_dir / "plot.png", summary, bins)
    return summary


def main(argv: list[str] | None = None) -> None:
    """``python -m clipmemcap.results``: the report stage."""
    def work(args, cfg) -> None:
        report(cfg)
        print((Layout.results / "results.md").read_text())

    run_command(settings_parser(__doc__, prog="python -m clipmemcap.results"), work, argv)
