"""Caption decoding from a GPT-2 prefix: beam search (greedy = beam 1), batched over clips.

The beam bookkeeping follows ClipCap's reference ``generate_beam`` (log-probabilities summed,
ranked by their mean over the tokens generated, a finished beam only extends with the stop token
at no cost), batched over clips. ``use_cache=True`` feeds one token per step with GPT-2's KV
cache; ``use_cache=False`` recomputes the whole sequence each step, as ClipCap's code does; both
return the same tokens. Scores are over the language model's vocabulary (:meth:`PrefixLM.logits`:
all of GPT-2's tokens, or a restricted set), so a restricted model never emits another token.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from clipmemcap.model.prefix_lm import PrefixLM


@torch.inference_mode()
def beam_search(lm: PrefixLM, prefix: torch.Tensor, beam: int = 5, max_tokens: int = 67,
                stop_ids: tuple[int, ...] = (), use_cache: bool = True) -> list[list[int]]:
    """prefix [B, L, E] -> the best token sequence per clip, up to and including a stop token
    (the end-of-text token is always one; pass the id of "." to stop there too, as ClipCap does)."""
    gpt2, B = lm.gpt2, prefix.shape[0]
    ids = sorted({lm.eos_token_id, *stop_ids})
    if lm.vocabulary is not None:  # a stop token the model cannot emit never ends a caption
        emitted = set(lm.vocabulary.tolist())
        ids = [t for t in ids if t in emitted]
    # positions in the output layer, not token ids, until the end
    stops = lm.positions(torch.tensor(ids, device=prefix.device))
    embeddings = prefix.repeat_interleave(beam, 0)  # [B*K, L, E]
    cache = DynamicCache() if use_cache else None

    def next_logits(**inputs) -> torch.Tensor:  # [B*K, V]
        return lm.logits(gpt2.transformer(**inputs, past_key_values=cache, use_cache=use_cache).last_hidden_state[:, -1])

    logits = next_logits(inputs_embeds=embeddings)
    tokens = torch.empty(B * beam, 0, dtype=torch.long, device=prefix.device)
    scores = torch.zeros(B * beam, device=prefix.device)  # summed log-probabilities
    lengths = torch.zeros(B * beam, device=prefix.device)
    stopped = torch.zeros(B * beam, dtype=torch.bool, device=prefix.device)
    for step in range(max_tokens):
        logprobs = logits.float().log_softmax(-1)  # [B*K, V]
        V = logprobs.shape[-1]
        logprobs[stopped] = float("-inf")
        logprobs[stopped, stops[0]] = 0.0  # a finished beam only repeats a stop token, at no cost
        if step == 0:  # all K beams of a clip are the same: take the clip's top K first tokens
            logprobs.view(B, beam, V)[:, 1:] = float("-inf")
        lengths = lengths + (~stopped)
        mean = (scores[:, None] + logprobs) / lengths[:, None]  # [B*K, V]
        best, flat = mean.view(B, beam * V).topk(beam, -1)  # [B, K]
        source = (flat // V + torch.arange(B, device=flat.device)[:, None] * beam).flatten()  # beam rows
        token = (flat % V).flatten()  # [B*K]
        lengths, stopped, tokens = lengths[source], stopped[source], torch.cat([tokens[source], token[:, None]], 1)
        scores = best.flatten() * lengths
        stopped = stopped | torch.isin(token, stops)
        if bool(stopped.all()):
            break
        if use_cache:
            cache.reorder_cache(source)
            logits = next_logits(input_ids=lm.token_ids(token)[:, None])
        else:
            embeddings = torch.cat([embeddings[source], gpt2.transformer.wte(lm.token_ids(token))[:, None]], 1)
            logits = next_logits(inputs_embeds=embeddings)
    winners = (scores / lengths).view(B, beam).argmax(-1) + torch.arange(B, device=prefix.device) * beam
    results = []
    stop_list = stops.tolist()
    for row in tokens[winners].tolist():
        end = next((i for i, t in enumerate(row) if t in stop_list), len(row) - 1)
        results.append(lm.token_ids(torch.tensor(row[: end + 1], dtype=torch.long)).tolist())
    return results


def captions(tokenizer, sequences: list[list[int]]) -> list[str]:
    """Text of decoded sequences, without the end-of-text token."""
    return [tokenizer.decode([t for t in seq if t != tokenizer.eos_token_id]).strip() for seq in sequences]
