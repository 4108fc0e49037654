"""Text classification data: CSV or JSON Lines rows of a text, an optional second text and a label.

Each row has `text`, optionally `text_pair` (sentence-pair tasks such as entailment) and `label`, under
configurable column names. A label is a name ("positive") or an integer id; a CSV cell of digits is an id.
The label map (name <-> id) is built from the training data: names sorted, or in the order given; with
integer ids, id i is named str(i) and the map covers 0..max. It is saved as JSON, and `id2label` /
`label2id` are the dicts Hugging Face keeps in a classifier's config.json.

Encoding uses the tokenizer's own framing (`Tokenizer.encode_inputs`): for BERT `[CLS] a [SEP] b [SEP]`
with token type 1 on b, truncated longest-first to max_length (Devlin et al. 2019, section 3).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.data.readers import JSONL_SUFFIXES, jsonl_objects
from lmforge.errors import LmforgeError
from lmforge.text import clean_input
from lmforge.tokenizers import Tokenizer

_ENCODE_CHUNK = 1024  # examples encoded (and padded) per call to the tokenizer


@dataclass(frozen=True)
class ClassificationExample:
    text: str
    label: str  # the label's name; an integer id is kept as its decimal string
    text_pair: str | None = None
    where: str = ""  # "file:line", for error messages


class LabelMap:
    """Label names <-> ids 0..n-1."""

    def __init__(self, names: Sequence[str]):
        if not names:
            raise LmforgeError("a label map needs at least one label; the training data has none")
        if len(set(names)) != len(names):
            raise LmforgeError(f"label names must be distinct, got {list(names)}")
        self.names = [str(n) for n in names]
        self.label2id = {name: i for i, name in enumerate(self.names)}
        self.id2label = dict(enumerate(self.names))

    @classmethod
    def from_examples(
        cls, examples: Sequence[ClassificationExample], order: Sequence[str] | None = None
    ) -> LabelMap:
        """The labels of the training examples: in `order` when given, else sorted (ids numerically)."""
        seen = {e.label for e in examples}
        if order is not None:
            missing = sorted(seen - set(map(str, order)))
            if missing:
                raise LmforgeError(f"labels {missing} of the training data are not in the given label order")
            return cls(list(order))
        if seen and all(label.isdigit() for label in seen):
            return cls([str(i) for i in range(max(map(int, seen)) + 1)])
        return cls(sorted(seen))

    def __len__(self) -> int:
        return len(self.names)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, LabelMap) and other.names == self.names

    def id_of(self, example: ClassificationExample) -> int:
        """The id of an example's label; an unknown label is an error naming it, its line and the known ones."""
        if example.label not in self.label2id:
            known = ", ".join(map(repr, self.names))
            raise LmforgeError(
                f"{example.where} has label {example.label!r}, which the training data does not have "
                f"(known labels: {known}); fix the label or add it to the training data"
            )
        return self.label2id[example.label]

    def save(self, path: str | Path) -> None:
        """Write {"id2label": {"0": name, ...}, "label2id": {name: 0, ...}} (config.json's spelling)."""
        data = {"id2label": {str(i): n for i, n in self.id2label.items()}, "label2id": self.label2id}
        Path(path).write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> LabelMap:
        """Read a label map written by `save`, or any JSON object with an `id2label` dict (a config.json)."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
            id2label = data["id2label"]
            ids = sorted(int(i) for i in id2label)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise LmforgeError(
                f"cannot read a label map from {path} ({type(e).__name__}: {e}); "
                "it should be JSON with an 'id2label' object"
            ) from None
        if ids != list(range(len(ids))):
            raise LmforgeError(f"{path}: id2label ids should be 0..{len(ids) - 1}, got {ids}")
        return cls([id2label[str(i)] for i in ids])


def read_classification(
    path: str | Path,
    *,
    text_column: str = "text",
    text_pair_column: str | None = None,
    label_column: str = "label",
) -> list[ClassificationExample]:
    """The examples of a `.csv` file or a `.jsonl`/`.json` file (JSON Lines), in file order.

    text_pair_column: None reads a "text_pair" column when the file has one; a name makes it required.
    An empty or null text pair means a single text.
    """
    path = Path(path)
    rows = _jsonl_rows(path) if path.suffix.lower() in JSONL_SUFFIXES else _csv_rows(path)
    examples = []
    for where, row in rows:
        _require(row, text_column, where, "--text-column")
        _require(row, label_column, where, "--label-column")
        pair_column = text_pair_column or "text_pair"
        if text_pair_column is not None:
            _require(row, pair_column, where, "--text-pair-column")
        pair = row.get(pair_column) or None  # an empty cell: a single text
        examples.append(
            ClassificationExample(
                text=_text(row[text_column], text_column, where),
                text_pair=None if pair is None else _text(pair, pair_column, where),
                label=_label(row[label_column], where),
                where=where,
            )
        )
    if not examples:
        raise LmforgeError(f"{path} has no examples; a classification file needs at least one row")
    return examples


def _csv_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise LmforgeError(
            f"cannot read {path}: {e.strerror}; check the file exists and is readable"
        ) from None
    text = clean_input(raw, str(path))
    reader = csv.DictReader(text.removeprefix("\ufeff").splitlines(keepends=True))
    try:
        for row in reader:
            if None in row:  # more cells than header names
                raise LmforgeError(f"{path}:{reader.line_num} has more cells than the header has columns")
            if any(v for v in row.values()):
                yield f"{path}:{reader.line_num}", row
    except csv.Error as e:
        raise LmforgeError(f"{path}:{reader.line_num} is not valid CSV ({e}); check its quoting") from None


def _jsonl_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    return jsonl_objects(path)


def _require(row: dict[str, Any], column: str, where: str, flag: str) -> None:
    if column not in row:
        columns = ", ".join(map(repr, row)) or "none"
        raise LmforgeError(f"{where} has no column {column!r} (columns: {columns}); pass {flag}")


def _text(value: Any, column: str, where: str) -> str:
    if not isinstance(value, str):
        raise LmforgeError(f"{where}: column {column!r} is {type(value).__name__}, not text")
    return value


def _label(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise LmforgeError(f"{where}: the label {value!r} should be a name or an integer id")
    if isinstance(value, int) and value < 0:
        raise LmforgeError(f"{where}: the label id {value} is negative; ids start at 0")
    label = str(value).strip()
    if not label:
        raise LmforgeError(f"{where} has an empty label; give every row a label")
    return label


def encode_classification(
    tokenizer: Tokenizer,
    examples: Sequence[ClassificationExample],
    label_map: LabelMap,
    *,
    max_length: int | None = None,
) -> list[dict[str, Any]]:
    """One feature per example: input_ids, token_type_ids, attention_mask (unpadded) and the label id.

    Texts are cut to max_length tokens (default: the tokenizer's model_max_length), special tokens included.
    """
    if not examples:
        raise LmforgeError("no examples to encode; the dataset is empty")
    labels = [label_map.id_of(e) for e in examples]  # fail on an unknown label before any work
    features = []
    # Without a pad token, rows of different lengths cannot share a call: encode them one by one.
    step = _ENCODE_CHUNK if tokenizer.pad_token_id is not None else 1
    for start in range(0, len(examples), step):
        chunk = examples[start : start + step]
        inputs = [e.text if e.text_pair is None else (e.text, e.text_pair) for e in chunk]
        batch = tokenizer.encode_inputs(inputs, max_length=max_length)
        for i, mask in enumerate(batch["attention_mask"]):
            n = sum(mask)
            features.append(
                {
                    "input_ids": batch["input_ids"][i][:n],
                    "token_type_ids": batch["token_type_ids"][i][:n],
                    "attention_mask": mask[:n],
                    "labels": labels[start + i],
                }
            )
    return features
