"""The results report: means and spreads over seeds, margins, slot accuracy by clip length, plot."""

import csv
import json

import pytest

from clipmemcap.core.atomic import write_json
from clipmemcap.core.config import load_config
from clipmemcap.core.layout import Layout
from clipmemcap.results.report import report
from clipmemcap.sources.benchmark import plan
from conftest import ROOT

REFERENCE = "a red circle, then a blue square."


def benchmark_clips(cfg) -> list[tuple[str, int, float, float]]:
    """Six clips of the benchmark's test set (video, segment, start, end): two of 30-60 s, two of
    90-120 s, two control clips."""
    videos = plan(cfg.benchmark, cfg.activitynet.subset)["val_1.json"]
    clips = [(video_id, i, float(video.starts[i]), float(video.starts[i + 1]))
             for video_id, video in videos.items() for i in range(len(video.clips))]
    pick = lambda low, high: [c for c in clips if low < c[3] - c[2] <= high][:2]  # noqa: E731
    return pick(30, 60) + pick(90, 120) + pick(0, 3)


def evaluation(cfg, run, seed, right_long: int, right_short: int, bleu: float, gate_shut: tuple[int, int] | None = None):
    """What an evaluate stage leaves: 4 long clips and 2 short ones, of which the first
    ``right_*`` are captioned right and the rest with the events swapped; ``gate_shut``: the
    ``right_*`` of a second decoding with the memory shut."""
    metrics = {"bleu_4": bleu, "meteor": 0.2, "rouge_l": 0.3, "cider_d": 0.4, "clips": 6}
    write_json(Layout.of(cfg).predictions(run, seed), predictions(cfg, right_long, right_short))
    if gate_shut:
        write_json(Layout.of(cfg).predictions(run, seed, gate_shut=True), predictions(cfg, *gate_shut))
        metrics["gate_shut"] = {**metrics, "bleu_4": bleu / 2}
    write_json(Layout.run_metrics(run, seed), metrics)


def predictions(cfg, right_long: int, right_short: int) -> list[dict]:
    rows = []
    for i, (video_id, segment, start, end) in enumerate(benchmark_clips(cfg)):
        right = i < right_long if i < 4 else i - 4 < right_short
        prediction = REFERENCE if right else "a blue square, then a red circle."
        rows.append({"video_id": video_id, "segment": segment, "start": start, "end": end, "frames": int((end - start) * 5),
                     "prediction": prediction, "reference": REFERENCE})
    return rows


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return load_config(ROOT / "params.yaml", [f"storage.root={tmp_path / 'storage'}", "finetune.seeds=[0, 1]",
                                              "benchmark.long_s=[30.0, 120.0]", "report.length_bin_s=30",
                                              "finetune.runs={memorizing: {mapper: video-memorizing}, "
                                              "last: {mapper: video-temporal}}"])


