"""Sequence classification with a fine-tuned classifier (a `*ForSequenceClassification` checkpoint, as
`lmforge finetune --task classification` writes): each text's label probabilities (`lmforge classify`),
and the logits of encoded rows, which the classification task's evaluation scores.

The probabilities are the softmax of the logits, as a `transformers` text-classification pipeline's.
"""

from __future__ import annotations

import dataclasses

import torch

from lmforge.device import default_device, resolve_dtype
from lmforge.errors import LmforgeError
from lmforge.models.base import evaluating


def with_pad_id(model, tok):
    """A decoder classifier finds each row's last token by the pad id: give its config one."""
    if model.config.pad_token_id is None:
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        model.config = model.base.config = dataclasses.replace(model.config, pad_token_id=pad)
    return model


def load_trained_classifier(path: str, device=None, *, allow_nonfinite: bool = False):
    """(classifier, tokenizer) of a fine-tuned checkpoint, on `device` (default: the best available);
    anything else is a one-line error."""
    from lmforge.hf import load_model
    from lmforge.models import SequenceClassifier
    from lmforge.tokenizers import load_tokenizer

    device = device or default_device()
    model = load_model(
        path, dtype=resolve_dtype(None, device), device=device, allow_nonfinite=allow_nonfinite
    )
    if not isinstance(model, SequenceClassifier):
        raise LmforgeError(
            f"{path} is not a sequence classifier ({type(model).__name__}); "
            "fine-tune one first with `lmforge finetune --task classification`"
        )
    tok = load_tokenizer(path)
    return with_pad_id(model, tok), tok


def predict_logits(model, features: list[dict], pad_id: int | None, batch_size: int) -> torch.Tensor:
    """(N, num_labels) float32 logits of the feature rows, on the CPU."""
    from lmforge.data.tasks import pad_batch

    logits = []
    device = next(model.parameters()).device
    with evaluating(model):
        for i in range(0, len(features), batch_size):
            batch = {k: v.to(device) for k, v in pad_batch(features[i : i + batch_size], pad_id).items()}
            inputs = (batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
            logits.append(model(*inputs).float().cpu())
    return torch.cat(logits) if logits else torch.zeros(0, model.labels.num_labels)


def predict(model, features: list[dict], pad_id: int | None, batch_size: int) -> list[int]:
    """The predicted label id of each feature row."""
    return predict_logits(model, features, pad_id, batch_size).argmax(-1).tolist()


def label_scores(
    model_dir: str,
    texts: list[str],
    *,
    max_length: int,
    batch_size: int,
    device=None,
    allow_nonfinite: bool = False,
) -> list[list[tuple[str, float]]]:
    """Each text's (label name, probability) pairs, the most probable (the prediction) first; the order
    is the logits' (ties keep the label order, as argmax does)."""
    model, tok = load_trained_classifier(model_dir, device, allow_nonfinite=allow_nonfinite)
    features = []
    for i in range(0, len(texts), batch_size):
        enc = tok.encode_inputs(texts[i : i + batch_size], max_length=max_length)
        for j, mask in enumerate(enc["attention_mask"]):
            n = sum(mask)
            features.append({k: enc[k][j][:n] for k in ("input_ids", "token_type_ids", "attention_mask")})
    logits = predict_logits(model, features, model.config.pad_token_id, batch_size)
    probs, order = logits.softmax(-1), logits.argsort(dim=-1, descending=True, stable=True)
    names = model.labels.id2label
    return [[(names[i], probs[row, i].item()) for i in order[row].tolist()] for row in range(len(features))]
