"""Metrics with the real pycocoevalcap (Java PTB tokenizer and METEOR)."""

import random

import pytest

from clipmemcap.evaluation.metrics import caption_metrics, dense_captioning_results

REFERENCES = {
    ("v_aaaaaaaaaaa", 0): ["a man is playing a guitar on a stage"],
    ("v_aaaaaaaaaaa", 1): ["the man bows to the crowd and walks away"],
    ("v_bbbbbbbbbbb", 0): ["a woman is washing dishes in a kitchen sink"],
    ("v_ccccccccccc", 0): ["two dogs run across a green field"],
}
PREDICTIONS = {
    ("v_aaaaaaaaaaa", 0): "a man plays a guitar on stage",
    ("v_aaaaaaaaaaa", 1): "a man walks away from the crowd",
    ("v_bbbbbbbbbbb", 0): "a woman washes dishes in the kitchen",
    ("v_ccccccccccc", 0): "a dog runs in a field",
}


@pytest.fixture(scope="module")
def metrics():
    return caption_metrics(PREDICTIONS, REFERENCES)


def test_every_metric_is_there_corpus_and_sentence_level(metrics):
    for name in ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider_d"):
        assert 0 <= metrics[name] and 0 <= metrics[f"sentence_avg_{name}"]
    assert 0 < metrics["bleu_1"] < 1 and 0 < metrics["meteor"] < 1 and metrics["cider_d"] > 0
    assert metrics["bleu_4"] != metrics["sentence_avg_bleu_4"]  # corpus BLEU is not a mean of sentences


def test_order_of_predictions_does_not_matter(metrics):
    items = list(PREDICTIONS.items())
    random.Random(0).shuffle(items)
    assert caption_metrics(dict(items), REFERENCES) == metrics


def test_matched_by_key_not_position(metrics):
    swapped = dict(PREDICTIONS)
    swapped[("v_aaaaaaaaaaa", 0)], swapped[("v_ccccccccccc", 0)] = PREDICTIONS[("v_ccccccccccc", 0)], PREDICTIONS[("v_aaaaaaaaaaa", 0)]
    assert caption_metrics(swapped, REFERENCES)["bleu_4"] < metrics["bleu_4"]
    with pytest.raises(ValueError, match="1 clips without a prediction"):
        caption_metrics({k: v for k, v in list(PREDICTIONS.items())[1:]}, REFERENCES)


def test_identical_hypothesis_and_reference_score_bleu_4_of_one():
    same = {"x": "a man is playing a guitar on a stage"}
    assert caption_metrics(same, {"x": [same["x"]]})["bleu_4"] == pytest.approx(1.0)


def test_dense_captioning_file_format():
    out = dense_captioning_results([{"video_id": "v_b", "start": 1, "end": 2.5, "caption": "x"},
                                    {"video_id": "v_a", "start": 0, "end": 1, "caption": "y"}])
    assert out["results"] == {"v_a": [{"sentence": "y", "timestamp": [0.0, 1.0]}],
                              "v_b": [{"sentence": "x", "timestamp": [1.0, 2.5]}]}


def test_child_stderr_is_held_and_shown_only_when_the_block_fails(capfd):
    """The PTB tokenizer's Java reports its speed on stderr at every call: held back, unless the
    call fails, when it is the explanation."""
    import subprocess
    import sys

    from clipmemcap.evaluation.metrics import java_stderr_shown_only_on_failure

    speak = [sys.executable, "-c", "import sys; sys.stderr.write('tokenized 39 tokens')"]
    with java_stderr_shown_only_on_failure():
        subprocess.run(speak, check=True)
    assert "tokenized" not in capfd.readouterr().err
    with pytest.raises(RuntimeError), java_stderr_shown_only_on_failure():
        subprocess.run(speak, check=True)
        raise RuntimeError("the tokenizer failed")
    assert "tokenized 39 tokens" in capfd.readouterr().err
