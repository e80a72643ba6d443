"""The experiment's model stages, as the DVC stages call them: pretrain -> finetune -> evaluate.

    storage/models/pretrain/              COCO pre-training (train() output: best/, last/)
    storage/models/finetune/<run>-<seed>/ ActivityNet fine-tuning of one run (a mapper) and seed,
                                          started from pretrain's best weights
    storage/evaluation/<run>-<seed>/      predictions per test clip, also in the dense-captioning format
    metrics/runs/<run>-<seed>.json        its caption metrics (DVC metrics)
    reports/pretrain/, reports/finetune/<run>-<seed>/   dvclive logs (DVC plots)

:mod:`clipmemcap.report` gathers every run's evaluation into the experiment's results.

``clip_dim`` and ``embed_dim`` of a mapper always come from the data (the CLIP embedding size in
the dataset's manifest) and from GPT-2, whatever its config file says.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import torch

from clipmemcap.atomic import write_json
from clipmemcap.clip_data import ActivityNetClips, CocoCaptions, collate, frame_statistics
from clipmemcap.devices import resolve_device
from clipmemcap.config import Config
from clipmemcap.decoding import beam_search, captions
from clipmemcap.evaluation import caption_metrics, dense_captioning_results
from clipmemcap.mappers import MapperConfig, VideoTransformer, build_mapper, load_mapper, load_shared
from clipmemcap.prefix_lm import PrefixLM, load_gpt2, load_tokenizer
from clipmemcap.train import CaptionModel, train

log = logging.getLogger(__name__)
CLIP_SETTINGS = "clip.json"  # in a fine-tuning run's folder: the CLIP its training frames came from


def models_dir(cfg: Config) -> Path:
    return cfg.storage.root / "models"


def _clip_dim(dataset: Path) -> int:
    return json.loads((dataset / "manifest.json").read_text())["clip"]["embed_dim"]


def run_name(run: str, seed: int) -> str:
    """A fine-tuning run's folder name, as DVC names its matrix stages (``finetune@memorizing-0``)."""
    return f"{run}-{seed}"


def _model(cfg: Config, mapper: str, overrides: dict, seed: int, dataset: Path, gpt2_source, tokenizer) -> CaptionModel:
    gpt2 = load_gpt2(gpt2_source)
    mapper_cfg = MapperConfig.load(mapper, **{**overrides, "clip_dim": _clip_dim(dataset), "embed_dim": gpt2.config.n_embd})
    torch.manual_seed(seed)
    return CaptionModel(build_mapper(mapper_cfg), PrefixLM(gpt2, tokenizer.eos_token_id, frozen=not cfg.model.finetune_lm))


def _fingerprint(cfg: Config, model: CaptionModel, dataset: Path) -> dict:
    """What a checkpoint must match to be resumed."""
    return {"mapper": asdict(model.mapper.cfg), "model": cfg.model.model_dump(mode="json"),
            "data": json.loads((dataset / "manifest.json").read_text())["counts"]}


def pretrain(cfg: Config) -> dict:
    dataset, stage = cfg.storage.root / "coco", cfg.pretrain
    tokenizer = load_tokenizer(cfg.model.tokenizer)
    model = _model(cfg, stage.mapper, stage.mapper_overrides, stage.train.seed, dataset, cfg.model.lm, tokenizer)
    train_data = CocoCaptions(dataset, stage.train_splits)
    if isinstance(model.mapper, VideoTransformer):  # ClipCap's image mappers take raw embeddings
        model.mapper.set_frame_statistics(*frame_statistics(train_data))
    return train(model, train_data, CocoCaptions(dataset, stage.val_splits),
                 tokenizer, stage.train, models_dir(cfg) / "pretrain", live_dir=Path("reports/pretrain"),
                 fingerprint=_fingerprint(cfg, model, dataset))


def _gpt2_source(cfg: Config, trained: Path):
    """GPT-2 as ``trained`` left it when it was trained there, else the configured one."""
    return trained / "gpt2" if (trained / "gpt2").exists() else cfg.model.lm


def initial_finetune_model(cfg: Config, run: str, seed: int, tokenizer=None) -> tuple[CaptionModel, list[str]]:
    """The fine-tuning model before training: GPT-2 as pre-training left it (when it was trained
    there), and every mapper tensor that the pre-trained mapper shares by name and shape."""
    pretrained = models_dir(cfg) / "pretrain" / "best"
    if not (pretrained / "mapper").exists():
        raise FileNotFoundError(f"no pre-trained model in {pretrained}: run the pretrain stage first")
    tokenizer = tokenizer or load_tokenizer(cfg.model.tokenizer)
    mapper, overrides, _ = cfg.finetune.run(run, seed)
    model = _model(cfg, mapper, overrides, seed, cfg.storage.root / "activitynet", _gpt2_source(cfg, pretrained), tokenizer)
    copied = load_shared(model.mapper, load_mapper(pretrained / "mapper").state_dict())
    if not copied:
        raise ValueError(f"the pre-trained {pretrained / 'mapper'} shares no weights with {mapper}")
    log.info("initialised %d mapper tensors from %s", len(copied), pretrained)
    return model, copied


