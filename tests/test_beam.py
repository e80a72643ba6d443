"""Beam search: the KV-cached loop returns what the recompute-everything loop returns."""

import pytest
import torch
from transformers import GPT2Config

from clipmemcap.model.beam import beam_search, captions
from clipmemcap.model.prefix_lm import PrefixLM, load_gpt2, load_tokenizer
from conftest import TOKENIZER


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    tokenizer = load_tokenizer(TOKENIZER)
    # A wide initialisation makes the random model's distributions peaked, so no near-tie can
    # make two correct implementations disagree by float rounding.
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=96, n_embd=32, n_layer=2, n_head=2, initializer_range=0.3)
    return PrefixLM(load_gpt2(config), tokenizer.eos_token_id).eval(), tokenizer


@pytest.mark.parametrize("beam", [1, 5])
def test_cached_beam_search_equals_the_recomputing_loop(lm, beam):
    model, tokenizer = lm
    prefix = torch.randn(4, 5, 32, generator=torch.Generator().manual_seed(1))
    dot = tokenizer(".")["input_ids"][0]
    cached = beam_search(model, prefix, beam=beam, max_tokens=20, stop_ids=(dot,))
    reference = beam_search(model, prefix, beam=beam, max_tokens=20, stop_ids=(dot,), use_cache=False)
    assert cached == reference
    assert all(1 <= len(seq) <= 20 for seq in cached)
    alone = [beam_search(model, prefix[i : i + 1], beam=beam, max_tokens=20, stop_ids=(dot,))[0] for i in range(4)]
    assert cached == alone  # batching clips changes nothing


def test_greedy_is_the_argmax_at_every_step(lm):
    model, _ = lm
    prefix = torch.randn(1, 5, 32, generator=torch.Generator().manual_seed(2))
    tokens = beam_search(model, prefix, beam=1, max_tokens=8)[0]
    embeddings = prefix
    with torch.no_grad():
        for token in tokens:
            assert model.gpt2(inputs_embeds=embeddings).logits[0, -1].argmax().item() == token
            embeddings = torch.cat([embeddings, model.gpt2.transformer.wte(torch.tensor([[token]]))], 1)


def test_decoded_text_drops_end_of_text(lm):
    _, tokenizer = lm
    assert captions(tokenizer, [[64, 3797, 13, tokenizer.eos_token_id]]) == ["a cat."]
