"""Token-level cross-entropy, summed, with the count of tokens it covers.

Returning (sum, count) instead of a mean lets the loop normalise by the number of real tokens in
the whole optimizer step (all micro-batches, all processes), so gradient accumulation and
data-parallel training give the same gradients as one big batch even when sequences differ in
length.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Labels are made with the data (lmforge.data.objectives): IGNORE_INDEX marks a position without loss.
from lmforge.data.objectives import IGNORE_INDEX, shift_right


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


def masked_lm_loss(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The masked language-modelling objective (BERT): predict the original token at each masked position.

    The model is an encoder with an MLM head; labels hold the original ids where a token was chosen for
    masking and IGNORE_INDEX elsewhere (lmforge.data.objectives.mask_tokens).
    """
    logits = model(
        batch["input_ids"],
        attention_mask=batch.get("attention_mask"),
        token_type_ids=batch.get("token_type_ids"),
    )
    return token_loss_sum(logits, batch["labels"])


def seq2seq_loss(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The encoder-decoder objective (T5): predict labels[t] from the input and labels before t.

    The decoder inputs are batch["decoder_input_ids"] when given, else the labels shifted right after
    the model's decoder_start_token_id.
    """
    labels = batch["labels"]
    decoder_input_ids = batch.get("decoder_input_ids")
    if decoder_input_ids is None:
        config = getattr(model, "module", model).config  # DDP wraps the model in .module
        decoder_input_ids = shift_right(labels, config.decoder_start_token_id, config.pad_token_id)
    logits = model(
        batch["input_ids"],
        attention_mask=batch.get("attention_mask"),
        decoder_input_ids=decoder_input_ids,
        decoder_attention_mask=batch.get("decoder_attention_mask"),
    )
    return token_loss_sum(logits, labels)
