"""The evaluate stage: caption every test clip with one run's best fine-tuned weights, score it.

    python -m clipmemcap.evaluation --run memorizing --seed 0

Writes ``<root>/evaluation/<run>-<seed>/predictions.json`` (one row per clip: ids, times, frame
count, prediction, reference), ``dense_captions.json`` (the dense-captioning evaluator's format)
and the caption metrics to ``metrics/runs/<run>-<seed>.json``; then exports the run to share
(``<root>/captioners/<run>-<seed>/``, :mod:`clipmemcap.evaluation.export`). A memorizing run is also decoded
with its memory shut (``evaluate.gate_shut``: every kNN gate at 0, local attention only, the same
weights): ``predictions_gate_shut.json`` and the metrics' ``gate_shut`` entry. Each further test
set of the benchmark (``benchmark.test_lengths``: clips of other lengths) is captioned too:
``predictions_test-<name>.json``, scored by the report. The report lists it
as the run ``<run>-gate-shut``: what the run's weights recognise without retrieval. On the
benchmark, a memorizing run's metrics also say what its memory read
(:mod:`clipmemcap.model.memory.diagnostics`: ``retrieval_recall``, ``retrieval_base_rate``, ...).

With ``evaluate.dense_protocol`` (the real experiment), the predictions are also scored by
ActivityNet's official protocol (:mod:`clipmemcap.evaluation.dense_protocol`) against the test
videos' val_1 segments and their val_2 annotations (``references/val_2.parquet``): pooled as the
evaluator's ``-r val_1.json val_2.json`` does (metrics ``protocol_<metric>``), against each file
alone (``protocol_val_1_<metric>``, ``protocol_val_2_<metric>``) and the mean of those two, as MDVC
and BMT report (``protocol_mean_<metric>``); the whole output, per tIoU threshold, in
``dense_protocol.json``.
"""

from __future__ import annotations

import contextlib
import json

import torch
from tqdm import tqdm

from clipmemcap.core.atomic import write_json
from clipmemcap.core.config import Config, add_run_arguments, run_and_seed, run_command, settings_parser
from clipmemcap.core.layout import Layout
from clipmemcap.evaluation import dense_protocol
from clipmemcap.evaluation.export import export_captioner
from clipmemcap.evaluation.metrics import caption_metrics, dense_captioning_results
from clipmemcap.model.beam import beam_search, captions
from clipmemcap.model.captioner import load_caption_model, stop_ids
from clipmemcap.model.mappers import memory_shut, step_by_step
from clipmemcap.model.memory.diagnostics import ReadTotals, recording
from clipmemcap.training.datasets import ActivityNetClips, EventClips, OracleClips, collate, reference_rows
from clipmemcap.training.stages import run_clips


def predict(cfg: Config, model, tokenizer, clips: ActivityNetClips | EventClips | OracleClips,
            reads: ReadTotals | None = None) -> list[dict]:
    """Beam-search captions of every clip: one row per clip; with ``reads``, what the memory read
    is added to it (the clips' events must be known: :class:`EventClips`)."""
    device, stops = next(model.parameters()).device, stop_ids(cfg, tokenizer)
    rows = []
    for first in tqdm(range(0, len(clips), cfg.evaluate.batch_size), desc="captioning", unit="batch", disable=None):
        indices = range(first, min(len(clips), first + cfg.evaluate.batch_size))
        batch = collate([clips[i] for i in indices], tokenizer, max_tokens=1).to(device)
        with torch.inference_mode(), (recording(model.mapper) if reads else contextlib.nullcontext()) as records:
            prefix = model.mapper(batch.frames, batch.times, batch.lengths, batch.events)
        if reads:
            reads.add(records)
        texts = captions(tokenizer, beam_search(model.lm, prefix, cfg.evaluate.beam, cfg.evaluate.max_tokens, stops))
        for i, frames, text in zip(indices, batch.lengths.tolist(), texts):
            segment = clips.rows[i]
            rows.append({"video_id": segment["video_id"], "segment": segment["segment"], "start": segment["start"],
                         "end": segment["end"], "frames": frames, "prediction": text, "reference": segment["caption"]})
    return rows


