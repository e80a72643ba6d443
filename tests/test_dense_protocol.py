"""The official dense-captioning protocol on hand-built cases whose scores are known, and on an
excerpt of the real val_1.json / val_2.json (the first 30 videos the two files share, copied
unchanged from ActivityNet Captions' captions.zip into tests/assets)."""

import json
import re
import subprocess
import sys
import unicodedata

import numpy as np
import pytest
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from clipmemcap.evaluation.dense_protocol import DUMMY, evaluate, read_references, read_submission, tiou
from clipmemcap.evaluation.metrics import java_stderr_shown_only_on_failure
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
    assert done.returncode == 1 and "bad.json" in done.stderr and "timestamp" in done.stderr


def _plain(text: str) -> str:
    """How a captioner without accents would write it: piñata -> pinata."""
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def test_meteor_replaces_each_non_ascii_character_with_a_space_as_the_official_evaluator_does():
    """Real val_2 sentences with non-ASCII characters (piñata, ombreé, £, á), each the one reference
    of its own video, against the same sentence written without accents. The expected METEOR is
    the evaluator's, computed here by hand: remove_nonascii (a space per character), PTB
    tokenisation, METEOR per video, the mean over videos."""
    val_2 = json.loads((ASSETS / "activitynet_val_2_nonascii.json").read_text())
    sentences = [s for entry in val_2.values() for s in entry["sentences"] if any(ord(c) >= 128 for c in s)]
    assert len(sentences) == 8
    references = {f"v_{i:011d}": {"duration": 20.0, "timestamps": [[0.0, 10.0]], "sentences": [s]}
                  for i, s in enumerate(sentences)}
    submission = {video: [{"sentence": _plain(entry["sentences"][0]), "timestamp": [0.0, 10.0]}]
                  for video, entry in references.items()}
    meteor = evaluate(submission, [references], tious=(0.5,))["mean"]["meteor"]

    def official(replacement: str) -> float:
        texts = [s for i, ref in enumerate(sentences) for s in (ref, _plain(ref))]
        cleaned = {i: [{"caption": "".join(c if ord(c) < 128 else replacement for c in t)}] for i, t in enumerate(texts)}
        with java_stderr_shown_only_on_failure():
            tokens = PTBTokenizer().tokenize(cleaned)
        scorer = Meteor()
        return float(np.mean([scorer.compute_score({0: tokens[2 * i]}, {0: tokens[2 * i + 1]})[0]
                              for i in range(len(sentences))]))

    expected, deleting = official(" "), official("")
    assert abs(expected - deleting) > 1e-3  # the two semantics differ on these sentences
    assert meteor == pytest.approx(expected, abs=1e-12)


def _write(tmp_path, name, data) -> str:
    (tmp_path / name).write_text(data if isinstance(data, str) else json.dumps(data))
    return str(tmp_path / name)


def _submission(prediction) -> dict:
    return {"version": "VERSION 1.0", "results": {"v_a": [{"sentence": "a man", "timestamp": [0, 10]}, prediction]}}


@pytest.mark.parametrize("prediction,named", [
    ({"sentence": "a man", "timestamp": ["0.5", "10"]}, "prediction 1: a timestamp is two numbers"),
    ({"sentence": "a man", "timestamp": [float("nan"), 10]}, "prediction 1: timestamp [nan, 10] is not two finite"),
    ({"sentence": "a man", "timestamp": [0, float("inf")]}, "prediction 1: timestamp [0, inf] is not two finite"),
    ({"sentence": "a man", "timestamp": [1]}, "prediction 1: a timestamp is two numbers"),
    ({"sentence": "a man", "timestamp": [1, 2, 3]}, "prediction 1: a timestamp is two numbers"),
    ({"sentence": "a man", "timestamp": [True, 2]}, "prediction 1: a timestamp is two numbers"),
    ({"sentence": "a man"}, "prediction 1: a timestamp is two numbers [start, end], not None"),
    ({"sentence": 42, "timestamp": [0, 1]}, "prediction 1: a sentence is a string, not 42"),
    ({"sentence": "a" * 10_000_000, "timestamp": [0, 1]}, "prediction 1: a sentence of 10,000,000 characters"),
    ("a man, 0-10", "prediction 1: a prediction is an object"),
])
def test_a_malformed_prediction_is_an_error_naming_the_file_the_video_and_the_entry(tmp_path, prediction, named):
    path = _write(tmp_path, "submission.json", _submission(prediction))
    with pytest.raises(ValueError) as error:
        read_submission(path)
    assert str(error.value).startswith(f"{path}: video 'v_a', {named}")
    assert len(str(error.value)) < 300


