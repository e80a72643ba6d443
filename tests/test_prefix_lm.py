"""GPT-2 prefix LM with the real tokenizer files and a small random GPT2Config (no hub here)."""

import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config

from clipmemcap.model.prefix_lm import IGNORE, PrefixLM, load_gpt2, load_tokenizer
from conftest import GPT2_TINY, TOKENIZER




@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    tokenizer = load_tokenizer(TOKENIZER)
    gpt2 = load_gpt2(GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=2))
    return PrefixLM(gpt2, tokenizer.eos_token_id).eval(), tokenizer


def encode(tokenizer, captions):
    ids = [tokenizer(c)["input_ids"] for c in captions]
    T = max(map(len, ids))
    tokens = torch.tensor([i + [7] * (T - len(i)) for i in ids])
    mask = torch.tensor([[1] * len(i) + [0] * (T - len(i)) for i in ids])
    return tokens, mask


def test_real_tokenizer_files_load_and_an_empty_one_is_an_error(tmp_path):
    tokenizer = load_tokenizer(TOKENIZER)
    assert len(tokenizer) == 50257 and tokenizer("Hello world")["input_ids"] == [15496, 995]
    (tmp_path / "vocab.json").write_text("{}")
    shutil.copy(TOKENIZER / "merges.txt", tmp_path / "merges.txt")
    with pytest.raises(ValueError, match=str(tmp_path)):
        load_tokenizer(tmp_path)
    with pytest.raises(ValueError, match="'gpt2'"):  # offline hub: empty or missing, never silent
        load_tokenizer("gpt2")


def test_loss_covers_caption_and_end_of_text_only(lm):
    model, tokenizer = lm
    tokens, mask = encode(tokenizer, ["a dog runs on the beach", "a cat"])
    prefix = torch.randn(2, 4, 32)
    embeddings, attention, labels = model.inputs(prefix, tokens, mask)
    assert (labels[:, :4] == IGNORE).all()  # prefix positions are never targets
    assert labels[1, 4:].tolist()[:3] == tokens[1, :2].tolist() + [tokenizer.eos_token_id]
    assert (labels[1, 4 + 3 :] == IGNORE).all()  # padding after the end-of-text token
    with torch.no_grad():
        loss = model(prefix, tokens, mask)
        padded = tokens.masked_fill(mask == 0, 999)  # other padding tokens: the same loss
        assert torch.equal(loss, model(prefix, padded, mask))
        logits = model.gpt2(inputs_embeds=embeddings, attention_mask=attention).logits
    targets = labels[:, 1:] != IGNORE
    manual = F.cross_entropy(logits[:, :-1][targets], labels[:, 1:][targets])
    assert torch.allclose(loss, manual)
    assert targets.sum() == mask.sum() + 2  # every caption token plus one end-of-text per caption


def test_frozen_gpt2_stays_in_eval_mode_and_gets_no_gradient(lm):
    model, tokenizer = lm
    frozen = PrefixLM(model.gpt2, tokenizer.eos_token_id, frozen=True).train()
    assert not frozen.gpt2.training
    prefix = torch.randn(1, 4, 32, requires_grad=True)
    tokens, mask = encode(tokenizer, ["a bird"])
    frozen(prefix, tokens, mask).backward()
    assert prefix.grad is not None and all(p.grad is None for p in frozen.gpt2.parameters())


def test_gpt2_loads_from_a_local_folder(lm, tmp_path):
    model, _ = lm
    model.gpt2.save_pretrained(tmp_path / "gpt2")
    loaded = load_gpt2(tmp_path / "gpt2").eval()
    ids = torch.tensor([[15496, 995]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model.gpt2(ids).logits)


def test_random_gpt2_is_the_same_network_in_every_process():
    """torch seeds every process differently: random weights from a config must not depend on it
    (pre-training once drew a different GPT-2 on every run)."""
    code = ("import sys, torch; from clipmemcap.model.prefix_lm import load_gpt2; state = torch.random.get_rng_state(); "
            "m = load_gpt2(sys.argv[1]); assert torch.equal(state, torch.random.get_rng_state()); "
            "print(sum(p.double().sum().item() for p in m.parameters()))")
    sums = [subprocess.run([sys.executable, "-c", code, str(GPT2_TINY)], capture_output=True, text=True, check=True).stdout
            for _ in range(2)]
    assert sums[0] == sums[1] and sums[0].strip()
