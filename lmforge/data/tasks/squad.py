"""Extractive question answering on SQuAD v1.1 and v2.0 JSON (Rajpurkar et al. 2016, 2018).

The official file nests data[] -> paragraphs[] -> qas[]: each paragraph has a `context`, each question an
`id`, a `question`, `answers` [{"text", "answer_start"}] (character offsets into the context) and, in v2.0,
`is_impossible` (then `answers` is empty).

Training, as Hugging Face's run_qa.py: the question comes first, then the context, cut into overlapping
windows of max_length tokens that share `stride` tokens (`truncation="only_second"` with overflowing
tokens). The character answer is mapped to a token span through the tokenizer's offsets; a window that
does not hold the whole answer, and an unanswerable question, is labelled (0, 0): position 0, the [CLS]
token, stands for "no answer" (Devlin et al. 2019, section 4.3).

Inference: every window scores spans start..end by start_logit + end_logit over the n_best top starts and
ends, spans of at most max_answer_length tokens inside the context; the best span over all windows of a
question is mapped back to context text through the offsets. For v2.0, the answer is "" when the no-answer
score (the [CLS] span, lowest over the windows) beats the best span by more than a threshold.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tokenizers

from lmforge.data.tasks.features import truncating_backend
from lmforge.errors import LmforgeError
from lmforge.text import Replacements, clean_json
from lmforge.tokenizers import Tokenizer

_ENCODE_CHUNK = 256  # questions encoded per call to the tokenizer


@dataclass(frozen=True)
class SquadAnswer:
    text: str
    start: int  # character offset of the answer in the context


@dataclass(frozen=True)
class SquadExample:
    id: str
    question: str
    context: str
    answers: tuple[SquadAnswer, ...]  # empty for an unanswerable question
    is_impossible: bool = False


@dataclass(frozen=True)
class SquadWindow:
    """Where an inference window came from: its question, and each token's character span in the context
    (None for question and special tokens, which no answer may use)."""

    example_index: int
    offsets: list[tuple[int, int] | None]


def read_squad(path: str | Path) -> list[SquadExample]:
    """Every question of a SQuAD v1.1 or v2.0 JSON file, in file order; answers are checked against the context."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise LmforgeError(
            f"cannot read {path}: {e.strerror}; check the file exists and is readable"
        ) from None
    replacements = Replacements()
    try:
        text = replacements.clean(raw, str(path)).removeprefix("\ufeff")  # a byte order mark is not text
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise LmforgeError(f"{path} is not valid JSON ({e}); SQuAD files are one JSON document") from None
    data, replaced = clean_json(data)  # "\ud800" escapes decode to lone surrogates
    replacements.add_replacements(str(path), replaced)
    replacements.report()
    articles = data.get("data") if isinstance(data, dict) else None
    if not isinstance(articles, list):
        raise LmforgeError(
            f"{path} has no 'data' list; expected the SQuAD format {{'data': [{{'paragraphs': ...}}]}}"
        )
    examples = []
    for a, article in enumerate(articles):
        for p, paragraph in enumerate(_field(article, "paragraphs", list, f"{path}: data[{a}]")):
            where = f"{path}: data[{a}].paragraphs[{p}]"
            context = _field(paragraph, "context", str, where)
            for q, qa in enumerate(_field(paragraph, "qas", list, where)):
                examples.append(_read_question(qa, context, f"{where}.qas[{q}]"))
    if not examples:
        raise LmforgeError(f"{path} has no questions; a SQuAD file needs at least one")
    return examples


def read_questions(path: str | Path) -> list[SquadExample]:
    """Questions to answer (`lmforge answer --input`): a SQuAD JSON file, or JSON Lines of {"question",
    "context"} (each question's id is its "file:line")."""
    from lmforge.data.readers import jsonl_objects

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


def _read_question(qa: Any, context: str, where: str) -> SquadExample:
    qid = str(_field(qa, "id", (str, int), where))
    is_impossible = bool(qa.get("is_impossible", False))
    answers = []
    for i, answer in enumerate(_field(qa, "answers", list, where)):
        text = _field(answer, "text", str, f"{where}.answers[{i}]")
        start = _field(answer, "answer_start", int, f"{where}.answers[{i}]")
        if context[start : start + len(text)] != text:
            raise LmforgeError(
                f"answer {text!r} of question {qid} is not in its context at {start}; fix answer_start"
            )
        answers.append(SquadAnswer(text, start))
    if not answers and not is_impossible:
        raise LmforgeError(f"question {qid} ({where}) has no answers; give one or set is_impossible: true")
    question = _field(qa, "question", str, where).lstrip()  # as run_qa: leading spaces only waste tokens
    return SquadExample(qid, question, context, tuple(answers), is_impossible)


