"""Documents (strings) from text files, JSON Lines, Parquet and Hugging Face datasets.

Formats, chosen by file suffix:
- plain text (any other suffix): the whole file is one document.
- JSON Lines (`.jsonl`, `.json`; https://jsonlines.org): one JSON object per line, the document is one of
  its string fields.
- Apache Parquet (`.parquet`; https://parquet.apache.org/docs/file-format/): one string column, read one
  record batch at a time through pyarrow.
- a Hugging Face dataset (`datasets` library), by hub name or local path: one string column of one split.

Text is UTF-8. Invalid byte sequences, and lone surrogates that JSON escapes ("\\ud800") spell, become U+FFFD
(lmforge/text.py), and `ReadStats` counts them, so that a corpus with a few bad bytes is still usable and
the damage is reported, never a crash. Empty documents are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lmforge.errors import LmforgeError
from lmforge.text import Replacements, clean_json, decode_utf8

JSONL_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIXES = (".parquet",)
# A text file with invalid UTF-8 sequences in more than 1/_BINARY_FRACTION of its bytes is refused as binary.
_BINARY_FRACTION = 4
_BOM = "\ufeff"  # a byte order mark some editors put first; it is not text
_PARQUET_BATCH_ROWS = 1024


@dataclass
class ReadStats(Replacements):
    """What a pass over the corpus saw: documents, and (as Replacements) the damage replaced by U+FFFD."""

    documents: int = 0
    characters: int = 0


def read_files(
    paths: Iterable[str | Path],
    *,
    jsonl_field: str = "text",
    parquet_column: str = "text",
    stats: ReadStats | None = None,
) -> Iterator[str]:
    """Non-empty documents of every file in order, each read by its suffix (see the module docstring)."""
    stats = stats if stats is not None else ReadStats()
    for path in map(Path, paths):
        suffix = path.suffix.lower()
        if suffix in JSONL_SUFFIXES:
            docs = _read_jsonl(path, jsonl_field, stats)
        elif suffix in PARQUET_SUFFIXES:
            docs = _read_parquet(path, parquet_column, stats)
        else:
            docs = _read_text(path, stats)
        for doc in docs:
            if doc:
                stats.documents += 1
                stats.characters += len(doc)
                yield doc


def _open(path: Path):
    try:
        return path.open("rb")
    except OSError as e:
        raise LmforgeError(
            f"cannot read {path}: {e.strerror}; check the file exists and is readable"
        ) from None


def _read_text(path: Path, stats: ReadStats) -> Iterator[str]:
    with _open(path) as f:
        data = f.read()
    text, replaced = decode_utf8(data)
    # A few bad bytes in a text file are replaced and reported; a file that is mostly not UTF-8 (or holds
    # NUL bytes) is binary or in another encoding, and training on it would be training on noise.
    has_nul = b"\x00" in data
    if has_nul or replaced * _BINARY_FRACTION > len(data):
        nul = ", and NUL bytes" if has_nul else ""
        raise LmforgeError(
            f"{path} is not UTF-8 text ({replaced} invalid byte sequences in {len(data)} bytes{nul}); "
            "convert it to UTF-8 "
            "(e.g. `iconv -f latin1 -t utf-8`) or leave it out with --glob"
        )
    stats.add_replacements(str(path), replaced)
    yield text.removeprefix(_BOM)


def jsonl_objects(path: str | Path, stats: Replacements | None = None) -> Iterator[tuple[str, dict]]:
    """("file:line", object) for every non-blank line of a JSON Lines file; one clear error otherwise.

    Every string of an object is clean text; stats counts what was replaced. Without stats, the count is
    reported on standard error once the whole file is read.
    """
    path = Path(path)
    source = str(path)
    report_here = stats is None
    stats = Replacements() if stats is None else stats
    with _open(path) as f:
        # Lines split on b"\n", which is never inside a multi-byte UTF-8 sequence: decoding per line is exact.
        for line_number, raw in enumerate(f, start=1):
            line = stats.clean(raw, source)
            if line_number == 1:
                line = line.removeprefix(_BOM)
            if not line.strip():
                continue
            where = f"{path}:{line_number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise LmforgeError(
                    f"{where} is not valid JSON ({e.msg}); JSON Lines input needs one JSON object per line"
                ) from None
            if not isinstance(record, dict):
                raise LmforgeError(
                    f"{where} is not a JSON object; JSON Lines input needs one object per line"
                )
            record, replaced = clean_json(record)  # "\ud800" escapes decode to lone surrogates
            stats.add_replacements(source, replaced)
            yield where, record
    if report_here:
        stats.report()


def _read_jsonl(path: Path, field_name: str, stats: ReadStats) -> Iterator[str]:
    for where, record in jsonl_objects(path, stats):
        yield _jsonl_text(record, field_name, where)


def _jsonl_text(record: dict, field_name: str, where: str) -> str:
    if field_name not in record:
        fields = ", ".join(map(repr, record)) or "none"
        raise LmforgeError(
            f"{where} has no field {field_name!r} (fields: {fields}); pass --jsonl-field to name the text field"
        )
    text = record[field_name]
    if not isinstance(text, str):
        raise LmforgeError(f"{where}: field {field_name!r} is {type(text).__name__}, not a string of text")
    return text


def _read_parquet(path: Path, column: str, stats: ReadStats) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise LmforgeError("reading Parquet needs pyarrow: pip install pyarrow") from None
    try:
        parquet = pq.ParquetFile(str(path))
    except (OSError, ValueError) as e:  # pyarrow's ArrowIOError is an OSError, ArrowInvalid a ValueError
        raise LmforgeError(f"cannot read {path} as Parquet ({e}); check the file") from None
    names = parquet.schema_arrow.names
    if column not in names:
        raise LmforgeError(
            f"{path} has no column {column!r} (columns: {', '.join(names)}); pass --parquet-column to choose one"
        )
    for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=[column]):
        yield from _column_texts(batch.column(0).to_pylist(), f"{path} column {column!r}", stats)


def _column_texts(values: list, where: str, stats: ReadStats) -> Iterator[str]:
    """Strings of a column, cleaned; bytes are decoded as UTF-8, nulls skipped."""
    for value in values:
        if value is None:
            continue
        if not isinstance(value, (str, bytes)):
            raise LmforgeError(f"{where} holds {type(value).__name__} values, not text; choose a text column")
        yield stats.clean(value, where)


def read_dataset(
    name: str, *, split: str = "train", column: str = "text", stats: ReadStats | None = None
) -> Iterator[str]:
    """Non-empty documents of one column of a Hugging Face dataset (a hub name, or a local path)."""
    stats = stats if stats is not None else ReadStats()
    dataset = _load_dataset(name, split)
    if column not in dataset.column_names:
        raise LmforgeError(
            f"dataset {name!r} has no column {column!r} (columns: {', '.join(dataset.column_names)}); "
            "pass --dataset-column to choose one"
        )
    for batch in dataset.select_columns([column]).iter(batch_size=_PARQUET_BATCH_ROWS):
        for doc in _column_texts(batch[column], f"dataset {name!r} column {column!r}", stats):
            if doc:
                stats.documents += 1
                stats.characters += len(doc)
                yield doc


def _load_dataset(name: str, split: str):
    try:
        import datasets
    except ImportError:
        raise LmforgeError(
            "reading a Hugging Face dataset needs the datasets package: pip install 'lmforge[data]'"
        ) from None
    path = Path(name)
    try:
        if path.is_dir() and any((path / f).is_file() for f in ("dataset_dict.json", "state.json")):
            dataset = datasets.load_from_disk(str(path))  # a directory written by save_to_disk
            if isinstance(dataset, datasets.DatasetDict):
                if split not in dataset:
                    raise LmforgeError(
                        f"dataset {name!r} has no split {split!r} (splits: {', '.join(dataset)}); "
                        "pass --dataset-split to choose one"
                    )
                dataset = dataset[split]
            return dataset
        return datasets.load_dataset(name, split=split)
    except LmforgeError:
        raise
    except Exception as e:  # the library raises many types (hub, file, split errors); all mean "cannot load"
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LmforgeError(
            f"cannot load dataset {name!r} split {split!r} ({message}); check the name, path and split"
        ) from None
