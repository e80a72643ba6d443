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


CAPTIONS = ["a red circle, then a blue square.", "a green triangle, then a yellow circle."]


def restricted(lm):
    from clipmemcap.model.prefix_lm import caption_vocabulary

    model, tokenizer = lm
    vocabulary = caption_vocabulary(tokenizer, CAPTIONS, extra=tokenizer(".")["input_ids"])
    return PrefixLM(model.gpt2, tokenizer.eos_token_id, vocabulary=vocabulary).eval(), vocabulary


def test_a_restricted_output_layer_has_the_full_layers_logits_at_its_tokens(lm):
    model, tokenizer = lm
    small, vocabulary = restricted(lm)
    assert 10 < len(vocabulary) < 20 and tokenizer.eos_token_id in vocabulary
    hidden = torch.randn(7, 32, generator=torch.Generator().manual_seed(2))
    # same weights, same numbers up to rounding: MKL's reproducible branch (MKL_CBWR=COMPATIBLE, the
    # numerics pins) sums a product of 19 rows in another order than one of 50,257
    torch.testing.assert_close(small.logits(hidden), model.logits(hidden)[:, vocabulary], rtol=0, atol=1e-6)
    # the loss is the cross-entropy over the kept tokens, targets at their positions
    ids = tokenizer(CAPTIONS[0])["input_ids"]
    tokens, mask, prefix = torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long), torch.randn(1, 5, 32)
    embeddings, attention, labels = model.inputs(prefix, tokens.clone(), mask)
    hidden = model.gpt2.transformer(inputs_embeds=embeddings, attention_mask=attention).last_hidden_state
    scored = labels[:, 1:] != -100
    full = model.logits(hidden[:, :-1][scored])[:, vocabulary]
    positions = torch.tensor([vocabulary.index(t) for t in labels[:, 1:][scored].tolist()])
    expected = torch.nn.functional.cross_entropy(full, positions)
    assert torch.allclose(small(prefix, tokens.clone(), mask), expected, atol=1e-6)


@pytest.mark.parametrize("beam", [1, 5])
def test_a_restricted_model_never_emits_a_dropped_token(lm, beam):
    model, tokenizer = lm
    small, vocabulary = restricted(lm)
    prefix = torch.randn(16, 5, 32, generator=torch.Generator().manual_seed(3))
    unrestricted = beam_search(model, prefix, beam=beam, max_tokens=12)
    assert any(t not in vocabulary for seq in unrestricted for t in seq)  # the full model does emit them
    sequences = beam_search(small, prefix, beam=beam, max_tokens=12, stop_ids=tuple(tokenizer(".")["input_ids"]))
    assert all(t in vocabulary for seq in sequences for t in seq)
    # with the cache and without, the same tokens
    assert sequences == beam_search(small, prefix, beam=beam, max_tokens=12,
                                    stop_ids=tuple(tokenizer(".")["input_ids"]), use_cache=False)
