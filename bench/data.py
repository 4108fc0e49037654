"""Data preparation speed: `lmforge prepare` (read the files, count, split, tokenize, write token
files) against the `tokenizers` library's `encode_batch` alone on the same text already in memory,
with the same tokenizer. The ratio is what prepare's reading, splitting and writing cost on top.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from bench.timing import interleave, ratio, timed
from lmforge.data.prepare import PrepareConfig, prepare
from lmforge.data.readers import read_files
from lmforge.data.sources import builtin_corpus_files
from lmforge.tokenizers import train_tokenizer

TOKENIZER_SAMPLE_BYTES = 1_000_000  # the tokenizer is trained on at most this much of the corpus


@dataclass(frozen=True)
class DataCase:
    megabytes: float  # corpus size: the first built-in corpus files (Python's standard library) up to it
    vocab_size: int = 4096


def corpus_files(megabytes: float) -> list[Path]:
    """The first built-in corpus files whose sizes add up to at least `megabytes`."""
    files, size = [], 0
    for f in builtin_corpus_files():
        if size >= megabytes * 1e6:
            break
        files.append(f)
        size += f.stat().st_size
    return files


def run_case(case: DataCase, *, warmup: int, repeats: int) -> dict:
    """MB/s of both sides on one corpus."""
    import tokenizers

    files = corpus_files(case.megabytes)
    texts = list(read_files(files))
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    with tempfile.TemporaryDirectory(prefix="lmforge-bench-") as tmp:
        sample, size = [], 0
        for text in texts:
            if size >= TOKENIZER_SAMPLE_BYTES:
                break
            sample.append(text)
            size += len(text)
        train_tokenizer(iter(sample), vocab_size=case.vocab_size).save_pretrained(Path(tmp, "tokenizer"))
        backend = tokenizers.Tokenizer.from_file(str(Path(tmp, "tokenizer", "tokenizer.json")))
        config = PrepareConfig(
            data=[str(f) for f in files], out=str(Path(tmp, "out")), tokenizer=str(Path(tmp, "tokenizer"))
        )
        manifest = {}

        def run_prepare() -> dict:
            seconds = timed(lambda: manifest.update(prepare(config, progress=False)))
            return {"seconds": seconds, "mb_per_s": n_bytes / 1e6 / seconds}

        def run_encode_batch() -> dict:
            seconds = timed(lambda: backend.encode_batch(texts, add_special_tokens=False))
            return {"seconds": seconds, "mb_per_s": n_bytes / 1e6 / seconds}

        sides = {"lmforge": run_prepare, "tokenizers": run_encode_batch}
        result = interleave(sides, warmup=warmup, repeats=repeats, label=f"data {case.megabytes} MB")
    row = {
        "megabytes": n_bytes / 1e6,
        "files": len(files),
        "tokens": manifest["train_tokens"] + manifest["val_tokens"],
        "vocab_size": case.vocab_size,
        "runs": repeats,
    }
    for side in sides:
        row[side] = {"mb_per_s": result[side]["median"]["mb_per_s"]}
    row["ratio"] = {"mb_per_s": ratio(row["lmforge"]["mb_per_s"], row["tokenizers"]["mb_per_s"])}
    return row
