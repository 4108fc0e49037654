"""Token-level cross-entropy, summed, with the count of tokens it covers.

Returning (sum, count) instead of a mean lets the loop normalise by the number of real tokens in
the whole optimizer step (all micro-batches, all processes), so gradient accumulation and
data-parallel training give the same gradients as one big batch even when sequences differ in
length.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # label value of positions that carry no loss (padding, prompts)


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy of logits (B, T, V) against labels (B, T), and the number of counted tokens."""
    loss = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return loss, (labels != IGNORE_INDEX).sum()


def causal_lm_loss(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The causal language-modelling objective: predict token t+1 from tokens up to t."""
    logits = model(batch["input_ids"], attention_mask=batch.get("attention_mask"))
    return token_loss_sum(logits, batch["labels"])
