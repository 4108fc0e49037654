"""Extractive question answering with a fine-tuned span model (a `*ForQuestionAnswering` checkpoint, as
`lmforge finetune --task qa` writes): the answer to each question, a span of its context or "" for "no
answer" (`lmforge answer`), and the predictions the QA task's evaluation scores.

A long context is cut into windows of max_length tokens sharing `stride` tokens; each window's start and
end logits score its spans, and the best span over a question's windows is mapped back to context text
(lmforge/data/tasks/squad.py, as Hugging Face's run_qa.py does). "No answer" wins when its score (the
[CLS] span) beats the best span's, unless every question must be answered (SQuAD v1.1).
"""

from __future__ import annotations

from collections.abc import Sequence

from lmforge.device import default_device, resolve_dtype
from lmforge.errors import LmforgeError
from lmforge.models.base import evaluating


def load_trained_span_model(path: str, device=None, *, allow_nonfinite: bool = False):
    """A fine-tuned span QA checkpoint, on `device` (default: the best available); anything else is a
    one-line error."""
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


def scoring_rows(tokenizer, examples: Sequence, *, max_length: int, stride: int) -> list[dict]:
    """One row per window: its features, `example_index` and `offsets` (each token's character span in
    the context, or None). The offsets never reach the model: `predict_answers` batches the inputs alone."""
    from lmforge.data.tasks import prepare_squad_eval

    features, windows = prepare_squad_eval(tokenizer, examples, max_length=max_length, stride=stride)
    return [{**f, "example_index": w.example_index, "offsets": w.offsets} for f, w in zip(features, windows)]


def predict_answers(
    model,
    examples: Sequence,
    features: list[dict],
    *,
    batch_size: int,
    max_answer_length: int,
    null_threshold: float | None = 0.0,
) -> dict[str, str]:
    """{question id: answer text ("" for no answer)} from the `scoring_rows` of the examples;
    null_threshold None: always the best span."""
    from lmforge.data.tasks import SquadWindow, pad_batch, postprocess_squad

    device = next(model.parameters()).device
    inputs = ("input_ids", "token_type_ids", "attention_mask")
    starts, ends = [], []
    with evaluating(model):
        for i in range(0, len(features), batch_size):
            rows = features[i : i + batch_size]
            batch = pad_batch([{k: f[k] for k in inputs} for f in rows], model.config.pad_token_id)
            start, end = model(
                *(batch[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids"))
            )
            for f, s, e in zip(rows, start.float().tolist(), end.float().tolist()):
                n = len(f["input_ids"])  # padding positions are no span's
                starts.append(s[:n])
                ends.append(e[:n])
    windows = [SquadWindow(f["example_index"], f["offsets"]) for f in features]
    return postprocess_squad(
        examples, windows, starts, ends, max_answer_length=max_answer_length, null_threshold=null_threshold
    )


def answer_questions(
    model_dir: str,
    examples: Sequence,
    *,
    max_length: int,
    stride: int,
    max_answer_length: int,
    batch_size: int,
    always_answer: bool = False,
    device=None,
    allow_nonfinite: bool = False,
) -> list[str]:
    """The answer of each question, in order: a span of its context, or "" for "no answer"."""
    from lmforge.tokenizers import load_tokenizer

    model = load_trained_span_model(model_dir, device, allow_nonfinite=allow_nonfinite)
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
