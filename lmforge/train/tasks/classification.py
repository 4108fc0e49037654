"""`--task classification`: a pretrained encoder or decoder plus a new classification head, trained end
to end on labelled text (Devlin et al. 2019, section 4.1); `evaluate` and `classify` with the result.

Data: CSV or JSON Lines of text (and an optional text pair) and label (lmforge/data/tasks/classification.py),
or the built-in `stdlib-package` task. The loss is the cross-entropy of the head's logits, one term per
row; the metrics are accuracy and (macro) precision, recall and F1. The model is saved as a
`*ForSequenceClassification` checkpoint with the label names in its config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from lmforge.device import default_device, resolve_dtype
from lmforge.errors import LmforgeError
from lmforge.train.tasks.base import FinetuneTask


class ClassificationTask(FinetuneTask):
    name = "classification"
    builtin = "stdlib-package"
    metrics = ("accuracy", "macro_f1", "val_loss")
    lower_is_better = frozenset({"val_loss"})

    def read(self, path: Path) -> list:
        from lmforge.data.tasks import read_classification

        c = self.config
        return read_classification(
            path, text_column=c.text_column, text_pair_column=c.text_pair_column, label_column=c.label_column
        )

    def build_model(self, tokenizer, train: list):
        from lmforge.data.tasks import LabelMap

        self.label_map = LabelMap.from_examples(train)
        model = load_classifier(
            self.config.model, self.label_map, allow_nonfinite=self.config.allow_nonfinite
        )
        return with_pad_id(model, tokenizer)

    def encode(self, tokenizer, examples: Sequence, *, training: bool) -> list[dict]:
        from lmforge.data.tasks import encode_classification

        return encode_classification(
            tokenizer, examples, label_map=self.label_map, max_length=self.config.max_length
        )

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return classification_loss(model, batch)

    def trainable_modules(self, model) -> list[str]:
        heads = ["label_head"]
        # A pooler the checkpoint did not have is new, so it trains too (as the head does).
        if model.is_encoder and getattr(model, "new_pooler", False):
            heads.append("base.pooler")
        return heads

    def score(self, model, tokenizer, examples: Sequence, features: list[dict]) -> dict:
        predicted = predict(model, features, model.config.pad_token_id, self.config.batch_size)
        return label_metrics(predicted, [f["labels"] for f in features], self.label_map.names)

    def evaluate(self, data: Path) -> dict:
        c = self.config
        return evaluate_classifier(
            c.model,
            data,
            max_length=c.max_length,
            batch_size=c.batch_size,
            text_column=c.text_column,
            text_pair_column=c.text_pair_column,
            label_column=c.label_column,
            allow_nonfinite=c.allow_nonfinite,
        )

    def fingerprint(self) -> dict:
        return {"labels": self.label_map.names}

    def describe(self, train: list, validation: list) -> str:
        names = ", ".join(self.label_map.names)
        return f"{len(train):,} examples, {len(self.label_map)} labels ({names}); validating on {len(validation):,}"


def classification_loss(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed cross-entropy of the logits, number of rows): the loop normalises over the global batch."""
    logits = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
    loss = F.cross_entropy(logits.float(), batch["labels"], reduction="sum")
    return loss, torch.tensor(batch["labels"].numel(), device=logits.device)


def load_classifier(path: str, label_map, *, allow_nonfinite: bool = False):
    """The checkpoint at `path` with a new head for `label_map` (kept as is if it already has those labels)."""
    from lmforge.hf import load_model
    from lmforge.models import SequenceClassifier

    model = load_model(path, allow_nonfinite=allow_nonfinite)
    if isinstance(model, SequenceClassifier):
        if model.labels.id2label == label_map.id2label:
            return model
        model = model.base
    if getattr(model, "is_encoder_decoder", False) or not hasattr(model, "embed"):
        kind = getattr(model.config, "model_type", type(model).__name__)
        raise LmforgeError(
            f"{path} is a {kind} model, which cannot be fine-tuned for classification; "
            "use a BERT, GPT-2 or Llama checkpoint (T5 models take --task seq2seq)"
        )
    had_pooler = getattr(model, "pooler", None) is not None
    classifier = SequenceClassifier.from_base(model, id2label=label_map.id2label, label2id=label_map.label2id)
    classifier.new_pooler = classifier.is_encoder and not had_pooler
    return classifier


