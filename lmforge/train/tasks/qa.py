"""`--task qa`: extractive question answering (SQuAD v1.1 and v2.0) with a span head on a pretrained
BERT-family encoder (Devlin et al. 2019, section 4.2-4.3); `evaluate` and `answer` with the result.

Data: SQuAD JSON (lmforge/data/tasks/squad.py), or the built-in `stdlib-qa` task (SQuAD v2.0 questions on
standard-library docstrings). Long contexts are cut into windows of --max-length tokens sharing --stride
tokens; a window that does not hold the answer, and an unanswerable question, points at [CLS]. The loss
is the mean of the start and end cross-entropies, one term per window. Scoring maps each question's best
span over its windows back to context text (at most --max-answer-length tokens); when the data has
unanswerable questions (v2.0), "no answer" wins when its score beats the best span's. The metrics are the
official scripts' exact match and F1 (eval/metrics.py), with the HasAns/NoAns groups on v2.0 data.
The windows and the span search are lmforge/inference/answer.py's, which `lmforge answer` runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from lmforge.config import option
from lmforge.errors import LmforgeError
from lmforge.train.loop import MAX_SIZE
from lmforge.train.tasks.base import FinetuneTask, TaskOptions


@dataclass
class QAOptions(TaskOptions):
    """`--task qa`'s flags, which `answer` takes too."""

    stride: int = option(64, "qa: tokens shared by consecutive windows of a long context", ge=0, le=MAX_SIZE)
    max_answer_length: int = option(30, "qa: the longest answer, in tokens", ge=1, le=MAX_SIZE)


class QATask(FinetuneTask):
    name = "qa"
    options = QAOptions
    builtin = "stdlib-qa"
    metrics = ("f1", "exact", "val_loss")
    lower_is_better = frozenset({"val_loss"})
    suffixes = (".json",)

    def read(self, path: Path) -> list:
        from lmforge.data.tasks import read_squad

        return read_squad(path)

    def build_model(self, tokenizer, train: list):
        return load_span_model(self.config.model, allow_nonfinite=self.config.allow_nonfinite)

    def load_trained(self, tokenizer, device: torch.device):
        from lmforge.inference.answer import load_trained_span_model

        return load_trained_span_model(self.config.model, device, allow_nonfinite=self.config.allow_nonfinite)

    def encode(self, tokenizer, examples: Sequence, *, training: bool) -> list[dict]:
        """Training: one row per window with start_positions/end_positions. Scoring: one row per window
        with its `example_index` and `offsets` (each token's character span in the context, or None),
        which `score` needs to map logits back to text."""
        from lmforge.data.tasks import prepare_squad_train
        from lmforge.inference.answer import scoring_rows

        c = self.config
        if training:
            return prepare_squad_train(tokenizer, examples, max_length=c.max_length, stride=c.stride)
        return scoring_rows(tokenizer, examples, max_length=c.max_length, stride=c.stride)

    def loss(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return span_loss(model, batch)

    def trainable_modules(self, model) -> list[str]:
        return ["span_head"]

    def score(self, model, tokenizer, examples: Sequence, features: list[dict]) -> dict:
        from lmforge.eval.metrics import compute_metrics
        from lmforge.inference.answer import predict_answers

        # v2.0 data (some question has no answer) lets the model answer nothing; v1.1 always answers.
        is_v2 = any(e.is_impossible or not e.answers for e in examples)
        predictions = predict_answers(
            model,
            examples,
            features,
            batch_size=self.config.batch_size,
            max_answer_length=self.config.max_answer_length,
            null_threshold=0.0 if is_v2 else None,
        )
        references = [[a.text for a in e.answers] for e in examples]
        return compute_metrics("qa", [predictions[e.id] for e in examples], references, version_2=is_v2)

    def fingerprint(self) -> dict:
        return {"stride": self.config.stride}

    def describe(self, train: list, validation: list) -> str:
        n_impossible = sum(e.is_impossible for e in train)
        return (
            f"{len(train):,} questions ({n_impossible:,} unanswerable), windows of {self.config.max_length} "
            f"tokens with stride {self.config.stride}; validating on {len(validation):,}"
        )


def span_loss(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed (CE(start) + CE(end)) / 2 over the rows, number of rows), as BertForQuestionAnswering."""
    start, end = model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
    start_loss = F.cross_entropy(start.float(), batch["start_positions"], reduction="sum")
    end_loss = F.cross_entropy(end.float(), batch["end_positions"], reduction="sum")
    return (start_loss + end_loss) / 2, torch.tensor(len(start), device=start.device)


def load_span_model(path: str, *, allow_nonfinite: bool = False):
    """The checkpoint at `path` with a span head: a new one on a BERT-family encoder, or its own."""
    from lmforge.hf import load_model
    from lmforge.models import Bert, SpanQA
    from lmforge.models.heads import TaskModel

    model = load_model(path, allow_nonfinite=allow_nonfinite)
    if isinstance(model, SpanQA):
        return model
    if isinstance(model, TaskModel):  # a classifier: keep its encoder, drop its head
        model = model.base
    if not isinstance(model, Bert):
        kind = getattr(model.config, "model_type", type(model).__name__)
        raise LmforgeError(
            f"{path} is a {kind} model, which cannot be fine-tuned for extractive QA; "
            "--task qa needs a BERT-family encoder (BERT, RoBERTa, MiniLM)"
        )
    return SpanQA.from_base(model)
