"""The training stages, as DVC runs them: COCO pre-training, then ActivityNet fine-tuning of each
run (a mapper) and seed, started from pre-training's best weights.

    python -m clipmemcap.training pretrain
    python -m clipmemcap.training finetune --run memorizing --seed 0

``clip_dim`` and ``embed_dim`` of a mapper always come from the data (the CLIP embedding size in
the dataset's manifest) and from GPT-2, whatever its config file says.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import torch

from clipmemcap.core.atomic import write_json
from clipmemcap.core.config import Config, add_run_arguments, run_and_seed, run_command, settings_parser
from clipmemcap.core.layout import CLIP_SETTINGS, Layout, read_manifest
from clipmemcap.model.captioner import CaptionModel, gpt2_source, stop_ids
from clipmemcap.model.mappers import MapperConfig, VideoTransformer, build_mapper, load_mapper, load_shared
from clipmemcap.model.prefix_lm import PrefixLM, caption_vocabulary, load_gpt2, load_tokenizer
from clipmemcap.sources.benchmark import event_starts
from clipmemcap.training.datasets import ActivityNetClips, CocoCaptions, EventClips, OracleClips, frame_statistics
from clipmemcap.training.loop import train

log = logging.getLogger(__name__)


def _vocabulary(cfg: Config, tokenizer, *datasets) -> list[int] | None:
    """The tokens the output layer scores (``model.vocabulary``): those of the stage's training
    and validation captions and the stop tokens, or all of GPT-2's (None)."""
    if cfg.model.vocabulary == "full":
        return None
    captions = (row["caption"] for data in datasets for row in data.rows)
    return caption_vocabulary(tokenizer, captions, stop_ids(cfg, tokenizer))


def _model(cfg: Config, mapper: str, overrides: dict, seed: int, dataset: Path, gpt2, tokenizer,
           vocabulary: list[int] | None) -> CaptionModel:
    gpt2 = load_gpt2(gpt2)
    clip_dim = read_manifest(dataset)["clip"]["embed_dim"]
    mapper_cfg = MapperConfig.load(mapper, **{**overrides, "clip_dim": clip_dim, "embed_dim": gpt2.config.n_embd})
    torch.manual_seed(seed)
    lm = PrefixLM(gpt2, tokenizer.eos_token_id, frozen=not cfg.model.finetune_lm, vocabulary=vocabulary)
    return CaptionModel(build_mapper(mapper_cfg), lm)


def _fingerprint(cfg: Config, model: CaptionModel, dataset: Path) -> dict:
    """What a checkpoint must match to be resumed."""
    return {"mapper": asdict(model.mapper.cfg), "model": cfg.model.model_dump(mode="json"),
            "data": read_manifest(dataset)["counts"]}


def pretrain(cfg: Config) -> dict:
    layout, stage = Layout.of(cfg), cfg.pretrain
    coco = layout.coco
    tokenizer = load_tokenizer(cfg.model.tokenizer)
    train_data, val_data = CocoCaptions(coco, stage.train_splits), CocoCaptions(coco, stage.val_splits)
    model = _model(cfg, stage.mapper, stage.mapper_overrides, stage.train.seed, coco.out, cfg.model.lm, tokenizer,
                   _vocabulary(cfg, tokenizer, train_data, val_data))
    if isinstance(model.mapper, VideoTransformer):  # ClipCap's image mappers take raw embeddings
        model.mapper.set_frame_statistics(*frame_statistics(train_data))
    return train(model, train_data, val_data, tokenizer, stage.train, layout.pretrain,
                 live_dir=layout.pretrain_logs, fingerprint=_fingerprint(cfg, model, coco.out))


def run_clips(cfg: Config, run: str, split: str) -> ActivityNetClips | EventClips | OracleClips:
    """The clips of ``split`` as ``run`` sees them: every frame, or its oracle frames (benchmark
    only); on the benchmark every frame with its event (a memory's oracle read, the diagnostics)."""
    clips = ActivityNetClips(Layout.of(cfg).activitynet, split)
    mapper, overrides, _ = cfg.finetune.run(run, 0)
    if cfg.finetune.runs[run].frames == "all":
        if not cfg.benchmark.build:
            return clips
        return EventClips(clips, event_starts(cfg.benchmark, cfg.activitynet.subset), cfg.benchmark.event_s)
    window = MapperConfig.load(mapper, **overrides).window
    return OracleClips(clips, event_starts(cfg.benchmark, cfg.activitynet.subset), cfg.benchmark.event_s, window)


def initial_finetune_model(cfg: Config, run: str, seed: int, tokenizer=None,
                           vocabulary: list[int] | None = None) -> tuple[CaptionModel, list[str]]:
    """The fine-tuning model before training: GPT-2 as pre-training left it (when it was trained
    there), and every mapper tensor that the pre-trained mapper shares by name and shape."""
    layout = Layout.of(cfg)
    pretrained = layout.pretrain / "best"
    if not (pretrained / "mapper").exists():
        raise FileNotFoundError(f"no pre-trained model in {pretrained}: run the pretrain stage first")
    tokenizer = tokenizer or load_tokenizer(cfg.model.tokenizer)
    mapper, overrides, _ = cfg.finetune.run(run, seed)
    model = _model(cfg, mapper, overrides, seed, layout.activitynet.out, gpt2_source(cfg, pretrained), tokenizer,
                   vocabulary)
    copied = load_shared(model.mapper, load_mapper(pretrained / "mapper").state_dict())
    if not copied:
        raise ValueError(f"the pre-trained {pretrained / 'mapper'} shares no weights with {mapper}")
    log.info("initialised %d mapper tensors from %s", len(copied), pretrained)
    return model, copied


def finetune(cfg: Config, run: str, seed: int) -> dict:
    layout = Layout.of(cfg)
    data, out = layout.activitynet, layout.finetune(run, seed)
    tokenizer = load_tokenizer(cfg.model.tokenizer)
    train_data, val_data = run_clips(cfg, run, "train"), run_clips(cfg, run, "val")
    model, _ = initial_finetune_model(cfg, run, seed, tokenizer, _vocabulary(cfg, tokenizer, train_data, val_data))
    metrics = train(model, train_data, val_data, tokenizer,
                    cfg.finetune.run(run, seed)[2], out, live_dir=layout.finetune_logs(run, seed),
                    fingerprint=_fingerprint(cfg, model, data.out))
    # The CLIP settings the model was trained on travel with it: `clipmemcap caption` refuses
    # frames embedded by any other CLIP.
    write_json(out / CLIP_SETTINGS, read_manifest(data.out)["clip"])
    return metrics


def main(argv: list[str] | None = None) -> None:
    parser = settings_parser(__doc__, prog="python -m clipmemcap.training")
    parser.add_argument("stage", choices=["pretrain", "finetune"])
    add_run_arguments(parser, "finetune")

    def work(args, cfg) -> None:
        if args.stage == "pretrain":
            print(json.dumps(pretrain(cfg), indent=2))
        else:
            print(json.dumps(finetune(cfg, *run_and_seed(args, "finetune")), indent=2))

    run_command(parser, work, argv)
