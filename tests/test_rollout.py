"""Rollout scoring shortcuts are exact: the logits kept while sampling equal a forward pass over the rollout,
the LM head on response positions only equals slicing the full logits, and trimming a minibatch's padding leaves
every per-token quantity unchanged."""

import torch
from transformers import GPT2LMHeadModel

from lit_instruct.data.batching import position_ids
from lit_instruct.models.causal_lm import embedded_config
from lit_instruct.objectives import masked_mean
from lit_instruct.rollout import (
    generate,
    generate_in_batches,
    logprobs_from_logits,
    response_logits,
)


def tiny_policy(tokenizer):
    torch.manual_seed(0)
    return GPT2LMHeadModel(embedded_config(tokenizer)).eval()


def left_padded(tokenizer, lengths):
    torch.manual_seed(1)
    q = max(lengths)
    query = torch.full((len(lengths), q), tokenizer.pad_token_id)
    mask = torch.zeros(len(lengths), q, dtype=torch.long)
    for i, n in enumerate(lengths):
        query[i, q - n:] = torch.randint(10, 1000, (n,))
        mask[i, q - n:] = 1
    return query, mask


def test_generation_logits_match_a_forward_pass_and_the_head_slice_matches_full_logits(tokenizer):
    policy = tiny_policy(tokenizer)
    query, mask = left_padded(tokenizer, [5, 9, 3])
    torch.manual_seed(2)
    rollout = generate(policy, query, mask, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                       max_new_tokens=7, temperature=0.7)
    assert rollout.generation_logits.shape == (3, rollout.response.shape[1], len(tokenizer))
    with torch.no_grad():
        sliced = response_logits(policy, rollout)  # logits_to_keep = r + 1
        full = policy(input_ids=rollout.input_ids, attention_mask=rollout.attention_mask,
                      position_ids=position_ids(rollout.attention_mask)).logits[:, query.shape[1] - 1 : -1]
    torch.testing.assert_close(sliced, full, rtol=1e-5, atol=1e-5)
    m = rollout.response_mask.bool()
    torch.testing.assert_close(rollout.generation_logits[m], full[m], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logprobs_from_logits(rollout.generation_logits, rollout.response, 0.7)[m],
                               logprobs_from_logits(full, rollout.response, 0.7)[m], rtol=1e-4, atol=1e-4)


def test_trimming_a_minibatch_changes_no_per_token_quantity(tokenizer):
    policy = tiny_policy(tokenizer)
    query, mask = left_padded(tokenizer, [12, 4, 3, 11])
    torch.manual_seed(3)
    rollout = generate(policy, query, mask, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                       max_new_tokens=6)
    rollout.response_mask[1:3, 2:] = 0  # rows 1 and 2 ended early
    rollout.logprobs = torch.randn(rollout.response.shape)
    minibatch = rollout.select(torch.tensor([1, 2]))  # the short rows: 8 all-pad query columns, 4 pad response columns
    trimmed, r = minibatch.trimmed()
    assert trimmed.query.shape[1] == 4 and r == 2 and trimmed.response.shape[1] == 2
    torch.testing.assert_close(trimmed.logprobs, minibatch.logprobs[:, :r])
    with torch.no_grad():
        before = logprobs_from_logits(response_logits(policy, minibatch), minibatch.response)
        after = logprobs_from_logits(response_logits(policy, trimmed), trimmed.response)
    torch.testing.assert_close(after, before[:, :r], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(masked_mean(after, trimmed.response_mask.float()),
                               masked_mean(before, minibatch.response_mask.float()), rtol=1e-5, atol=1e-5)


def test_generation_in_batches_gives_what_one_batch_gives(tokenizer):
    """``rollout.generation_batch_size``: greedy responses, masks and kept logits of 3 + 2 prompts are those of the 5
    at once, right-padded to the longest response of all."""
    policy = tiny_policy(tokenizer)
    policy.generation_config.eos_token_id = None
    query, mask = left_padded(tokenizer, [5, 9, 3, 7, 4])
    eos = int(generate(policy, query[:1], mask[:1], eos_token_id=-1, pad_token_id=tokenizer.pad_token_id, max_new_tokens=3,
                       do_sample=False).response[0, 1])  # row 0 then ends early, the others later or never
    kwargs = dict(eos_token_id=eos, pad_token_id=tokenizer.pad_token_id, max_new_tokens=6, do_sample=False)
    whole = generate_in_batches(policy, query, mask, batch_size=None, **kwargs)
    parts = generate_in_batches(policy, query, mask, batch_size=3, **kwargs)
    assert bool(whole.ended[0]) and len(set(whole.response_mask.sum(1).tolist())) > 1, whole.response_mask
    assert torch.equal(parts.response, whole.response) and torch.equal(parts.response_mask, whole.response_mask)
    assert torch.equal(parts.ended, whole.ended)
    m = whole.response_mask.bool()
    assert parts.generation_logits.shape == whole.generation_logits.shape
    torch.testing.assert_close(parts.generation_logits[m], whole.generation_logits[m], rtol=1e-4, atol=1e-4)
