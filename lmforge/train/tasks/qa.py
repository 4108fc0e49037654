"""`--task qa`: extractive question answering (SQuAD v1.1 and v2.0) with a span head on a pretrained
BERT-family encoder (Devlin et al. 2019, section 4.2-4.3); `evaluate` and `answer` with the result.

Data: SQuAD JSON (lmforge/data/tasks/squad.py), or the built-in `stdlib-qa` task (SQuAD v2.0 questions on
standard-library docstrings). Long contexts are cut into windows of --max-length tokens sharing --stride
tokens; a window that does not hold the answer, and an unanswerable question, points at [CLS]. The loss
is the mean of the start and end cross-entropies, one term per window. Scoring maps each question's best
span over its windows back to context text (at most --max-answer-length tokens); when the data has
unanswerable questions (v2.0), "no answer" wins when its score beats the best span's. The metrics are the
official scripts' exact match and F1 (eval/metrics.py), with the HasAns/NoAns groups on v2.0 data.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from lmforge.device import default_device, resolve_dtype
from lmforge.errors import LmforgeError
from lmforge.train.tasks.base import FinetuneTask


class QATask(FinetuneTask):
    name = "qa"
    builtin = "stdlib-qa"
    metrics = ("f1", "exact", "val_loss")
    lower_is_better = frozenset({"val_loss"})
    suffixes = (".json",)

    def read(self, path: Path) -> list:
        from lmforge.data.tasks import read_squad

        return read_squad(path)

    def build_model(self, tokenizer, train: list):
        return load_span_model(self.config.model, allow_nonfinite=self.config.allow_nonfinite)

    def load_trained(self, tokenizer):
        return load_trained_span_model(self.config.model, allow_nonfinite=self.config.allow_nonfinite)

    def encode(self, tokenizer, examples: Sequence, *, training: bool) -> list[dict]:
        """Training: one row per window with start_positions/end_positions. Scoring: one row per window
        with its `example_index` and `offsets` (each token's character span in the context, or None),
        which `score` needs to map logits back to text."""
        from lmforge.data.tasks import prepare_squad_train

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


def load_trained_span_model(path: str, device=None, *, allow_nonfinite: bool = False):
    """A fine-tuned span QA checkpoint; anything else is a one-line error."""
    from lmforge.hf import load_model
    from lmforge.models import SpanQA

    device = device or default_device()
    model = load_model(
        path, dtype=resolve_dtype(None, device), device=device, allow_nonfinite=allow_nonfinite
    )
    if not isinstance(model, SpanQA):
        raise LmforgeError(
            f"{path} is not a question-answering model ({type(model).__name__}); "
            "fine-tune one first with `lmforge finetune --task qa`"
        )
    return model


@torch.no_grad()
def predict_answers(
    model,
    examples: Sequence,
    features: list[dict],
    *,
    batch_size: int = 32,
    max_answer_length: int = 30,
    null_threshold: float | None = 0.0,
) -> dict[str, str]:
    """{question id: answer text ("" for no answer)} from the scoring rows of `QATask.encode`."""
    from lmforge.data.tasks import SquadWindow, pad_batch, postprocess_squad

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    inputs = ("input_ids", "token_type_ids", "attention_mask")
    starts, ends = [], []
    for i in range(0, len(features), batch_size):
        rows = features[i : i + batch_size]
        batch = pad_batch([{k: f[k] for k in inputs} for f in rows], model.config.pad_token_id)
        start, end = model(*(batch[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids")))
        for f, s, e in zip(rows, start.float().tolist(), end.float().tolist()):
            n = len(f["input_ids"])  # padding positions are no span's
            starts.append(s[:n])
            ends.append(e[:n])
    model.train(was_training)
    windows = [SquadWindow(f["example_index"], f["offsets"]) for f in features]
    return postprocess_squad(
        examples, windows, starts, ends, max_answer_length=max_answer_length, null_threshold=null_threshold
    )


def scoring_rows(tokenizer, examples: Sequence, *, max_length: int, stride: int) -> list[dict]:
    """One row per window: its features, `example_index` and `offsets` (each token's character span in
    the context, or None). The offsets never reach the model: `predict_answers` batches the inputs alone."""
    from lmforge.data.tasks import prepare_squad_eval

    features, windows = prepare_squad_eval(tokenizer, examples, max_length=max_length, stride=stride)
    return [{**f, "example_index": w.example_index, "offsets": w.offsets} for f, w in zip(features, windows)]


def read_questions(path: str | Path) -> list:
    """Questions to answer: a SQuAD JSON file, or JSON Lines of {"question", "context"} (each question's
    id is its "file:line")."""
    import json

    from lmforge.data.readers import jsonl_objects
    from lmforge.data.tasks import SquadExample, read_squad

    path = Path(path)
    try:
        # errors="replace": a stray invalid byte must not hide a SQuAD file (read_squad counts it)
        document = json.loads(path.read_bytes().decode("utf-8-sig", errors="replace"))
    except OSError as e:
        raise LmforgeError(
            f"cannot read --input {path}: {e.strerror}; pass a JSON Lines or SQuAD JSON file"
        ) from None
    except ValueError:  # several lines of JSON: JSON Lines (whose reader names any fault)
        document = None
    if isinstance(document, dict) and "data" in document:
        return read_squad(path)
    examples = []
    for where, row in jsonl_objects(path):
        for field in ("question", "context"):
            if not isinstance(row.get(field), str):
                raise LmforgeError(
                    f'{where} has no text field {field!r}; each line needs {{"question": ..., "context": ...}}'
                )
        examples.append(SquadExample(where, row["question"].lstrip(), row["context"], ()))
    if not examples:
        raise LmforgeError(f"--input {path} has no questions; put one JSON object per line")
    return examples


def answer_questions(
    model_dir: str,
    examples: Sequence,
    *,
    max_length: int = 384,
    stride: int = 128,
    max_answer_length: int = 30,
    batch_size: int = 32,
    always_answer: bool = False,
    allow_nonfinite: bool = False,
) -> list[str]:
    """The answer of each question, in order: a span of its context, or "" for "no answer"."""
    from lmforge.tokenizers import load_tokenizer

    model = load_trained_span_model(model_dir, allow_nonfinite=allow_nonfinite)
    tokenizer = load_tokenizer(model_dir)
    predictions = predict_answers(
        model,
        examples,
        scoring_rows(tokenizer, examples, max_length=max_length, stride=stride),
        batch_size=batch_size,
        max_answer_length=max_answer_length,
        null_threshold=None if always_answer else 0.0,
    )
    return [predictions[e.id] for e in examples]