@pytest.mark.parametrize("text,named", [
    ('{"version": "1", "results": {"v_a": [{"sentence": "a", "timestamp": [0, 1e999]}]}}', "not two finite numbers"),
    ('{"results": {"v_a": [{"sentence": "a", "timestamp": [0, 1' + "0" * 400 + ']}]}}', "not two finite numbers"),
    ('{"results": [["v_a", "a man"]]}', "a submission is a JSON object with a 'results' object"),
    ('[{"results": {}}]', "expected a JSON object, got list"),
    ('{"results": {"v_a": {"sentence": "a", "timestamp": [0, 1]}}}', "video 'v_a': predictions are a list"),
    ('{"results": {"v_a": [', "malformed JSON at line 1"),
])
def test_a_malformed_submission_file_is_an_error_naming_it(tmp_path, text, named):
    path = _write(tmp_path, "submission.json", text)
    with pytest.raises(ValueError, match=re.escape(named)) as error:
        read_submission(path)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("references,named", [
    ([{"v_a": REFERENCES["v_a"]}], "expected a JSON object, got list"),
    ({"v_a": [[0, 10], "a man"]}, "video 'v_a': an entry is an object with 'timestamps' and 'sentences' lists"),
    ({"v_a": {"timestamps": {"0": [0, 10]}, "sentences": ["a man"]}}, "an entry is an object with"),
    ({"v_a": {"timestamps": [[0, 10]], "sentences": [7]}}, "video 'v_a', segment 0: a sentence is a string, not 7"),
    ({"v_a": {"timestamps": [["0", "10"]], "sentences": ["a man"]}}, "video 'v_a', segment 0: a timestamp is two numbers"),
    ({"v_a": {"timestamps": [[0, 10], [5, 9]], "sentences": ["a man"]}}, "video 'v_a': 2 timestamps and 1 sentences"),
])
def test_a_malformed_reference_file_is_an_error_naming_it(tmp_path, references, named):
    path = _write(tmp_path, "val_1.json", references)
    with pytest.raises(ValueError, match=re.escape(named)) as error:
        read_references(path)
    assert str(path) in str(error.value)


def test_a_reversed_prediction_overlaps_nothing_and_is_scored_against_the_dummy():
    reversed_ = copy_of(REFERENCES)
    reversed_["v_a"][0]["timestamp"] = [10.0, 0.0]  # as the evaluator's tIoU has it: 0 with everything
    assert tiou([10.0, 0.0], [0.0, 10.0]) == 0.0
    scores = evaluate(reversed_, [REFERENCES], tious=(0.5,))["per_tiou"]["0.5"]
    assert scores["precision"] == pytest.approx(0.75) and scores["recall"] == pytest.approx(0.75)


def test_the_command_ends_bad_input_with_one_line_naming_the_file(tmp_path):
    references = _write(tmp_path, "refs.json", REFERENCES)
    command = [sys.executable, "-m", "clipmemcap.evaluation.dense_protocol", "-r", references, "-s"]
    for name, data in (("strings.json", _submission({"sentence": "a", "timestamp": ["0.5", "10"]})),
                       ("huge.json", _submission({"sentence": "a" * 10_000_000, "timestamp": [0, 10]})),
                       ("list.json", [1, 2])):
        done = subprocess.run(command + [_write(tmp_path, name, data)], capture_output=True, text=True)
        assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1, done.stderr[-2000:]
        assert name in done.stderr and "Traceback" not in done.stderr
    zero = tmp_path / "zero.json"
    zero.symlink_to("/dev/zero")
    done = subprocess.run(command + [str(zero)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "zero.json is not a regular file" in done.stderr
    done = subprocess.run(command + [str(zero).replace("zero", "absent")], capture_output=True, text=True)
    assert done.returncode == 1 and "absent.json" in done.stderr and len(done.stderr.strip().splitlines()) == 1
