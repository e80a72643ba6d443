"""Caption metrics with pycocoevalcap: corpus-level BLEU-1..4, METEOR, ROUGE-L and CIDEr-D over
all clips, after its PTB tokenisation (Java), and the per-sentence averages that the earlier
ClipMemCap attempt reported, labelled ``sentence_avg_*`` so nobody mistakes one for the other.

Predictions and references are dicts keyed by clip (``(video_id, segment)`` or an image id),
never lists matched by position; a key present on one side only is an error.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from collections.abc import Hashable, Iterator

import numpy as np
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer


def _tokenised(captions: dict[Hashable, list[str]]) -> dict[str, list[str]]:
    keyed = {str(i): [{"caption": c} for c in texts] for i, texts in enumerate(captions.values())}
    with java_stderr_shown_only_on_failure():  # it reports its speed on every call
        return PTBTokenizer().tokenize(keyed)


@contextlib.contextmanager
def java_stderr_shown_only_on_failure() -> Iterator[None]:
    """Hold what child processes write to stderr (file descriptor 2) while the block runs; pass it
    on only if the block fails, where it explains why."""
    sys.stderr.flush()
    with tempfile.TemporaryFile() as held:
        saved = os.dup(2)
        os.dup2(held.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            held.seek(0)
            sys.stderr.write(held.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def caption_metrics(predictions: dict[Hashable, str], references: dict[Hashable, list[str]]) -> dict[str, float]:
    """Corpus-level and per-sentence-average metrics of ``predictions`` against ``references``."""
    if predictions.keys() != references.keys():
        missing, extra = references.keys() - predictions.keys(), predictions.keys() - references.keys()
        raise ValueError(f"predictions and references differ: {len(missing)} clips without a prediction "
                         f"(e.g. {sorted(map(str, missing))[:3]}), {len(extra)} without references")
    keys = sorted(predictions, key=str)  # one order for both sides; the result does not depend on it
    hypotheses = _tokenised({k: [predictions[k]] for k in keys})
    truths = _tokenised({k: references[k] for k in keys})
    metrics: dict[str, float] = {}
    scorers = [(Bleu(4), ["bleu_1", "bleu_2", "bleu_3", "bleu_4"]), (Meteor(), ["meteor"]),
               (Rouge(), ["rouge_l"]), (Cider(), ["cider_d"])]
    for scorer, names in scorers:
        with contextlib.redirect_stdout(io.StringIO()):  # Bleu prints its n-gram statistics
            corpus, per_clip = scorer.compute_score(truths, hypotheses)
        corpus = corpus if isinstance(corpus, list) else [corpus]
        per_clip = per_clip if names[0].startswith("bleu") else [per_clip]
        for name, value, sentences in zip(names, corpus, per_clip):
            metrics[name] = float(value)
            metrics[f"sentence_avg_{name}"] = float(np.mean(sentences))
    return metrics


def dense_captioning_results(rows: list[dict]) -> dict:
    """Predictions in the official ActivityNet dense-captioning evaluator's format, from rows with
    ``video_id``, ``start``, ``end`` and ``caption`` (ground-truth segments)."""
    results: dict[str, list[dict]] = {}
    for row in sorted(rows, key=lambda r: (r["video_id"], r["start"], r["end"])):
        results.setdefault(row["video_id"], []).append(
            {"sentence": row["caption"], "timestamp": [float(row["start"]), float(row["end"])]})
    return {"version": "VERSION 1.0", "results": results,
            "external_data": {"used": True, "details": "CLIP image embeddings; GPT-2"}}
