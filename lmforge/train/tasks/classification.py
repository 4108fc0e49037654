"""`--task classification`: a pretrained encoder or decoder plus a new classification head, trained end
to end on labelled text (Devlin et al. 2019, section 4.1).

Data: CSV or JSON Lines of text (and an optional text pair) and label (lmforge/data/tasks/classification.py),
or the built-in `stdlib-package` task. The loss is the cross-entropy of the head's logits, one term per
row; the metrics are accuracy and (macro) precision, recall and F1. The model is saved as a
`*ForSequenceClassification` checkpoint with the label names in its config, which `lmforge classify`
runs (lmforge/inference/classify.py, whose predictions this task's scores are made of too).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from lmforge.config import option
from lmforge.errors import LmforgeError
from lmforge.inference.classify import with_pad_id
from lmforge.train.tasks.base import FinetuneTask, TaskOptions


@dataclass
class ClassificationOptions(TaskOptions):
    """`--task classification`'s flags (`classify` takes --max-length)."""

    text_column: str = option("text", "classification: the column holding the text")
    text_pair_column: str | None = option(
        None, "classification: the column holding a second text (sentence pairs; default: none)"
    )
    label_column: str = option("label", "classification: the column holding the label")


class ClassificationTask(FinetuneTask):
    name = "classification"
    options = ClassificationOptions
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

    def load_trained(self, tokenizer, device: torch.device):
        from lmforge.data.tasks import LabelMap
        from lmforge.inference.classify import load_trained_classifier

        c = self.config
        model, _ = load_trained_classifier(c.model, device, allow_nonfinite=c.allow_nonfinite)
        self.label_map = LabelMap([model.labels.id2label[i] for i in range(model.labels.num_labels)])
        return model

    def check_examples(self, examples: Sequence, path: Path) -> None:
        from lmforge.eval.metrics import unknown_label_error

        for e in examples:
            if e.label not in self.label_map.label2id:
                line = e.where.rsplit(":", 1)[-1]
                raise unknown_label_error(
                    e.label, int(line) if line.isdigit() else 0, self.label_map.names, path
                )

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
        from lmforge.inference.classify import predict

        predicted = predict(model, features, model.config.pad_token_id, self.config.batch_size)
        return label_metrics(predicted, [f["labels"] for f in features], self.label_map.names)

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


def label_metrics(predicted: list[int], gold: list[int], label_names: list[str]) -> dict:
    """Classification metrics (eval/metrics.py) over label names, for predicted and gold ids, and the
    confusion matrix: {"labels": names, "counts": rows of references, columns of predictions}."""
    from lmforge.eval.metrics import compute_metrics, confusion_matrix

    names = [label_names[i] for i in predicted], [label_names[i] for i in gold]
    matrix, _ = confusion_matrix(*names, labels=label_names)
    return {
        **compute_metrics("classification", *names, labels=label_names),
        "confusion_matrix": {"labels": list(label_names), "counts": matrix.tolist()},
    }
