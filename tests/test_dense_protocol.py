"""The official dense-captioning protocol on hand-built cases whose scores are known, and on an
excerpt of the real val_1.json / val_2.json (the first 30 videos the two files share, copied
unchanged from ActivityNet Captions' captions.zip into tests/assets)."""

import json
import subprocess
import sys

import pytest

from clipmemcap.evaluation.dense_protocol import DUMMY, evaluate, tiou
from conftest import ROOT

ASSETS = ROOT / "tests" / "assets"
SENTENCES = ["a man opens the red door of the house", "the dog runs across the green field fast",
             "a woman is slicing bread on the kitchen table", "two kids play football in the park today"]
REFERENCES = {"v_a": {"duration": 100.0, "timestamps": [[0.0, 10.0], [20.0, 30.0]], "sentences": SENTENCES[:2]},
              "v_b": {"duration": 100.0, "timestamps": [[40.0, 60.0], [70.0, 90.0]], "sentences": SENTENCES[2:]}}


def copy_of(references, shift=0.0):
    return {video: [{"sentence": s, "timestamp": [a + shift, b + shift]}
                    for (a, b), s in zip(entry["timestamps"], entry["sentences"])]
            for video, entry in references.items()}


@pytest.fixture(scope="module")
def exact():
    return evaluate(copy_of(REFERENCES), [REFERENCES])


def test_tiou_is_intersection_over_union():
    assert tiou([0, 10], [0, 10]) == pytest.approx(1.0)
    assert tiou([0, 10], [5, 15]) == pytest.approx(5 / 15)
    assert tiou([0, 10], [20, 30]) == 0.0


def test_an_exact_copy_of_the_references_scores_the_maximum_at_every_threshold(exact):
    assert list(exact["per_tiou"]) == ["0.3", "0.5", "0.7", "0.9"] and exact["videos"] == 2
    for scores in exact["per_tiou"].values():
        assert scores["bleu_4"] == pytest.approx(1.0, abs=1e-6) and scores["meteor"] > 0.9
        assert scores["rouge_l"] == pytest.approx(1.0) and scores["precision"] == scores["recall"] == 1.0
    assert exact["mean"]["bleu_4"] == pytest.approx(1.0, abs=1e-6)
    assert "meteor-1.5" in exact["meteor_version"]


def test_a_time_shifted_copy_scores_only_at_the_thresholds_its_overlap_reaches():
    # 10 s segments shifted by 3 s: tIoU 7/13 = 0.54, so matched at 0.3 and 0.5, not at 0.7 or 0.9
    scores = evaluate(copy_of(REFERENCES, shift=3.0), [REFERENCES])["per_tiou"]
    assert scores["0.3"]["bleu_4"] == pytest.approx(1.0, abs=1e-6) and scores["0.5"]["recall"] == 1.0
    for threshold in ("0.7", "0.9"):  # v_b's 20 s segments: tIoU 17/23 = 0.74, matched at 0.7 only
        assert scores[threshold]["bleu_4"] < 0.6
    assert scores["0.9"]["bleu_4"] < 1e-3 and scores["0.9"]["precision"] == scores["0.9"]["recall"] == 0.0
    assert scores["0.7"]["precision"] == pytest.approx(0.5)  # v_a's predictions miss, v_b's match


def test_an_unmatched_prediction_is_scored_against_a_dummy_and_a_video_without_any_scores_zero(exact):
    stray = copy_of(REFERENCES)
    stray["v_a"] = [{"sentence": SENTENCES[0], "timestamp": [95.0, 99.0]}]  # overlaps nothing
    del stray["v_b"]  # no prediction at all
    scores = evaluate(stray, [REFERENCES])
    assert scores["mean"]["bleu_4"] < 1e-3 and scores["mean"]["meteor"] < 0.05
    assert scores["mean"]["recall"] == scores["mean"]["precision"] == 0.0
    assert DUMMY not in SENTENCES


def test_a_prediction_that_matches_only_a_val_2_segment_counts_when_val_2_is_pooled():
    val_2 = {"v_a": {"duration": 100.0, "timestamps": [[50.0, 60.0]], "sentences": ["a cat sleeps on the warm sofa all day"]}}
    submission = {"v_a": [{"sentence": "a cat sleeps on the warm sofa all day", "timestamp": [50.0, 60.0]}]}
    alone = evaluate(submission, [{"v_a": REFERENCES["v_a"]}])["mean"]
    pooled = evaluate(submission, [{"v_a": REFERENCES["v_a"]}, val_2])["mean"]
    assert alone["bleu_4"] < 1e-3 and pooled["bleu_4"] == pytest.approx(1.0, abs=1e-6)
    assert alone["recall"] == 0.0 and pooled["recall"] == 1.0  # the better of the two files


def test_on_the_real_files_val_1_scored_against_itself_then_with_val_2_pooled():
    val_1 = json.loads((ASSETS / "activitynet_val_1_excerpt.json").read_text())
    val_2 = json.loads((ASSETS / "activitynet_val_2_excerpt.json").read_text())
    submission = copy_of(val_1)
    alone = evaluate(submission, [val_1])["per_tiou"]["0.9"]
    pooled = evaluate(submission, [val_1, val_2])["per_tiou"]["0.9"]
    assert alone["bleu_4"] > 0.9 and pooled["bleu_4"] < alone["bleu_4"]
    nowhere = {video: [{"sentence": s, "timestamp": [1e6, 1e6 + 1]} for s in entry["sentences"]]
               for video, entry in val_1.items()}
    assert evaluate(nowhere, [val_1])["mean"]["bleu_4"] < 1e-3


def test_the_command_takes_the_evaluators_arguments_and_names_a_bad_submission(tmp_path):
    (tmp_path / "refs.json").write_text(json.dumps(REFERENCES))
    (tmp_path / "sub.json").write_text(json.dumps({"version": "VERSION 1.0", "results": copy_of(REFERENCES)}))
    command = [sys.executable, "-m", "clipmemcap.evaluation.dense_protocol", "-s", str(tmp_path / "sub.json"),
               "-r", str(tmp_path / "refs.json"), "-t", "0.5", "-o", str(tmp_path / "scores.json")]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert list(scores["per_tiou"]) == ["0.5"] and scores["mean"]["bleu_4"] == pytest.approx(1.0, abs=1e-6)
    (tmp_path / "bad.json").write_text(json.dumps({"results": {"v_a": [{"sentence": "x"}]}}))
    command[4] = str(tmp_path / "bad.json")
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 2 and "bad.json" in done.stderr and "timestamp" in done.stderr
