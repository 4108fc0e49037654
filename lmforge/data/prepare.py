"""`lmforge prepare`: a text corpus in, token files for pretraining out (format in lmforge/data/tokens.py).

1. Read the documents (lmforge/data/readers.py); train a tokenizer on them (byte-level BPE, or the
   --tokenizer-kind a pretraining objective needs) unless one is given. This first pass also counts
   the documents.
2. Split by document: a seeded shuffle of document indices picks the validation ones (at least one when
   there are two or more). A corpus of one document is split by tokens instead: its tail is validation.
3. Tokenize in chunks with `encode_batch` (parallel in Rust), each document followed by EOS, streaming
   the ids to OUT/train.bin and OUT/val.bin: memory holds one chunk, not the corpus's tokens.
4. Save the tokenizer and manifest.json.

Everything is written into a staging directory inside OUT and moved into place (os.replace) only once
complete, manifest last: a failed run leaves an earlier good output as it was.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lmforge.config import INT64, bounded, check_fields
from lmforge.data.readers import ReadStats, read_dataset, read_files
from lmforge.data.sources import builtin_corpus_files, expand_paths
from lmforge.data.tokens import FORMAT, token_dtype
from lmforge.errors import LmforgeError
from lmforge.tokenizers import Tokenizer, load_tokenizer, train_tokenizer
from lmforge.tokenizers.train import KINDS as TOKENIZER_KINDS

# Long documents are encoded in pieces of about this many characters, cut at line ends, so that one
# encode call never holds a whole book's offsets, and a long document still spreads over all threads.
_PIECE_CHARS = 1 << 16
# Characters per `encode_batch` call: bounds the ids held in memory at once.
_CHUNK_CHARS = 1 << 22


@dataclass
class PrepareConfig:
    """What `lmforge prepare` reads, how it tokenizes, and where it writes."""

    data: list[str] = field(default_factory=list)  # files or directories; empty: the built-in corpus
    out: str = ""  # the directory for train.bin, val.bin, manifest.json and the tokenizer
    glob: str = "*.txt"  # which files to take from directories (recursively)
    jsonl_field: str = "text"  # the text field of JSON Lines records
    parquet_column: str = "text"  # the text column of Parquet files
    dataset: str | None = None  # a Hugging Face dataset name or local path, read with `datasets`
    dataset_split: str = "train"  # the split of --dataset
    dataset_column: str = "text"  # the text column of --dataset
    tokenizer: str | None = None  # a tokenizer directory; None trains one of --tokenizer-kind on the data
    tokenizer_kind: str = "bpe"  # of the tokenizer trained: bpe, wordpiece (for mlm), unigram (for span)
    vocab_size: int = bounded(4096, ge=1, lt=2**31)  # of the tokenizer trained when none is given
    val_fraction: float = bounded(0.01, gt=0, lt=0.5)  # share of documents held out for validation
    seed: int = bounded(1337, ge=0, lt=INT64)  # seeds the train/validation split
    workers: int | None = bounded(None, ge=1, le=1024)  # tokenizer threads; None: all cores

    def __post_init__(self):
        check_fields(self)


def prepare(config: PrepareConfig, *, progress: bool = True) -> dict:
    """Tokenize the corpus into config.out (train.bin, val.bin, tokenizer, manifest.json); the manifest."""
    _check_config(config)
    out = Path(config.out)
    open_documents, sources = _corpus(config)
    staging = _make_staging_dir(out)
    try:
        stats = ReadStats()
        tok = _tokenizer_from_first_pass(config, open_documents(stats), sources, progress)
        manifest = _write_tokens(config, tok, open_documents, stats, staging, progress)
        tok.save_pretrained(staging)
        manifest.update(
            tokenizer_sha256=hashlib.sha256((staging / "tokenizer.json").read_bytes()).hexdigest(),
            sources=sources,
            replaced_bytes=stats.replaced_bytes,
            files_with_replacements=stats.listed_files,
            seed=config.seed,
        )
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _publish(staging, out)
    except OSError as e:  # reading errors are LmforgeErrors already: this is the output failing
        raise LmforgeError(
            f"cannot write {e.filename or out} ({e.strerror or e}); check the disk and --out"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    stats.report()
    return manifest


def _check_config(config: PrepareConfig) -> None:
    check_fields(config)  # again: a field may have been set since
    if not config.out:
        raise LmforgeError("no output directory; pass --out DIR")
    if config.tokenizer is None and config.tokenizer_kind not in TOKENIZER_KINDS:
        raise LmforgeError(
            f"unknown tokenizer kind {config.tokenizer_kind!r}; pass --tokenizer-kind "
            f"{' or '.join(TOKENIZER_KINDS)}"
        )
    if config.workers is not None:
        # NOTE: rayon reads this once, when the first parallel encode in the process starts its threads.
        os.environ["RAYON_NUM_THREADS"] = str(config.workers)


def _corpus(config: PrepareConfig) -> tuple[Callable[[ReadStats], Iterator[str]], list[str]]:
    """A function that opens a fresh pass over the documents, and the sources' names for the manifest."""
    files = []
    if config.data or config.dataset is None:
        files = expand_paths(config.data, config.glob) if config.data else builtin_corpus_files()
    sources = list(config.data) or ([os.path.commonpath(files)] if files else [])
    if config.dataset is not None:
        sources.append(config.dataset)

    def open_documents(stats: ReadStats) -> Iterator[str]:
        yield from read_files(
            files, jsonl_field=config.jsonl_field, parquet_column=config.parquet_column, stats=stats
        )
        if config.dataset is not None:
            yield from read_dataset(
                config.dataset, split=config.dataset_split, column=config.dataset_column, stats=stats
            )

    return open_documents, sources