def finetune(cfg: Config, run: str, seed: int) -> dict:
    dataset, out = cfg.storage.root / "activitynet", finetune_dir(cfg, run, seed)
    tokenizer = load_tokenizer(cfg.model.tokenizer)
    model, _ = initial_finetune_model(cfg, run, seed, tokenizer)
    metrics = train(model, ActivityNetClips(dataset, "train"), ActivityNetClips(dataset, "val"), tokenizer,
                    cfg.finetune.run(run, seed)[2], out, live_dir=Path("reports/finetune") / run_name(run, seed),
                    fingerprint=_fingerprint(cfg, model, dataset))
    # The CLIP settings the model was trained on travel with it: `clipmemcap caption` refuses
    # frames embedded by any other CLIP.
    write_json(out / CLIP_SETTINGS, json.loads((dataset / "manifest.json").read_text())["clip"])
    return metrics


def finetune_dir(cfg: Config, run: str, seed: int) -> Path:
    return models_dir(cfg) / "finetune" / run_name(run, seed)


def load_caption_model(cfg: Config, run_dir: Path) -> tuple[CaptionModel, object]:
    """(model, tokenizer) of a fine-tuning run's best weights, in eval mode on the configured device."""
    trained = run_dir / "best"
    if not (trained / "mapper").exists():
        raise FileNotFoundError(f"no fine-tuned model in {trained}: run the finetune stage ({run_dir.name}) first")
    tokenizer = load_tokenizer(cfg.model.tokenizer)
    # A frozen GPT-2 is not saved by fine-tuning: it is the one pre-training left (or the configured one).
    gpt2_source = trained / "gpt2" if (trained / "gpt2").exists() else _gpt2_source(cfg, models_dir(cfg) / "pretrain" / "best")
    model = CaptionModel(load_mapper(trained / "mapper"), PrefixLM(load_gpt2(gpt2_source), tokenizer.eos_token_id))
    return model.to(resolve_device(cfg.finetune.train.device)).eval(), tokenizer


def stop_ids(cfg: Config, tokenizer) -> tuple[int, ...]:
    return tuple(tokenizer(".")["input_ids"]) if cfg.evaluate.stop_at_period else ()


def evaluation_dir(cfg: Config, run: str, seed: int) -> Path:
    return cfg.storage.root / "evaluation" / run_name(run, seed)


def run_metrics_path(run: str, seed: int) -> Path:
    """One run's caption metrics (DVC metrics, kept in git)."""
    return Path("metrics/runs") / f"{run_name(run, seed)}.json"


def evaluate(cfg: Config, run: str, seed: int) -> dict:
    """Decode every test clip with the run's best fine-tuned weights; write predictions and metrics."""
    model, tokenizer = load_caption_model(cfg, finetune_dir(cfg, run, seed))
    device, stops = next(model.parameters()).device, stop_ids(cfg, tokenizer)
    clips = ActivityNetClips(cfg.storage.root / "activitynet", "test")
    rows = []
    for first in range(0, len(clips), cfg.evaluate.batch_size):
        indices = range(first, min(len(clips), first + cfg.evaluate.batch_size))
        batch = collate([clips[i] for i in indices], tokenizer, max_tokens=1)
        with torch.inference_mode():
            prefix = model.mapper(batch.frames.to(device), batch.times.to(device), batch.lengths.to(device))
        texts = captions(tokenizer, beam_search(model.lm, prefix, cfg.evaluate.beam, cfg.evaluate.max_tokens, stops))
        for i, frames, text in zip(indices, batch.lengths.tolist(), texts):
            segment = clips.rows[i]
            rows.append({"video_id": segment["video_id"], "segment": segment["segment"], "start": segment["start"],
                         "end": segment["end"], "frames": frames, "prediction": text, "reference": segment["caption"]})
    metrics = caption_metrics({(r["video_id"], r["segment"]): r["prediction"] for r in rows},
                              {(r["video_id"], r["segment"]): [r["reference"]] for r in rows})
    metrics = {**metrics, "clips": len(rows)}
    out = evaluation_dir(cfg, run, seed)
    write_json(out / "predictions.json", rows)
    write_json(out / "dense_captions.json",
               dense_captioning_results([{**r, "caption": r["prediction"]} for r in rows]))
    write_json(run_metrics_path(run, seed), metrics)
    return metrics
