"""Sequence-to-sequence data (translation, summarisation): JSON Lines rows of `source` and `target`.

As in T5 (Raffel et al. 2020, section 2.4) every task is text-to-text, told apart by a prefix on the source
("summarize: ", "translate English to German: "). Sources become the encoder's input_ids; targets become
labels, ending with the end-of-sequence token so that the model learns to stop (T5's tokenizer appends
</s> itself; for others, the eos id is appended). The decoder input is the labels shifted right
(`lmforge.train.loss.shift_right`), so it is not stored here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.data.readers import jsonl_objects
from lmforge.data.tasks.features import truncating_backend
from lmforge.errors import LmforgeError
from lmforge.tokenizers import Tokenizer

_ENCODE_CHUNK = 1024


@dataclass(frozen=True)
class Seq2SeqExample:
    source: str
    target: str
    where: str = ""  # "file:line", for error messages


def read_seq2seq(
    path: str | Path, *, source_field: str = "source", target_field: str = "target", prefix: str = ""
) -> list[Seq2SeqExample]:
    """The rows of a JSON Lines file, `prefix` (say "summarize: ") prepended to every source."""
    path = Path(path)
    examples = []
    for where, row in jsonl_objects(path):
        source = _text_field(row, source_field, where, "--source-field")
        target = _text_field(row, target_field, where, "--target-field")
        examples.append(Seq2SeqExample(prefix + source, target, where))
    if not examples:
        raise LmforgeError(f"{path} has no examples; a seq2seq file needs at least one line")
    return examples


def _text_field(row: dict[str, Any], name: str, where: str, flag: str) -> str:
    if name not in row:
        fields = ", ".join(map(repr, row)) or "none"
        raise LmforgeError(f"{where} has no field {name!r} (fields: {fields}); pass {flag}")
    if not isinstance(row[name], str):
        raise LmforgeError(f"{where}: field {name!r} is {type(row[name]).__name__}, not text")
    return row[name]


def encode_seq2seq(
    tokenizer: Tokenizer,
    examples: Sequence[Seq2SeqExample],
    *,
    max_source_length: int | None = 512,
    max_target_length: int | None = 128,
) -> list[dict[str, list[int]]]:
    """One feature per example: input_ids and attention_mask of the source, labels = target ids + eos.

    Both are cut to their max length with the end-of-sequence token kept.
    """
    if not examples:
        raise LmforgeError("no seq2seq examples to encode; the dataset is empty")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise LmforgeError(
            "the tokenizer has no eos token, so targets cannot end; use one that has (T5's </s>)"
        )
    sources = truncating_backend(tokenizer, max_source_length)
    targets = truncating_backend(tokenizer, max_target_length)
    features = []
    for begin in range(0, len(examples), _ENCODE_CHUNK):
        chunk = examples[begin : begin + _ENCODE_CHUNK]
        source_ids = [e.ids for e in sources.encode_batch([e.source for e in chunk])]
        target_ids = [e.ids for e in targets.encode_batch([e.target for e in chunk])]
        for ids, labels in zip(source_ids, target_ids):
            labels = _end_with(labels, eos, max_target_length)
            features.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    return features


def _end_with(ids: list[int], eos: int, max_length: int | None) -> list[int]:
    """ids ending with eos, at most max_length long: the post-processor may have added it already, else
    it is appended, in place of the last token when ids are full."""
    if ids and ids[-1] == eos:
        return ids
    ids = ids + [eos]
    if max_length is not None and len(ids) > max_length:
        ids = ids[: max_length - 1] + [eos]
    return ids