def _make_staging_dir(out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".prepare-", dir=out))
    except OSError as e:
        raise LmforgeError(f"cannot write to {out} ({e.strerror}); pass --out a writable directory") from None


def _tokenizer_from_first_pass(
    config: PrepareConfig, documents: Iterator[str], sources: list[str], progress: bool
) -> Tokenizer:
    """The given tokenizer, or one trained on the documents; either way the pass counts them all."""
    tok = load_tokenizer(config.tokenizer) if config.tokenizer is not None else None
    first = next(documents, None)
    if first is None:
        named = ", ".join(sources[:3]) + (", ..." if len(sources) > 3 else "")
        raise LmforgeError(f"the corpus is empty: {named} hold no text; pass files with text")
    documents = itertools.chain([first], documents)
    if tok is None:
        tok = train_tokenizer(
            documents, vocab_size=config.vocab_size, kind=config.tokenizer_kind, show_progress=progress
        )
    for _ in documents:  # counting, with a given tokenizer (training reads them all already)
        pass
    if tok.eos_token_id is None:
        raise LmforgeError(
            f"tokenizer {config.tokenizer} has no end-of-text token to separate documents; use one that has"
        )
    return tok


def validation_mask(n_documents: int, val_fraction: float, seed: int) -> np.ndarray:
    """Which documents are validation: round(n * val_fraction) of them, at least 1 (of 2 or more)."""
    is_val = np.zeros(n_documents, dtype=bool)
    if n_documents >= 2:
        n_val = min(n_documents - 1, max(1, round(n_documents * val_fraction)))
        is_val[np.random.default_rng(seed).permutation(n_documents)[:n_val]] = True
    return is_val


def _write_tokens(
    config: PrepareConfig,
    tok: Tokenizer,
    open_documents: Callable[[ReadStats], Iterator[str]],
    first_pass: ReadStats,
    staging: Path,
    progress: bool,
) -> dict:
    """Second pass: tokenize into staging/train.bin and staging/val.bin; the manifest's counts."""
    vocab_size = _id_bound(tok)
    dtype = token_dtype(vocab_size)
    is_val = validation_mask(first_pass.documents, config.val_fraction, config.seed)
    second_pass = ReadStats()
    with (
        open(staging / "train.bin", "wb") as train_file,
        open(staging / "val.bin", "wb") as val_file,
        tqdm(
            total=first_pass.characters, unit="char", unit_scale=True, desc="tokenizing", disable=not progress
        ) as bar,
    ):
        train, val = _TokenStream(train_file, dtype), _TokenStream(val_file, dtype)
        streams = (val if is_val[i] else train for i in range(len(is_val)))
        documents = _checked_count(open_documents(second_pass), first_pass.documents)
        _tokenize(zip(documents, streams), tok, bar)
        train.flush()
        val.flush()
    train_tokens, val_tokens = train.tokens, val.tokens
    if first_pass.documents == 1:
        train_tokens, val_tokens = _split_tail(staging, dtype, config.val_fraction)
    return {
        "format": FORMAT,
        "dtype": dtype.name,
        "vocab_size": vocab_size,
        "eos_token_id": tok.eos_token_id,
        "train_tokens": train_tokens,
        "val_tokens": val_tokens,
        "train_documents": train.documents,
        "val_documents": val.documents,
    }