def score(rows: list[dict]) -> dict:
    metrics = caption_metrics({(r["video_id"], r["segment"]): r["prediction"] for r in rows},
                              {(r["video_id"], r["segment"]): [r["reference"]] for r in rows})
    return {**metrics, "clips": len(rows)}


PER_FILE = ("bleu_3", "bleu_4", "meteor", "cider")  # the published tables' columns


def official_protocol(rows: list[dict], val_2: list[dict]) -> dict[str, dict]:
    """The official scores of the predictions in ``rows`` (whose references are val_1's) against
    val_1 and val_2 pooled, and against each alone."""
    submission = dense_captioning_results([{**r, "caption": r["prediction"]} for r in rows])["results"]
    first = dense_protocol.references_from_rows([{**r, "caption": r["reference"]} for r in rows])
    second = dense_protocol.references_from_rows(val_2)
    files = {"val_1+val_2": [first, second], "val_1": [first], "val_2": [second]}
    return {name: dense_protocol.evaluate(submission, references) for name, references in files.items()}


def protocol_metrics(scores: dict[str, dict]) -> dict[str, float]:
    """The official scores' means over thresholds, as flat metrics."""
    flat = {f"protocol_{k}": v for k, v in scores["val_1+val_2"]["mean"].items()}
    for name in ("val_1", "val_2"):
        flat |= {f"protocol_{name}_{k}": scores[name]["mean"][k] for k in PER_FILE}
    # what MDVC and BMT report: the mean of the scores against each file
    flat |= {f"protocol_mean_{k}": (flat[f"protocol_val_1_{k}"] + flat[f"protocol_val_2_{k}"]) / 2 for k in PER_FILE}
    return flat


def evaluate(cfg: Config, run: str, seed: int) -> dict:
    layout = Layout.of(cfg)
    model, tokenizer = load_caption_model(cfg, layout.finetune(run, seed))
    clips = run_clips(cfg, run, "test")
    # what the memory read, where the clips' events are known (the benchmark)
    memory = model.mapper.cfg.kind == "memorizing" and model.mapper.cfg.memory_backend == "torch"
    reads = ReadTotals() if memory and isinstance(clips, EventClips) else None
    rows = predict(cfg, model, tokenizer, clips, reads)
    metrics = score(rows) | (reads.metrics() if reads else {})
    write_json(layout.predictions(run, seed), rows)
    write_json(layout.evaluation(run, seed) / "dense_captions.json",
               dense_captioning_results([{**r, "caption": r["prediction"]} for r in rows]))
    if cfg.evaluate.dense_protocol:
        official = official_protocol(rows, reference_rows(layout.activitynet, "val_2"))
        write_json(layout.evaluation(run, seed) / "dense_protocol.json", official)
        metrics |= protocol_metrics(official)
    if cfg.evaluate.gate_shut and model.mapper.cfg.kind == "memorizing":
        with memory_shut(model.mapper):
            shut = predict(cfg, model, tokenizer, clips)
        write_json(layout.predictions(run, seed, gate_shut=True), shut)
        metrics["gate_shut"] = score(shut)
    # The further test sets: clips of other lengths (slot accuracy: the report), chunk after chunk, so
    # that minutes-long clips cost time and memory linear in their length.
    with step_by_step(model.mapper):
        for split in cfg.benchmark.test_sets():
            write_json(layout.predictions(run, seed, split=split), predict(cfg, model, tokenizer, run_clips(cfg, run, split)))
    write_json(layout.run_metrics(run, seed), metrics)
    export_captioner(cfg, run, seed, metrics)
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = settings_parser(__doc__, prog="python -m clipmemcap.evaluation")
    add_run_arguments(parser, "evaluate")
    run_command(parser, lambda args, cfg: print(json.dumps(evaluate(cfg, *run_and_seed(args, "evaluate")), indent=2)),
                argv)
