"""ActivityNet Captions' official dense-captioning evaluation (Krishna et al.'s ``densevid_eval``),
re-implemented on pycocoevalcap, so that our numbers line up with published ones.

    python -m clipmemcap.evaluation.dense_protocol -s submission.json -r val_1.json val_2.json

The official script's semantics, kept:

- A submission is ``{"results": {video_id: [{"sentence": ..., "timestamp": [start, end]}]}}``;
  a video's first ``max_proposals`` (1,000) predictions count.
- For each tIoU threshold (0.3, 0.5, 0.7, 0.9): every pair of a prediction and a reference
  segment of the same video with tIoU >= the threshold, in each reference file, is scored as
  one (sentence, reference) pair: with ``-r val_1.json val_2.json`` a prediction that overlaps a
  segment of each file is scored against both. A prediction that overlaps nothing is scored
  against a dummy sentence, so it counts as wrong. Each non-ASCII character is replaced by a space
  (the evaluator's ``remove_nonascii``: "piñata" becomes "pi ata", two words for METEOR), then PTB
  tokenisation (Java).
- A reversed or empty timestamp (end <= start), in a prediction or a reference, overlaps nothing
  (the evaluator's tIoU is 0 for it): such a prediction is scored against the dummy sentence.
- Each metric is computed per video over its pairs (corpus-level within the video, so CIDEr's
  document frequencies are the video's), averaged over every video of the references (a video
  without predictions scores 0), then over the thresholds.

What a file must hold (the evaluator itself crashes or silently mis-scores otherwise): a
submission is an object whose ``results`` maps video ids to lists of predictions; a reference
file maps video ids to objects with equally long ``timestamps`` and ``sentences`` lists; every
timestamp is two finite numbers (a string, NaN or infinity is refused: the evaluator matches a NaN
to every segment), every sentence a string of at most :data:`MAX_SENTENCE` characters (a 10 MB one
drove METEOR's Java past 2 GB), and a file at most :data:`MAX_FILE_MB` MB. A violation is an error
naming the file, the video and the entry.

Fixed and documented: precision and recall of the matching. The official script divides the
covered predictions by the index of its loop variable, which leaks from one reference file to the
next and uses ``> tiou`` where the scores use ``>=``. Here, per video and reference file,
precision = predictions that overlap some segment at the threshold / predictions, recall =
segments overlapped by some prediction / segments; per video the better file counts, and the mean
is over the references' videos (a video without predictions: 0 and 0).

METEOR is pycocoevalcap's ``meteor-1.5.jar`` (named in the output): papers that use the
evaluator's 2021 toolkit report other METEOR values for the same captions; BLEU and CIDEr agree.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import math
import sys
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path

import numpy as np
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from clipmemcap.core.errors import reported
from clipmemcap.core.jsonio import parse_json, read_bounded
from clipmemcap.evaluation.metrics import java_stderr_shown_only_on_failure

TIOUS = (0.3, 0.5, 0.7, 0.9)
MAX_PROPOSALS = 1000
MAX_SENTENCE = 2_000  # characters; ActivityNet's longest sentence has 451
MAX_FILE_MB = 200.0  # val_1.json is 3 MB
DUMMY = "abc123!@#"  # the official script's reference for a prediction that overlaps nothing
METRICS = ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l", "cider")


def tiou(a: Sequence[float], b: Sequence[float]) -> float:
    """Temporal intersection over union of two [start, end] intervals (as the official script:
    the union of disjoint intervals is their summed length)."""
    intersection = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    union = min(max(a[1], b[1]) - min(a[0], b[0]), (a[1] - a[0]) + (b[1] - b[0]))
    return intersection / (union + 1e-8)


def _ascii(text: str) -> str:
    """The evaluator's ``remove_nonascii``: each non-ASCII character becomes a space."""
    return "".join(c if ord(c) < 128 else " " for c in text)


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _span(value, where: str) -> list[float]:
    if not (isinstance(value, list) and len(value) == 2
            and all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in value)):
        raise ValueError(f"{where}: a timestamp is two numbers [start, end], not {_shown(value)}")
    try:
        span = [float(t) for t in value]
    except OverflowError:  # an integer beyond float
        span = [math.inf]
    if not all(map(math.isfinite, span)):
        raise ValueError(f"{where}: timestamp {_shown(value)} is not two finite numbers")
    return span


