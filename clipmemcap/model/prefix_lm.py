"""GPT-2 as a prefix language model: L prefix embeddings, then the caption's tokens.

The loss covers the caption tokens and one final end-of-text token; prefix positions and padding
are never targets. GPT-2 is loaded by hub name, from a local folder, or built from a config
(random weights); it can be frozen, in which case it stays in eval mode whatever ``train()`` says.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast
from transformers.utils import logging as hf_logging

IGNORE = -100  # label of positions that are not targets


def load_tokenizer(source: str | Path) -> GPT2TokenizerFast:
    """From a folder with ``vocab.json`` + ``merges.txt``, or a hub name. Offline, transformers
    can return an *empty* tokenizer instead of failing, so an empty one is an error here."""
    folder = Path(source)
    try:
        if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
            tokenizer = GPT2TokenizerFast(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"))
        else:
            tokenizer = GPT2TokenizerFast.from_pretrained(str(source))
    except Exception as err:  # tokenizers and the hub raise many types; name the source once
        raise ValueError(f"cannot load a GPT-2 tokenizer from {source!r}: {err}") from err
    if len(tokenizer) < 256 or tokenizer.eos_token_id is None or not tokenizer("a cat")["input_ids"]:
        raise ValueError(f"GPT-2 tokenizer from {source!r} is empty or broken ({len(tokenizer)} tokens)")
    return tokenizer


def load_gpt2(source: str | Path | GPT2Config) -> GPT2LMHeadModel:
    """Pretrained weights by hub name or local folder; random weights from a GPT2Config or the
    path of one saved as JSON. Random weights are always the same for the same config (seed 0,
    without touching the caller's RNG): torch seeds each process differently, and every stage
    and every re-run must build the same network."""
    if str(source).endswith(".json"):
        source = GPT2Config.from_json_file(str(source))
    if isinstance(source, GPT2Config):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return GPT2LMHeadModel(source)
    with _no_progress_bars():
        return GPT2LMHeadModel.from_pretrained(str(source))


def save_gpt2(gpt2: GPT2LMHeadModel, folder: Path) -> None:
    with _no_progress_bars():
        gpt2.save_pretrained(folder)


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    """transformers draws a bar for every load and save of a small local model: stderr noise in
    every stage and every `clipmemcap caption`, with nothing to act on."""
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


class PrefixLM(nn.Module):
    def __init__(self, gpt2: GPT2LMHeadModel, eos_token_id: int, frozen: bool = False):
        super().__init__()
        self.gpt2, self.eos_token_id, self.frozen = gpt2, eos_token_id, frozen
        self.embed_dim = gpt2.config.n_embd
        if frozen:
            self.gpt2.requires_grad_(False)
            self.gpt2.eval()

    def train(self, mode: bool = True) -> PrefixLM:
        super().train(mode)
        if self.frozen:  # dropout stays off in a frozen GPT-2, as in ClipCap
            self.gpt2.eval()
        return self

    def inputs(self, prefix: torch.Tensor, tokens: torch.Tensor, token_mask: torch.Tensor):
        """prefix [B, L, E]; tokens [B, T] (caption, padded); token_mask [B, T] (1 = real token).
        Returns embeddings [B, L+T+1, E], attention mask and labels with the end-of-text token
        placed right after each caption's last real token."""
        B, L, _ = prefix.shape
        lengths = token_mask.sum(1)  # [B]
        tokens = torch.cat([tokens, tokens.new_full((B, 1), self.eos_token_id)], 1)  # [B, T+1]
        mask = torch.cat([token_mask, token_mask.new_zeros(B, 1)], 1)
        rows = torch.arange(B, device=tokens.device)
        tokens[rows, lengths] = self.eos_token_id
        mask[rows, lengths] = 1
        embeddings = torch.cat([prefix, self.gpt2.transformer.wte(tokens * mask)], 1)
        attention = torch.cat([mask.new_ones(B, L), mask], 1)
        labels = torch.cat([tokens.new_full((B, L), IGNORE), tokens.masked_fill(mask == 0, IGNORE)], 1)
        return embeddings, attention, labels

    def forward(self, prefix: torch.Tensor, tokens: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy over caption tokens and the end-of-text token."""
        embeddings, attention, labels = self.inputs(prefix, tokens, token_mask)
        hidden = self.gpt2.transformer(inputs_embeds=embeddings, attention_mask=attention).last_hidden_state  # [B, S, E]
        targets = labels[:, 1:]
        scored = targets != IGNORE  # [B, S-1]: only these positions need GPT-2's 50k-way head
        logits = self.gpt2.lm_head(hidden[:, :-1][scored])  # [n, V]
        return F.cross_entropy(logits, targets[scored])
