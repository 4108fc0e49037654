"""Clean text: what every input becomes before lmforge uses it (The Unicode Standard, section 3.9, U+FFFD).

Text reaches lmforge in two damaged forms. Bytes (files, standard input) may hold invalid UTF-8. A `str` may
hold lone surrogates (U+D800..U+DFFF): Python decodes command-line arguments with surrogateescape (PEP 383),
so an invalid byte in `--prompt` arrives as one of U+DC80..U+DCFF, and JSON's escape "\\ud800" decodes to a
lone surrogate. Neither is a character: UTF-8 cannot encode it and the tokenizer refuses it.

`clean_text` replaces each invalid byte sequence (as Python's "replace" error handler does) and each
surrogate with one U+FFFD and says how many it replaced; `Replacements` counts them per source and tells
the user in one line on stderr. Damaged input is used and reported, never a crash. Every entry uses them:
the readers (lmforge/data/readers.py), tokenizer training, and the command line's arguments and files.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from typing import Any

REPLACEMENT = "\ufffd"
_REPLACEMENT_UTF8 = REPLACEMENT.encode("utf-8")
_SURROGATE = re.compile("[\ud800-\udfff]")
# A report (and prepare's manifest) names at most this many damaged sources; `sources` counts them all.
_MAX_LISTED_SOURCES = 20


def decode_utf8(data: bytes) -> tuple[str, int]:
    """(text, number of invalid sequences replaced by U+FFFD)."""
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        # NOTE: a valid encoded U+FFFD (EF BF BD) in the input decodes to the same character; those are
        # not replacements. No invalid sequence can swallow one (EF is a lead byte), so the difference is exact.
        return text, text.count(REPLACEMENT) - data.count(_REPLACEMENT_UTF8)


def clean_text(data: str | bytes) -> tuple[str, int]:
    """(valid text, number of invalid UTF-8 sequences and lone surrogates replaced by U+FFFD)."""
    if isinstance(data, bytes):
        return decode_utf8(data)
    if _SURROGATE.search(data) is None:  # the usual case: one scan, no copy
        return data, 0
    return _SURROGATE.subn(REPLACEMENT, data)


def clean_json(value: Any) -> tuple[Any, int]:
    """(value, replacements): a parsed JSON value with every string in it, keys too, cleaned by clean_text."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, list):
        pairs = [clean_json(item) for item in value]
        return [item for item, _ in pairs], sum(n for _, n in pairs)
    if isinstance(value, dict):
        (keys, n_keys), (values, n_values) = clean_json(list(value)), clean_json(list(value.values()))
        return dict(zip(keys, values)), n_keys + n_values
    return value, 0


@dataclass
class Replacements:
    """How many invalid byte sequences and lone surrogates were replaced by U+FFFD, and in which sources
    (files, or inputs such as "--prompt")."""

    replaced_bytes: int = 0  # each invalid byte sequence or lone surrogate, replaced by one U+FFFD
    files_with_replacements: int = 0  # damaged sources
    listed_files: list[str] = field(default_factory=list)  # the first few of them
    _last_source: str | None = field(default=None, repr=False)

    def clean(self, data: str | bytes, source: str) -> str:
        """The clean text of data (clean_text), its replacements counted as source's."""
        text, replaced = clean_text(data)
        self.add_replacements(source, replaced)
        return text

    def add_replacements(self, source: str, count: int) -> None:
        if count == 0:
            return
        # Sources are read one after another, so a new name is a new damaged source.
        if source != self._last_source:
            self._last_source = source
            self.files_with_replacements += 1
            if len(self.listed_files) < _MAX_LISTED_SOURCES:
                self.listed_files.append(source)
        self.replaced_bytes += count

    def report(self) -> None:
        """One line on standard error when anything was replaced: how much, and where."""
        if not self.replaced_bytes:
            return
        n, s = self.files_with_replacements, "" if self.replaced_bytes == 1 else "s"
        where = ", ".join(self.listed_files[:3]) + (", ..." if n > 3 else "")
        print(
            f"lmforge: replaced {self.replaced_bytes} invalid UTF-8 byte sequence{s} or lone surrogate{s} "
            f"with U+FFFD in {where if n == 1 else f'{n} sources: {where}'}",
            file=sys.stderr,
        )


def clean_input(data: str | bytes, source: str) -> str:
    """The text of one input (a command-line argument, standard input, a small file), any damage replaced
    and reported on standard error under the name source."""
    replacements = Replacements()
    text = replacements.clean(data, source)
    replacements.report()
    return text