def _sentence(value, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where}: a sentence is a string, not {_shown(value)}")
    if len(value) > MAX_SENTENCE:
        raise ValueError(f"{where}: a sentence of {len(value):,} characters, more than {MAX_SENTENCE:,}")
    return value


def _read(path: Path, what: str) -> dict:
    return parse_json(str(path), read_bounded(path, int(MAX_FILE_MB * 1e6), what))


def read_submission(path: Path) -> dict[str, list[dict]]:
    """A submission's predictions per video, each ``{"sentence", "timestamp"}``: the first
    ``MAX_PROPOSALS`` of each video, as the evaluator counts them; a malformed file or entry is an
    error that names it (module docstring)."""
    data = _read(path, "submission")
    if not isinstance(data.get("results"), dict):
        raise ValueError(f"{path}: a submission is a JSON object with a 'results' object (video id -> predictions)")
    results = {}
    for video, predictions in data["results"].items():
        if not isinstance(predictions, list):
            raise ValueError(f"{path}: video {_shown(video)}: predictions are a list, not {_shown(predictions)}")
        results[video] = []
        for i, p in enumerate(predictions[:MAX_PROPOSALS]):
            where = f"{path}: video {_shown(video)}, prediction {i}"
            if not isinstance(p, dict):
                raise ValueError(f"{where}: a prediction is an object with 'sentence' and 'timestamp', not {_shown(p)}")
            results[video].append({"sentence": _sentence(p.get("sentence"), where),
                                   "timestamp": _span(p.get("timestamp"), where)})
    return results


def read_references(path: Path) -> dict[str, dict]:
    """An annotation file (``val_1.json`` layout): video id -> ``timestamps`` and ``sentences``."""
    data = _read(path, "references")
    references = {}
    for video, entry in data.items():
        where = f"{path}: video {_shown(video)}"
        if not (isinstance(entry, dict) and isinstance(entry.get("timestamps"), list)
                and isinstance(entry.get("sentences"), list)):
            raise ValueError(f"{where}: an entry is an object with 'timestamps' and 'sentences' lists, not {_shown(entry)}")
        timestamps, sentences = entry["timestamps"], entry["sentences"]
        if len(timestamps) != len(sentences):
            raise ValueError(f"{where}: {len(timestamps)} timestamps and {len(sentences)} sentences")
        references[video] = {"timestamps": [_span(t, f"{where}, segment {i}") for i, t in enumerate(timestamps)],
                             "sentences": [_sentence(s, f"{where}, segment {i}") for i, s in enumerate(sentences)]}
    return references


def references_from_rows(rows: list[dict]) -> dict[str, dict]:
    """Segment rows (``video_id``, ``start``, ``end``, ``caption``) in the annotation files' layout."""
    references: dict[str, dict] = {}
    for row in sorted(rows, key=lambda r: (r["video_id"], r["start"], r["end"])):
        entry = references.setdefault(row["video_id"], {"timestamps": [], "sentences": []})
        entry["timestamps"].append([float(row["start"]), float(row["end"])])
        entry["sentences"].append(row["caption"])
    return references


def _pairs(predictions: dict[str, list[dict]], references: list[dict[str, dict]], threshold: float,
           videos: list[str]) -> dict[str, list[tuple[str, str]]]:
    """Per video: the (prediction, reference sentence) pairs scored at ``threshold``."""
    pairs = {}
    for video in videos:
        pairs[video] = []
        for p in predictions.get(video, []):
            matched = [(p["sentence"], sentence) for refs in references if video in refs
                       for span, sentence in zip(refs[video]["timestamps"], refs[video]["sentences"])
                       if tiou(p["timestamp"], span) >= threshold]
            pairs[video] += matched or [(p["sentence"], DUMMY)]
    return pairs


def _tokenised(sentences: set[str]) -> dict[str, str]:
    """Each sentence, non-ASCII dropped, after PTB tokenisation (one Java run for all of them)."""
    ordered = sorted(sentences)
    if not ordered:
        return {}
    with java_stderr_shown_only_on_failure():
        done = PTBTokenizer().tokenize({str(i): [{"caption": _ascii(s)}] for i, s in enumerate(ordered)})
    return {s: done[str(i)][0] for i, s in enumerate(ordered)}