def with_pad_id(model, tok):
    """A decoder classifier finds each row's last token by the pad id: give its config one."""
    if model.config.pad_token_id is None:
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        model.config = model.base.config = dataclasses.replace(model.config, pad_token_id=pad)
    return model


def label_metrics(predicted: list[int], gold: list[int], label_names: list[str]) -> dict:
    """Classification metrics (eval/metrics.py) over label names, for predicted and gold ids."""
    from lmforge.eval.metrics import compute_metrics

    names = [label_names[i] for i in predicted], [label_names[i] for i in gold]
    return compute_metrics("classification", *names, labels=label_names)


def predict(model, features: list[dict], pad_id: int | None, batch_size: int = 32) -> list[int]:
    """The predicted label id of each feature row."""
    return predict_logits(model, features, pad_id, batch_size).argmax(-1).tolist()


@torch.no_grad()
def predict_logits(model, features: list[dict], pad_id: int | None, batch_size: int = 32) -> torch.Tensor:
    """(N, num_labels) float32 logits of the feature rows, on the CPU."""
    from lmforge.data.tasks import pad_batch

    was_training = model.training
    model.eval()
    logits = []
    device = next(model.parameters()).device
    for i in range(0, len(features), batch_size):
        batch = {k: v.to(device) for k, v in pad_batch(features[i : i + batch_size], pad_id).items()}
        logits.append(
            model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids")).float().cpu()
        )
    model.train(was_training)
    return torch.cat(logits) if logits else torch.zeros(0, model.labels.num_labels)


def load_trained_classifier(path: str, device=None, *, allow_nonfinite: bool = False):
    """(classifier, tokenizer) of a fine-tuned checkpoint; anything else is a one-line error."""
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


def evaluate_classifier(
    model_dir: str,
    data: str,
    *,
    max_length: int = 512,
    batch_size: int = 32,
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_column: str = "label",
    allow_nonfinite: bool = False,
) -> dict:
    """Classification metrics of a fine-tuned model on a labelled CSV/JSONL file."""
    from lmforge.data.tasks import LabelMap, encode_classification, read_classification
    from lmforge.eval.metrics import unknown_label_error

    model, tok = load_trained_classifier(model_dir, allow_nonfinite=allow_nonfinite)
    examples = read_classification(
        data, text_column=text_column, text_pair_column=text_pair_column, label_column=label_column
    )
    names = [model.labels.id2label[i] for i in range(model.labels.num_labels)]
    for e in examples:
        if e.label not in names:
            line = int(e.where.rsplit(":", 1)[-1]) if e.where.rsplit(":", 1)[-1].isdigit() else 0
            raise unknown_label_error(e.label, line, names, data)
    features = encode_classification(tok, examples, LabelMap(names), max_length=max_length)
    predicted = predict(model, features, model.config.pad_token_id, batch_size)
    return label_metrics(predicted, [f["labels"] for f in features], names)


def classify_texts(
    model_dir: str, texts: list[str], *, max_length: int = 512, batch_size: int = 32
) -> list[str]:
    """The predicted label name of each text."""
    ranked = label_scores(model_dir, texts, max_length=max_length, batch_size=batch_size)
    return [labels[0][0] for labels in ranked]


def label_scores(
    model_dir: str,
    texts: list[str],
    *,
    max_length: int = 512,
    batch_size: int = 32,
    allow_nonfinite: bool = False,
) -> list[list[tuple[str, float]]]:
    """Each text's (label name, probability) pairs, the most probable (the prediction) first.

    The probabilities are the softmax of the logits, as a `transformers` text-classification pipeline's
    scores; the order is the logits' (ties keep the label order, as argmax does).
    """
    model, tok = load_trained_classifier(model_dir, allow_nonfinite=allow_nonfinite)
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
