"""The captioner: a mapper's prefix, then GPT-2 (:class:`CaptionModel`), its batches, and how a
trained one is loaded back from a fine-tuning run's folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from clipmemcap.core.config import Config
from clipmemcap.core.devices import resolve_device
from clipmemcap.core.jsonio import read_json
from clipmemcap.core.layout import CAPTIONER, VOCABULARY, Layout
from clipmemcap.model.mappers import load_mapper
from clipmemcap.model.prefix_lm import PrefixLM, load_gpt2, load_tokenizer
from clipmemcap.model.safe_loading import read_config


@dataclass
class Batch:
    keys: list[tuple]
    frames: torch.Tensor  # [B, T, D]
    times: torch.Tensor  # [B, T]
    lengths: torch.Tensor  # [B]
    tokens: torch.Tensor  # [B, S]
    token_mask: torch.Tensor  # [B, S]
    events: torch.Tensor  # [B, T]: each frame's event number (0: none or unknown)

    def to(self, device) -> Batch:
        return Batch(self.keys, *(t.to(device) for t in (self.frames, self.times, self.lengths, self.tokens,
                                                         self.token_mask, self.events)))


class CaptionModel(nn.Module):
    """Mapper -> prefix -> GPT-2 loss."""

    def __init__(self, mapper: nn.Module, lm: PrefixLM):
        super().__init__()
        self.mapper, self.lm = mapper, lm

    def forward(self, batch: Batch) -> torch.Tensor:
        prefix = self.mapper(batch.frames, batch.times, batch.lengths, batch.events)
        return self.lm(prefix, batch.tokens, batch.token_mask)


def gpt2_source(cfg: Config, trained: Path):
    """GPT-2 as ``trained`` left it when it was trained there, else the configured one."""
    return trained / "gpt2" if (trained / "gpt2").exists() else cfg.model.lm


CAPTIONER_FORMAT = 1  # of captioner.json: what clipmemcap.evaluation.export writes
MAX_VOCABULARY_BYTES = 10_000_000  # vocabulary.json: GPT-2's 50,257 ids take 350 kB


def load_caption_model(cfg: Config, run_dir: Path) -> tuple[CaptionModel, object]:
    """(model, tokenizer) of a fine-tuning run's best weights, or of a captioner exported from
    one (:mod:`clipmemcap.evaluation.export`), in eval mode on the configured device. The folder
    may come from anyone: every file is checked before anything is allocated
    (:mod:`clipmemcap.model.safe_loading`)."""
    exported = (run_dir / CAPTIONER).exists()
    if exported:
        found = read_config(run_dir / CAPTIONER, "captioner file").get("format")
        if found != CAPTIONER_FORMAT:
            raise ValueError(f"{run_dir / CAPTIONER}: unknown captioner format {str(found)[:20]} (this clipmemcap "
                             f"reads format {CAPTIONER_FORMAT})")
    trained = run_dir if exported else run_dir / "best"
    if not (trained / "mapper").exists():
        raise FileNotFoundError(f"no fine-tuned model in {trained}: run the finetune stage ({run_dir.name}) first, "
                                "or pass an exported captioner's folder")
    tokenizer = load_tokenizer(run_dir / "tokenizer" if exported else cfg.model.tokenizer)
    # A frozen GPT-2 is not saved by fine-tuning: it is the one pre-training left (or the configured one).
    lm = gpt2_source(cfg, trained) if (trained / "gpt2").exists() else gpt2_source(cfg, Layout.of(cfg).pretrain / "best")
    vocabulary = (read_json(trained / VOCABULARY, MAX_VOCABULARY_BYTES, "vocabulary file", kind=list)
                  if (trained / VOCABULARY).exists() else None)
    gpt2 = load_gpt2(lm)
    try:
        prefix_lm = PrefixLM(gpt2, tokenizer.eos_token_id, vocabulary=vocabulary)
    except ValueError as err:
        raise ValueError(f"{trained / VOCABULARY}: {err}") from None
    model = CaptionModel(load_mapper(trained / "mapper"), prefix_lm)
    return model.to(resolve_device(cfg.finetune.train.device)).eval(), tokenizer


def stop_ids(cfg: Config, tokenizer) -> tuple[int, ...]:
    return tuple(tokenizer(".")["input_ids"]) if cfg.evaluate.stop_at_period else ()