def _score_pairs(pairs: dict[str, list[tuple[str, str]]], tokens: dict[str, str], scorers) -> dict[str, float]:
    """Each metric per video over its pairs, then the mean over videos (0 for a video without any)."""
    per_video = []
    for video_pairs in pairs.values():
        if not video_pairs:
            per_video.append(np.zeros(len(METRICS)))
            continue
        res = {i: [tokens[p]] for i, (p, _) in enumerate(video_pairs)}
        gts = {i: [tokens[r]] for i, (_, r) in enumerate(video_pairs)}
        values = []
        for scorer in scorers:
            with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its n-gram statistics
                score, _ = scorer.compute_score(gts, res)
            values += score if isinstance(score, list) else [score]
        per_video.append(np.array(values, dtype=float))
    mean = np.mean(per_video, axis=0) if per_video else np.zeros(len(METRICS))
    return dict(zip(METRICS, map(float, mean)))


@functools.cache
def _scorers() -> tuple:
    """One set per process: METEOR keeps its Java process between calls (seconds to start)."""
    return Bleu(4), Meteor(), Rouge(), Cider()


def _detection(predictions: dict[str, list[dict]], references: list[dict[str, dict]], threshold: float,
               videos: list[str]) -> dict[str, float]:
    precision, recall = [], []
    for video in videos:
        best_p = best_r = 0.0
        spans = [p["timestamp"] for p in predictions.get(video, [])]
        for refs in references:
            if video not in refs:
                continue
            hits = np.array([[tiou(p, r) >= threshold for r in refs[video]["timestamps"]] for p in spans], dtype=bool)
            hits = hits.reshape(len(spans), len(refs[video]["timestamps"]))
            if len(spans):
                best_p = max(best_p, float(hits.any(1).mean()))
            if hits.shape[1]:
                best_r = max(best_r, float(hits.any(0).mean()))
        precision.append(best_p)
        recall.append(best_r)
    return {"precision": float(np.mean(precision)) if videos else 0.0, "recall": float(np.mean(recall)) if videos else 0.0}


def evaluate(predictions: dict[str, list[dict]], references: list[dict[str, dict]],
             tious: Sequence[float] = TIOUS) -> dict:
    """Scores per threshold and their mean over thresholds (see the module docstring)."""
    videos = sorted(set().union(*references)) if references else []
    pairs = {threshold: _pairs(predictions, references, threshold, videos) for threshold in tious}
    tokens = _tokenised({s for by_video in pairs.values() for video_pairs in by_video.values()
                         for pair in video_pairs for s in pair})
    scorers = _scorers()
    per_tiou = {}
    for threshold in tious:
        per_tiou[f"{threshold:g}"] = {**_score_pairs(pairs[threshold], tokens, scorers),
                                      **_detection(predictions, references, threshold, videos)}
    names = list(next(iter(per_tiou.values()))) if per_tiou else []
    mean = {name: float(np.mean([scores[name] for scores in per_tiou.values()])) for name in names}
    return {"protocol": "ActivityNet dense captioning (densevid_eval semantics), tIoU " + ", ".join(map(str, tious)),
            "meteor_version": f"meteor-1.5.jar (pycocoevalcap {version('pycocoevalcap')})",
            "videos": len(videos), "references": len(references), "mean": mean, "per_tiou": per_tiou}


def _threshold(text: str) -> float:
    value = float(text)
    if not 0.0 < value <= 1.0:  # NaN fails too
        raise argparse.ArgumentTypeError(f"{text!r} is not a tIoU threshold in (0, 1]")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m clipmemcap.evaluation.dense_protocol", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-s", "--submission", type=Path, required=True, help="predictions (the evaluator's format)")
    parser.add_argument("-r", "--references", type=Path, nargs="+", required=True,
                        help="annotation files, e.g. val_1.json val_2.json (pooled)")
    parser.add_argument("-t", "--tious", type=_threshold, nargs="+", default=list(TIOUS), help="tIoU thresholds in (0, 1]")
    parser.add_argument("-o", "--output", type=Path, help="write the scores here as JSON (default: stdout only)")
    args = parser.parse_args(argv)
    with reported(parser.prog):
        scores = evaluate(read_submission(args.submission), [read_references(p) for p in args.references], args.tious)
        text = json.dumps(scores, indent=2)
        if args.output:
            args.output.write_text(text + "\n")
    sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