def _id_bound(tok: Tokenizer) -> int:
    """One more than the largest id the tokenizer can produce: the vocabulary a model needs."""
    largest = max(tok.backend.get_vocab(with_added_tokens=True).values(), default=-1)
    return max(tok.vocab_size, largest + 1)


def _checked_count(documents: Iterator[str], expected: int) -> Iterator[str]:
    """The documents, which must be as many as the first pass counted (a file may change in between)."""
    count = 0
    for doc in documents:
        count += 1
        if count > expected:
            break
        yield doc
    if count != expected:
        raise LmforgeError("the corpus changed while it was being prepared; run `lmforge prepare` again")


class _TokenStream:
    """Token ids appended to a raw little-endian file through numpy, one chunk at a time."""

    def __init__(self, file, dtype: np.dtype):
        self.file, self.dtype = file, dtype
        self.tokens = self.documents = 0
        self.pending: list[int] = []

    def flush(self) -> None:
        if self.pending:
            np.asarray(self.pending, dtype=self.dtype).tofile(self.file)
            self.tokens += len(self.pending)
            self.pending = []


def _tokenize(documents: Iterator[tuple[str, _TokenStream]], tok: Tokenizer, bar: tqdm) -> None:
    """Encode documents into their streams, each followed by EOS, in chunks of about _CHUNK_CHARS."""
    texts: list[str] = []
    owners: list[tuple[_TokenStream, bool]] = []  # (stream, is the document's last piece)
    size = 0
    for doc, stream in documents:
        stream.documents += 1
        for piece, is_last in _pieces(doc):
            texts.append(piece)
            owners.append((stream, is_last))
            size += len(piece)
            if size >= _CHUNK_CHARS:
                _encode_chunk(texts, owners, tok, bar)
                texts, owners, size = [], [], 0
    _encode_chunk(texts, owners, tok, bar)


def _encode_chunk(
    texts: list[str], owners: list[tuple[_TokenStream, bool]], tok: Tokenizer, bar: tqdm
) -> None:
    # add_special_tokens=False: no BOS per piece; EOS marks document ends, as in GPT-2's training data.
    for ids, (stream, is_last) in zip(tok.encode_batch(texts, add_special_tokens=False), owners):
        stream.pending.extend(ids)
        if is_last:
            stream.pending.append(tok.eos_token_id)
    for stream in {id(s): s for s, _ in owners}.values():
        stream.flush()
    bar.update(sum(map(len, texts)))


def _pieces(doc: str) -> Iterator[tuple[str, bool]]:
    """(piece, is_last): the document in pieces of at most _PIECE_CHARS, cut after a newline if there is one.

    NOTE: a cut may tokenize differently from the whole (a run of newlines split in two), and a tokenizer
    that prepends a space to every input (SentencePiece's Metaspace) adds one per piece; byte-level BPE
    decodes the pieces back to the exact document.
    """
    start = 0
    while len(doc) - start > _PIECE_CHARS:
        end = doc.rfind("\n", start, start + _PIECE_CHARS) + 1 or start + _PIECE_CHARS
        yield doc[start:end], False
        start = end
    yield doc[start:], True


# A one-document corpus keeps at least this many tokens on each side of its split: one window of two
# tokens and the token after it, the least pretraining can use (lmforge/train/pretrain.py, fit_windows).
MIN_SPLIT_TOKENS = 3


def _split_tail(staging: Path, dtype: np.dtype, val_fraction: float) -> tuple[int, int]:
    """Move the last val_fraction of train.bin's tokens to val.bin, at least MIN_SPLIT_TOKENS while the
    training part keeps as many (a tiny corpus is split in half); (train, val) counts."""
    train_path = staging / "train.bin"
    n_tokens = train_path.stat().st_size // dtype.itemsize
    n_val = min(n_tokens // 2, max(MIN_SPLIT_TOKENS, round(n_tokens * val_fraction)))
    cut = (n_tokens - n_val) * dtype.itemsize
    np.fromfile(train_path, dtype=dtype, offset=cut).tofile(staging / "val.bin")
    os.truncate(train_path, cut)
    return n_tokens - n_val, n_val


def _publish(staging: Path, out: Path) -> None:
    """Move the finished files into OUT, the manifest last: it is what marks the output complete."""
    names = sorted(p.name for p in staging.iterdir() if p.name != "manifest.json")
    for name in [*names, "manifest.json"]:
        os.replace(staging / name, out / name)
