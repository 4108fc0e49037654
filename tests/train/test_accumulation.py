"""Gradient accumulation and token-count normalisation: batch 8 x accumulation 1 equals batch 2 x
accumulation 4 on sequences of different lengths (the loss is the mean over real tokens of the
whole step, not a mean of micro-batch means)."""

import torch

from lmforge.models import build_model
from lmforge.train.distributed import World
from lmforge.train.loop import accumulate_gradients
from lmforge.train.loss import IGNORE_INDEX, causal_lm_loss


def _varying_length_batch(n: int, seq_len: int, vocab: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab, (n, seq_len), generator=g)
    labels = torch.randint(0, vocab, (n, seq_len), generator=g)
    attention_mask = torch.ones(n, seq_len, dtype=torch.long)
    for i in range(n):
        length = int(torch.randint(3, seq_len + 1, (1,), generator=g))
        labels[i, length:] = IGNORE_INDEX
        attention_mask[i, length:] = 0
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def _grads(model, micro_batches):
    model.zero_grad(set_to_none=True)
    loss, n_tokens = accumulate_gradients(model, micro_batches, causal_lm_loss, World())
    return loss, n_tokens, {n: p.grad.clone() for n, p in model.named_parameters()}


def test_accumulation_equals_one_big_batch():
    torch.manual_seed(0)
    model = build_model("tiny")
    batch = _varying_length_batch(8, 24, model.config.vocab_size)
    whole = _grads(model, [batch])
    split = _grads(model, [{k: v[i : i + 2] for k, v in batch.items()} for i in range(0, 8, 2)])
    assert whole[1] == split[1] == (batch["labels"] != IGNORE_INDEX).sum()
    assert torch.allclose(whole[0], split[0], atol=1e-6, rtol=0)
    for name, grad in whole[2].items():
        assert torch.allclose(grad, split[2][name], atol=1e-6, rtol=0), name


def test_loss_is_mean_over_real_tokens():
    torch.manual_seed(0)
    model = build_model("tiny")
    batch = _varying_length_batch(4, 16, model.config.vocab_size, seed=1)
    loss, n_tokens = accumulate_gradients(model, [batch], causal_lm_loss, World())
    logits = model(batch["input_ids"], attention_mask=batch["attention_mask"])
    mask = batch["labels"] != IGNORE_INDEX
    expected = torch.nn.functional.cross_entropy(logits[mask], batch["labels"][mask])
    assert torch.allclose(loss.float(), expected, atol=1e-6)
    assert n_tokens == mask.sum()