def _field(obj: Any, name: str, kind: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(obj, dict) or name not in obj:
        raise LmforgeError(f"{where} has no {name!r}; expected the SQuAD format")
    value = obj[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise LmforgeError(f"{where}: {name!r} is {type(value).__name__}; expected the SQuAD format")
    return value


def _windows(
    tokenizer: Tokenizer, examples: Sequence[SquadExample], max_length: int, stride: int
) -> list[tuple[int, tokenizers.Encoding]]:
    """(example index, encoding) for every window of every question, in order."""
    backend = truncating_backend(tokenizer, max_length, stride=stride, strategy="only_second", is_pair=True)
    # NOTE: the library panics (a BaseException) when the question leaves the context no more than
    # `stride` tokens; check first and name the question.
    room = max_length - backend.num_special_tokens_to_add(True) - stride
    windows = []
    for begin in range(0, len(examples), _ENCODE_CHUNK):
        chunk = examples[begin : begin + _ENCODE_CHUNK]
        questions = tokenizer.encode_batch([e.question for e in chunk], add_special_tokens=False)
        for example, question in zip(chunk, questions):
            if len(question) >= room:
                raise LmforgeError(
                    f"question {example.id} has {len(question)} tokens, too many to leave room for its context "
                    f"in {max_length} tokens with stride {stride}; pass a larger --max-length or a smaller --stride"
                )
        encodings = backend.encode_batch([(e.question, e.context) for e in chunk])
        for i, encoding in enumerate(encodings, start=begin):
            windows.extend((i, window) for window in [encoding, *encoding.overflowing])
    return windows


def _features(encoding: tokenizers.Encoding) -> dict[str, list[int]]:
    return {
        "input_ids": encoding.ids,
        "token_type_ids": encoding.type_ids,
        "attention_mask": encoding.attention_mask,
    }


def prepare_squad_train(
    tokenizer: Tokenizer, examples: Sequence[SquadExample], *, max_length: int = 384, stride: int = 128
) -> list[dict[str, Any]]:
    """Training features, one per window: input_ids, token_type_ids, attention_mask, start_positions,
    end_positions (token indices of the first answer, or 0, 0 when the window does not hold it)."""
    if not examples:
        raise LmforgeError("no SQuAD questions to encode; the dataset is empty")
    features = []
    for index, encoding in _windows(tokenizer, examples, max_length, stride):
        example = examples[index]
        start, end = 0, 0
        if example.answers and not example.is_impossible:
            answer = example.answers[0]  # as run_qa: a question with several answers trains on the first
            start, end = answer_token_span(encoding, answer.start, answer.start + len(answer.text))
        features.append({**_features(encoding), "start_positions": start, "end_positions": end})
    return features


def answer_token_span(encoding: tokenizers.Encoding, start_char: int, end_char: int) -> tuple[int, int]:
    """Token indices (start, end), inclusive, of the context characters [start_char, end_char), or (0, 0)
    when the window's context tokens do not cover them all."""
    context = [i for i, s in enumerate(encoding.sequence_ids) if s == 1]
    offsets = encoding.offsets
    if not context or offsets[context[0]][0] > start_char or offsets[context[-1]][1] < end_char:
        return 0, 0
    start = max(i for i in context if offsets[i][0] <= start_char)
    end = min(i for i in context if offsets[i][1] >= end_char)
    return start, end


def prepare_squad_eval(
    tokenizer: Tokenizer, examples: Sequence[SquadExample], *, max_length: int = 384, stride: int = 128
) -> tuple[list[dict[str, Any]], list[SquadWindow]]:
    """Inference features (input_ids, token_type_ids, attention_mask), one per window, and the windows'
    `SquadWindow`s, which `postprocess_squad` needs to map logits back to text."""
    if not examples:
        raise LmforgeError("no SQuAD questions to encode; the dataset is empty")
    features, windows = [], []
    for index, encoding in _windows(tokenizer, examples, max_length, stride):
        offsets = [o if s == 1 else None for o, s in zip(encoding.offsets, encoding.sequence_ids)]
        features.append(_features(encoding))
        windows.append(SquadWindow(index, offsets))
    return features, windows


def postprocess_squad(
    examples: Sequence[SquadExample],
    windows: Sequence[SquadWindow],
    start_logits: Any,
    end_logits: Any,
    *,
    n_best: int = 20,
    max_answer_length: int = 30,
    null_threshold: float | None = None,
) -> dict[str, str]:
    """{question id: answer text} from per-window start and end logits ((n_windows, T), tensors or lists;
    positions past a window's length, i.e. padding, are ignored).

    null_threshold None (SQuAD v1.1): always give the best span. A float (v2.0): give "" when the no-answer
    score minus the best span's score exceeds it (0.0 is the usual default).
    """
    start_logits, end_logits = _rows(start_logits), _rows(end_logits)
    if not len(windows) == len(start_logits) == len(end_logits):
        raise LmforgeError(
            f"got {len(start_logits)} start and {len(end_logits)} end logit rows for {len(windows)} windows; "
            "pass one row per window of prepare_squad_eval"
        )
    by_example = defaultdict(list)
    for window, starts, ends in zip(windows, start_logits, end_logits):
        by_example[window.example_index].append((window, starts, ends))
    predictions = {}
    for index, example in enumerate(examples):
        best_score, best_text, null_score = None, "", None
        for window, starts, ends in by_example[index]:
            window_null = starts[0] + ends[0]
            null_score = window_null if null_score is None else min(null_score, window_null)
            for score, first, last in _best_spans(window.offsets, starts, ends, n_best, max_answer_length):
                if best_score is None or score > best_score:
                    best_score, best_text = score, example.context[first:last]
        is_null = best_score is None or (
            null_threshold is not None and null_score - best_score > null_threshold
        )
        predictions[example.id] = "" if is_null else best_text.strip()
    return predictions


def _best_spans(offsets, starts, ends, n_best: int, max_answer_length: int):
    """(score, first char, end char) of valid spans among the n_best highest start and end positions."""
    n = len(offsets)
    top_starts = sorted(range(n), key=lambda i: starts[i], reverse=True)[:n_best]
    top_ends = sorted(range(n), key=lambda i: ends[i], reverse=True)[:n_best]
    for i in top_starts:
        for j in top_ends:
            if offsets[i] is None or offsets[j] is None or j < i or j - i + 1 > max_answer_length:
                continue
            yield starts[i] + ends[j], offsets[i][0], offsets[j][1]


def _rows(logits: Any) -> list[list[float]]:
    if hasattr(logits, "tolist"):  # a tensor or an array, without importing either
        logits = logits.tolist()
    return [list(map(float, row.tolist() if hasattr(row, "tolist") else row)) for row in logits]
