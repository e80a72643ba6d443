"""GPT-2 as a prefix language model: L prefix embeddings, then the caption's tokens.

The loss covers the caption tokens and one final end-of-text token; prefix positions and padding
are never targets. GPT-2 is loaded by hub name, from a local folder, or built from a config
(random weights); it can be frozen, in which case it stays in eval mode whatever ``train()`` says.

With a ``vocabulary`` (sorted token ids: the tokens of the training captions, see
:func:`caption_vocabulary`), the output layer scores only those tokens: the same weights (rows of
GPT-2's tied embedding), the same logits at those ids, so training and decoding can never produce
another token. Captions that use ~20 distinct tokens then do not pay for GPT-2's 50,257-way layer,
which is most of a small model's step. The tokenizer and GPT-2's weights are unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast
from transformers.utils import logging as hf_logging

from clipmemcap.core.jsonio import read_bounded
from clipmemcap.model.safe_loading import MAX_PARAMETERS, check_size, read_config, stored_elements

IGNORE = -100  # label of positions that are not targets
MAX_TOKENIZER_BYTES = 50_000_000  # GPT-2's vocab.json is 1 MB
# Bounds of a GPT-2 config's sizes: far beyond GPT-2 XL (48 layers of 1,600, 1,024 positions)
GPT2_BOUNDS = {"n_layer": (1, 256), "n_embd": (1, 16_384), "n_head": (1, 256), "n_positions": (1, 65_536),
               "vocab_size": (1, 1_000_000), "n_inner": (1, 65_536)}


def load_tokenizer(source: str | Path) -> GPT2TokenizerFast:
    """From a folder with ``vocab.json`` + ``merges.txt`` (regular files of bounded size: the
    folder may be a shared captioner's), or a hub name. Offline, transformers can return an
    *empty* tokenizer instead of failing, so an empty one is an error here."""
    folder = Path(source)
    try:
        if folder.is_dir():
            for name in ("vocab.json", "merges.txt"):
                read_bounded(folder / name, MAX_TOKENIZER_BYTES, "tokenizer file")
            tokenizer = GPT2TokenizerFast(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"))
        else:
            tokenizer = GPT2TokenizerFast.from_pretrained(str(source))
    except Exception as err:  # tokenizers and the hub raise many types; name the source once
        raise ValueError(f"cannot load a GPT-2 tokenizer from {str(source)!r}: {err}") from err
    if len(tokenizer) < 256 or tokenizer.eos_token_id is None or not tokenizer("a cat")["input_ids"]:
        raise ValueError(f"GPT-2 tokenizer from {str(source)!r} is empty or broken ({len(tokenizer)} tokens)")
    return tokenizer


def gpt2_config(fields: dict, source: str | Path) -> GPT2Config:
    """A GPT2Config from a config file's fields, its sizes bounded first (the file may come from
    a shared captioner: ``n_layer: 1000000`` must fail here, not in an allocation)."""
    defaults = GPT2Config()
    for name, (low, high) in GPT2_BOUNDS.items():
        value = fields.get(name, getattr(defaults, name))
        if value is None and name == "n_inner":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{source}: GPT-2 {name} must be an integer in [{low}, {high:,}], not {str(value)[:40]}")
    if fields.get("n_embd", defaults.n_embd) % fields.get("n_head", defaults.n_head):
        raise ValueError(f"{source}: GPT-2 n_embd is not divisible by n_head")
    try:
        return GPT2Config.from_dict(fields)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: not a GPT-2 config ({err})") from None


def load_gpt2(source: str | Path | GPT2Config) -> GPT2LMHeadModel:
    """Pretrained weights by hub name or local folder (safetensors only; the folder is checked
    as untrusted input, :mod:`clipmemcap.model.safe_loading`); random weights from a GPT2Config
    or the path of one saved as JSON. Random weights are always the same for the same config
    (seed 0, without touching the caller's RNG): torch seeds each process differently, and every
    stage and every re-run must build the same network."""
    if str(source).endswith(".json"):
        source = gpt2_config(read_config(Path(source), "GPT-2 config"), source)
    if isinstance(source, GPT2Config):
        check_size(lambda: GPT2LMHeadModel(source), MAX_PARAMETERS, f"GPT-2 of {source.n_layer} layers of {source.n_embd}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return GPT2LMHeadModel(source)
    folder = Path(source)
    if not folder.is_dir():  # a hub name
        with _no_progress_bars():
            return GPT2LMHeadModel.from_pretrained(str(source))
    config = gpt2_config(read_config(folder / "config.json", "GPT-2 config"), folder / "config.json")
    needed = check_size(lambda: GPT2LMHeadModel(config), MAX_PARAMETERS, f"{folder}: GPT-2 of {config.n_layer} layers "
                        f"of {config.n_embd}")
    stored = stored_elements(folder / "model.safetensors")
    if stored < needed:
        raise ValueError(f"{folder / 'model.safetensors'} holds {stored:,} numbers; its config describes {needed:,} parameters")
    with _no_progress_bars():
        gpt2, info = GPT2LMHeadModel.from_pretrained(str(folder), use_safetensors=True, output_loading_info=True)
    if info["missing_keys"] or info["mismatched_keys"]:
        raise ValueError(f"{folder / 'model.safetensors'} lacks weights of its config's GPT-2: "
                         f"{', '.join(map(str, [*info['missing_keys'], *info['mismatched_keys']][:3]))}")
    return gpt2


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


def caption_vocabulary(tokenizer, captions: Iterable[str], extra: Iterable[int] = ()) -> list[int]:
    """Sorted ids of every token of ``captions``, the end-of-text token and ``extra`` (stop ids)."""
    ids = {tokenizer.eos_token_id, *extra}
    for sequence in tokenizer(list(captions))["input_ids"]:
        ids.update(sequence)
    return sorted(ids)


class PrefixLM(nn.Module):
    def __init__(self, gpt2: GPT2LMHeadModel, eos_token_id: int, frozen: bool = False,
                 vocabulary: list[int] | None = None):
        super().__init__()
        self.gpt2, self.eos_token_id, self.frozen = gpt2, eos_token_id, frozen
        self.embed_dim = gpt2.config.n_embd
        # [K] sorted token ids the output layer scores; None: all of GPT-2's
        if vocabulary is not None:
            size = gpt2.config.vocab_size
            if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < size for i in vocabulary):
                raise ValueError(f"a restricted vocabulary holds token ids of GPT-2's {size:,} only")
            if len(set(vocabulary)) != len(vocabulary) or eos_token_id not in vocabulary:
                raise ValueError("a restricted vocabulary holds each token id once, the end-of-text token among them")
        vocab = None if vocabulary is None else torch.tensor(sorted(vocabulary), dtype=torch.long)
        self.register_buffer("vocabulary", vocab, persistent=False)
        if frozen:
            self.gpt2.requires_grad_(False)
            self.gpt2.eval()

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [..., E] -> logits [..., K] over the vocabulary (K = V without one)."""
        if self.vocabulary is None:
            return self.gpt2.lm_head(hidden)
        return F.linear(hidden, self.gpt2.lm_head.weight[self.vocabulary])

    def token_ids(self, index: torch.Tensor) -> torch.Tensor:
        """Positions in :meth:`logits` -> token ids."""
        return index if self.vocabulary is None else self.vocabulary[index]

    def positions(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (in the vocabulary) -> their positions in :meth:`logits`."""
        return ids if self.vocabulary is None else torch.searchsorted(self.vocabulary, ids)

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
        scored = targets != IGNORE  # [B, S-1]: only these positions need the output layer
        logits = self.logits(hidden[:, :-1][scored])  # [n, K]
        return F.cross_entropy(logits, self.positions(targets[scored]))