def test_the_summary_holds_means_spreads_and_the_margin_over_the_best_other_run(cfg):
    evaluation(cfg, "memorizing", 0, right_long=4, right_short=2, bleu=0.1)
    evaluation(cfg, "memorizing", 1, right_long=2, right_short=2, bleu=0.3)
    evaluation(cfg, "last", 0, right_long=1, right_short=2, bleu=0.2)
    evaluation(cfg, "last", 1, right_long=1, right_short=1, bleu=0.2)
    summary = report(cfg)
    assert json.loads(Layout.summary.read_text()) == summary
    assert json.loads(Layout.run_summary.read_text()) == summary["memorizing"]  # report.run, plain names
    memorizing, last = summary["memorizing"], summary["last"]
    assert memorizing["slot_accuracy_long"] == pytest.approx(0.75) and memorizing["slot_accuracy_long_std"] == pytest.approx(0.25)
    assert last["slot_accuracy_long"] == pytest.approx(0.25) and last["slot_accuracy_short"] == pytest.approx(0.75)
    assert memorizing["slot_accuracy_long_margin"] == pytest.approx(0.5)
    assert last["slot_accuracy_long_margin"] == pytest.approx(-0.5)
    assert memorizing["bleu_4"] == pytest.approx(0.2) and memorizing["bleu_4_std"] == pytest.approx(0.1)
    assert memorizing["test_clips_long"] == last["test_clips_long"] == 4 and last["test_clips_short"] == 2
    low, high = last["slot_accuracy_long_margin_ci95"]  # memorizing minus last, paired by clip
    assert low <= 0.5 <= high and "slot_accuracy_long_margin_ci95" not in memorizing

    verdicts = json.loads(Layout.hypotheses.read_text())
    assert verdicts["H1"]["compared_with"] == "last" and verdicts["H1"]["estimate"] == pytest.approx(0.5)
    assert verdicts["H1"]["ci95"] == [low, high]
    assert verdicts["H2"]["estimate"] == pytest.approx(0.75)  # long 0.75 of control 1.0
    assert verdicts["H3"]["verdict"] == verdicts["H4"]["verdict"] == "not run"  # no all-frames, no random run
    assert all(v["verdict"] in {"supported", "refuted", "inconclusive", "not run"} for v in verdicts.values())

    table = (Layout.results / "results.md").read_text()
    assert "over 2 seed(s)" in table
    assert "| memorizing | 0.750 ± 0.250 | 1.000 ± 0.000 |" in table and "| last | 0.250 ± 0.000 |" in table

    # ceilings: memorizing sees every frame; `last` its last 16 of a long clip; both see a control clip whole
    assert memorizing["slot_accuracy_long_ceiling"] == 1.0 and 0 <= last["slot_accuracy_long_ceiling"] < 1
    assert memorizing["slot_accuracy_short_ceiling"] == last["slot_accuracy_short_ceiling"] == 1.0
    assert "| last | +0.500 |" in table and "| H1 |" in table and "**not run**" in table
    with open(Layout.results / "slot_accuracy.csv") as f:
        rows = list(csv.DictReader(f))
    assert all(float(r["ci95_low"]) <= float(r["slot_accuracy"]) <= float(r["ci95_high"]) for r in rows)
    bins = {(r["run"], r["length_bin"]): float(r["slot_accuracy"]) for r in rows}
    assert bins[("memorizing", "≤3 s (control)")] == 1.0
    assert bins[("memorizing", "30–60 s")] == 1.0  # the 40 s clips: right in both seeds
    assert bins[("memorizing", "90–120 s")] == 0.5  # the 100 s clips: right in seed 0 only
    assert bins[("last", "90–120 s")] == 0.0
    assert ("last", "60–90 s") not in bins  # no clip that long
    assert (Layout.results / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_runs_scored_on_different_test_clips_are_not_compared(cfg):
    for run in ("memorizing", "last"):
        for seed in (0, 1):
            evaluation(cfg, run, seed, 2, 1, 0.1)
    path = Layout.of(cfg).evaluation("last", 1) / "predictions.json"
    rows = json.loads(path.read_text())
    rows[0]["segment"] = 3
    write_json(path, rows)
    with pytest.raises(ValueError, match="other test clips"):
        report(cfg)


def test_a_missing_evaluation_is_an_error_naming_the_stage(cfg):
    evaluation(cfg, "memorizing", 0, 4, 2, 0.1)
    with pytest.raises(FileNotFoundError, match="no evaluation of memorizing-1"):
        report(cfg)


def test_without_slots_the_report_plots_the_caption_metrics(cfg):
    cfg = cfg.model_copy(update={"report": cfg.report.model_copy(update={"slot_accuracy": False})})
    for run in ("memorizing", "last"):
        for seed in (0, 1):
            evaluation(cfg, run, seed, 0, 0, 0.1)
    summary = report(cfg)
    assert "slot_accuracy_long" not in summary["memorizing"] and summary["last"]["bleu_4"] == pytest.approx(0.1)
    assert (Layout.results / "plot.png").exists()
    assert "| run | bleu_4 | meteor | rouge_l | cider_d |" in (Layout.results / "results.md").read_text()
    # every output DVC declares is written: the hypotheses say why they were not tested
    verdicts = json.loads(Layout.hypotheses.read_text())
    assert sorted(verdicts) == ["H1", "H2", "H3", "H4"] and {v["verdict"] for v in verdicts.values()} == {"not run"}
    assert (Layout.results / "haystack.csv").read_text().strip() == "run,length_bin,event_place,accuracy,events"
    assert (Layout.results / "haystack.png").read_bytes()[:4] == b"\x89PNG"
    assert (Layout.results / "lengths.png").read_bytes()[:4] == b"\x89PNG"


def test_a_memorizing_run_decoded_with_its_memory_shut_is_a_run_of_its_own(cfg, monkeypatch):
    runs = "{memorizing: {mapper: video-memorizing}, last: {mapper: video-temporal, mapper_overrides: {frame_policy: last}}, " \
           "oracle: {mapper: video-temporal, frames: oracle}}"
    cfg = load_config(ROOT / "params.yaml", [f"storage.root={cfg.storage.root}", "finetune.seeds=[0, 1]",
                                             "benchmark.long_s=[30.0, 120.0]", f"finetune.runs={runs}",
                                             "report.comparisons={sight: [oracle, last], gone: [oracle, nope]}"])
    for seed in (0, 1):
        evaluation(cfg, "memorizing", seed, 4, 2, 0.4, gate_shut=(1, 2))
        evaluation(cfg, "last", seed, 1, 2, 0.2)
        evaluation(cfg, "oracle", seed, 3, 2, 0.3)
        curve = Layout.finetune_logs("memorizing", seed) / "plots" / "metrics" / "val" / "loss.tsv"
        curve.parent.mkdir(parents=True)
        curve.write_text("step\tloss\n50\t0.9\n100\t0.5\n150\t0.7\n" if seed == 0 else "step\tloss\n50\t0.8\n")
    summary = report(cfg)
    table = (Layout.results / "results.md").read_text()
    assert "| memorizing | 3 / 1 | 2 / 1 | 0.500 / 0.800 |" in table  # epochs run, best epoch, lowest loss
    assert (Layout.results / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"
    shut = summary["memorizing-gate-shut"]
    assert shut["slot_accuracy_long"] == pytest.approx(0.25) and shut["bleu_4"] == pytest.approx(0.2)
    low, high = shut["slot_accuracy_long_margin_ci95"]  # memorizing minus itself with the memory shut
    assert low <= 0.75 <= high
    # shut, it sees its last chunk (the last 16 frames), as `last` does; the oracle every event
    assert shut["slot_accuracy_long_ceiling"] == summary["last"]["slot_accuracy_long_ceiling"] < 1
    assert summary["oracle"]["slot_accuracy_long_ceiling"] == 1.0
    assert "| memorizing-gate-shut |" in (Layout.results / "results.md").read_text()
    verdicts = json.loads(Layout.hypotheses.read_text())  # exploratory: oracle 0.75 vs last 0.25 on long clips
    assert verdicts["sight"]["estimate"] == pytest.approx(0.5) and verdicts["sight"]["ci95"][0] <= 0.5
    assert verdicts["sight"]["verdict"] in {"oracle ahead", "no difference shown"}
    assert verdicts["gone"]["verdict"] == "not run"
    write_json(Layout.run_metrics("memorizing", 1), {"bleu_4": 0.4, "clips": 6})  # one seed without it
    with pytest.raises(ValueError, match="memorizing-gate-shut was evaluated for only some of the seeds"):
        report(cfg)


def test_errors_are_split_runs_are_set_against_the_references_and_pre_registered_hypotheses_judged(cfg):
    runs = "{memorizing: {mapper: video-memorizing}, last: {mapper: video-temporal}, wide: {mapper: video-temporal}}"
    hypotheses = ("{H5: {claim: wide beats last, a: wide, b: last}, "
                  "H6: {claim: last keeps its control accuracy, a: last, b: wide, clips: control, line: -0.05}, "
                  "H7: {claim: absent, a: nope, b: wide}}")
    cfg = load_config(ROOT / "params.yaml", [f"storage.root={cfg.storage.root}", "finetune.seeds=[0, 1]",
                                             "benchmark.long_s=[30.0, 120.0]", "report.length_bin_s=30",
                                             f"finetune.runs={runs}", "report.references=[memorizing, wide]",
                                             f"report.hypotheses={hypotheses}"])
    for seed in (0, 1):
        evaluation(cfg, "memorizing", seed, 2, 2, 0.1)  # 2 long clips right, 2 swapped
        evaluation(cfg, "last", seed, 0, 2, 0.1)
        evaluation(cfg, "wide", seed, 4, 2, 0.1)
        path = Layout.of(cfg).predictions("last", seed)  # `last` names a wrong colour in every long clip
        rows = json.loads(path.read_text())
        for row in rows[:4]:
            row["prediction"] = "a green circle, then a blue square."
        write_json(path, rows)
        write_json(Layout.run_metrics("memorizing", seed), {**json.loads(Layout.run_metrics("memorizing", seed).read_text()),
                   "retrieval_recall": 0.3, "retrieval_base_rate": 0.1, "retrieval_attention_on_events": 0.4,
                   "retrieval_event_coverage": 0.9, "memory_weight": 0.5, "memory_weight_head_0": 0.5})
    summary = report(cfg)
    memorizing, last, wide = summary["memorizing"], summary["last"], summary["wide"]
    assert memorizing["set_accuracy_long"] == 1.0 and memorizing["order_swap_rate_long"] == 0.5
    assert memorizing["identity_error_rate_long"] == 0.0
    assert last["set_accuracy_long"] == 0.5 and last["identity_error_rate_long"] == 1.0 and last["order_swap_rate_long"] == 0.0
    assert memorizing["retrieval_recall"] == pytest.approx(0.3) and "retrieval_recall" not in last
    low, high = last["slot_accuracy_long_margin_ci95_vs_wide"]  # last minus wide: 0.5 - 1 on every long clip
    assert low == high == -0.5 and last["slot_accuracy_short_margin_ci95_vs_wide"] == [0.0, 0.0]
    assert "slot_accuracy_long_margin_ci95_vs_wide" not in wide and "slot_accuracy_long_margin_ci95_vs_memorizing" in wide
    verdicts = json.loads(Layout.hypotheses.read_text())
    assert verdicts["H5"]["verdict"] == "supported" and verdicts["H5"]["estimate"] == pytest.approx(0.5)
    assert verdicts["H6"]["verdict"] == "supported" and "control clips above -0.05" in verdicts["H6"]["claim"]
    assert verdicts["H7"]["verdict"] == "not run"
    table = (Layout.results / "results.md").read_text()
    assert "| memorizing | 0.300 | 0.100 | 0.400 | 0.900 | 0.500 | 0.50 |" in table
    assert "| last | 0.500 | 0.500 | 1.000 | 0.000 |" in table
    with open(Layout.results / "haystack.csv") as f:
        cells = [row for row in csv.DictReader(f) if row["run"] == "wide" and row["events"] != "0"]
    assert cells and all(row["accuracy"] == "1.0000" for row in cells)
    assert sum(int(row["events"]) for row in cells) == 2 * 4 * 2  # seeds x long clips x events
    assert (Layout.results / "haystack.png").read_bytes()[:4] == b"\x89PNG"


def test_a_pre_registered_hypothesis_may_not_take_an_earlier_ones_name():
    with pytest.raises(ValueError, match="must differ from H1-H4"):
        load_config(ROOT / "params.yaml", ["report.hypotheses={H2: {claim: x, a: a, b: b}}"])


def test_every_run_is_reported_at_every_length_with_ceilings_margins_and_length_hypotheses(cfg):
    """A further test set (benchmark.test_lengths): its predictions beside the test set's, scored
    per run and length against report.length_reference, and the pre-registered length claims."""
    hypotheses = ("{L1: {claim: a memory beats last when long, a: [memorizing, wide], b: last, lengths: [long]}, "
                  "L2: {claim: the memory keeps its accuracy, a: [memorizing], lengths: [long], line: -0.1}, "
                  "L3: {claim: absent, a: [memorizing], lengths: [nope]}}")
    runs = "{memorizing: {mapper: video-memorizing}, last: {mapper: video-temporal}, wide: {mapper: video-temporal}}"
    cfg = load_config(ROOT / "params.yaml", [f"storage.root={cfg.storage.root}", "finetune.seeds=[0, 1]",
                                             "benchmark.long_s=[30.0, 120.0]", "report.length_bin_s=30",
                                             f"finetune.runs={runs}", "report.length_reference=last",
                                             "benchmark.test_lengths={long: [200.0, 300.0]}", "benchmark.length_test_videos=2",
                                             f"report.length_hypotheses={hypotheses}"])
    videos = plan(cfg.benchmark, cfg.activitynet.subset)["test-long.json"]
    further = [(video_id, i, float(video.starts[i]), float(video.starts[i + 1]))
               for video_id, video in videos.items() for i in range(len(video.clips))]
    right = {"memorizing": 8, "last": 2, "wide": 6}  # of the further set's 8 clips
    for seed in (0, 1):
        for run in right:
            evaluation(cfg, run, seed, 4, 2, 0.1)  # every long clip of the test set right
            write_json(Layout.of(cfg).predictions(run, seed, split="test-long"), [
                {"video_id": v, "segment": s, "start": a, "end": b, "frames": int((b - a) * 5), "reference": REFERENCE,
                 "prediction": REFERENCE if i < right[run] else "a blue square."} for i, (v, s, a, b) in enumerate(further)])
    report(cfg)
    lengths = json.loads(Layout.lengths.read_text())
    assert list(lengths["memorizing"]) == ["30-120s", "long"]
    long = {run: lengths[run]["long"] for run in right}
    assert long["memorizing"]["slot_accuracy_long"] == 1.0 and long["last"]["slot_accuracy_long"] == 0.25
    assert long["wide"]["set_accuracy_long"] == pytest.approx(7 / 8) and long["last"]["clips"] == 8  # half of 2 clips
    assert long["memorizing"]["seconds"] == [200.0, 300.0] and long["memorizing"]["ceiling"] == 1.0
    assert 0 < long["last"]["ceiling"] < 1  # 16 frames of 1,000-1,500: mostly a guess
    low, high = long["memorizing"]["margin_vs_last_ci95"]
    assert 0 < low <= 0.75 <= high and "margin_vs_last_ci95" not in long["last"]
    assert lengths["wide"]["30-120s"]["margin_vs_last_ci95"] == [0.0, 0.0]
    verdicts = json.loads(Layout.hypotheses.read_text())
    assert verdicts["L1"]["run"] == "memorizing"  # a tie on 30-120 s, chosen there: the first named
    assert verdicts["L1"]["verdict"] == "supported" and verdicts["L1"]["lengths"]["long"]["estimate"] == pytest.approx(0.75)
    assert verdicts["L2"]["verdict"] == "supported" and verdicts["L2"]["lengths"]["long"]["ci95"] == [0.0, 0.0]
    assert verdicts["L3"] == {"claim": "absent", "verdict": "not run", "missing": ["nope"]}
    with open(Layout.results / "lengths.csv") as f:
        rows = {(r["run"], r["length"]): r for r in csv.DictReader(f)}
    assert float(rows["last", "long"]["slot_accuracy_long"]) == 0.25 and len(rows) == 6
    with open(Layout.results / "haystack.csv") as f:  # the further set: a column of its own
        cells = [row for row in csv.DictReader(f) if row["length_bin"] == "long" and row["events"] != "0"]
    assert sum(int(row["events"]) for row in cells if row["run"] == "memorizing") == 2 * 8 * 2
    table = (Layout.results / "results.md").read_text()
    assert "| L1 |" in table and "| last | " in table
    assert (Layout.results / "lengths.png").read_bytes()[:4] == b"\x89PNG"


def test_length_hypotheses_may_not_share_a_name_with_other_hypotheses():
    with pytest.raises(ValueError, match="must differ"):
        load_config(ROOT / "params.yaml", ["report.hypotheses={H5: {claim: x, a: a, b: b}}",
                                           "report.length_hypotheses={H5: {claim: x, a: [a], lengths: [b]}}"])


def test_further_test_sets_need_the_benchmark():
    with pytest.raises(ValueError, match="benchmark.build"):
        load_config(ROOT / "params.yaml", ["benchmark.build=[]", "benchmark.test_lengths={long: [60.0, 90.0]}"])
