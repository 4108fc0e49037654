"""Training a tokenizer from text, with the Hugging Face `tokenizers` library.

Two kinds:
- "bpe": GPT-2's byte-level BPE (Radford et al. 2019; Sennrich et al. 2016 for BPE). Text is UTF-8
  bytes, each byte a printable character, so the 256-byte base alphabet encodes any Unicode string and
  `decode(encode(s)) == s` always holds.
- "char": one token per Unicode character, as in nanoGPT's shakespeare_char: the vocabulary is the
  characters seen in training (the most frequent ones if there are more than fit). A character never seen
  becomes "<unk>", which decode drops like any special token: the choice keeps the vocabulary tiny (no
  256 byte tokens), at the price of round-tripping only the training alphabet.
- "wordpiece": BERT's lowercasing WordPiece with [PAD] [UNK] [CLS] [SEP] [MASK] (see wordpiece.py).
- "unigram": T5's SentencePiece-style Unigram with <pad> </s> <unk> and <extra_id_N> sentinels (see unigram.py).

Training text is cleaned (lmforge/text.py: invalid UTF-8 and lone surrogates become U+FFFD, reported on
stderr), and no word the trainer counts is longer than MAX_WORD_CHARS characters, so that training time stays
proportional to the input (see MAX_WORD_CHARS).
"""

from __future__ import annotations

import itertools
import os
import re
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import tokenizers
from tokenizers import Regex, decoders, models, pre_tokenizers, processors, trainers
from tqdm import tqdm

from lmforge.errors import LmforgeError
from lmforge.text import Replacements
from lmforge.tokenizers.tokenizer import Tokenizer, resolve_special_roles

KINDS = ("bpe", "char", "wordpiece", "unigram")
ENDOFTEXT = "<|endoftext|>"
UNK = "<unk>"
# Files are streamed in pieces of about this many bytes, cut at line ends (see _cut).
_CHUNK_BYTES = 1 << 20
# NOTE: BPE training (WordPiece's too) costs about (length x merges inside it) per distinct word, so one word
# of n characters costs ~n^2: a 1 MB line with no space or punctuation (a DNA sequence, unspaced Chinese, a
# run of one character) is one word and trains for minutes. Words are cut into pieces of at most this many
# characters for training, which keeps its time proportional to the input, and no longer token is learned
# (natural text has no use for one). Shorter words, all of them in ordinary text, train exactly as before.
MAX_WORD_CHARS = 128
# GPT-2's pre-tokenizer regex (byte-level BPE's, inside `pre_tokenizers.ByteLevel`), and the same with every
# run bounded: for words of at most MAX_WORD_CHARS characters the two split alike.
_GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_BOUNDED_GPT2_PATTERN = _GPT2_PATTERN.replace("+", f"{{1,{MAX_WORD_CHARS}}}")
# A run of more than MAX_WORD_CHARS characters without whitespace, matched from its start only (the lookbehind
# fails at once inside a word, so the search costs no more than a scan of the text).
_LONG_RUN = re.compile(rf"(?<!\S)\S{{{MAX_WORD_CHARS + 1},}}")


def train_tokenizer(
    source: str | os.PathLike | Iterable[str | os.PathLike] | Iterator[str],
    *,
    vocab_size: int,
    kind: str = "bpe",
    special_tokens: list[str] | None = None,
    min_frequency: int = 2,
    show_progress: bool = False,
    n_sentinels: int = 100,
) -> Tokenizer:
    """Train a tokenizer of at most `vocab_size` ids.

    source: a file path, a list/tuple of file paths, or an iterator of texts (e.g. a generator).
    special_tokens: default ["<|endoftext|>"] for bpe and ["<|endoftext|>", "<unk>"] for char; roles are
    given by spelling ("<s>", "</s>", "<pad>", "<unk>", ...), else the first one is eos, bos and pad. min_frequency (bpe only): a pair seen fewer times is not merged.
    wordpiece always has BERT's [PAD] [UNK] [CLS] [SEP] [MASK] and ignores special_tokens.
    unigram: special_tokens default ["<pad>", "</s>", "<unk>"] (ids 0, 1, 2 as in T5), then the learned
    pieces, then n_sentinels span-corruption sentinels <extra_id_N>, all within vocab_size.
    show_progress: report on stderr. On a terminal these are the `tokenizers` library's own bars (reading,
    then the slow part: merges, or the Unigram's EM rounds); elsewhere, where those bars print nothing, a
    bar of the bytes read and a line when the vocabulary is being learned.
    """
    if kind not in KINDS:
        raise LmforgeError(f"unknown tokenizer kind {kind!r}; pass one of {', '.join(KINDS)}")
    paths = _source_paths(source)
    replacements = Replacements()
    texts = _nonempty_texts(source if paths is None else paths, replacements)
    # The number of texts the library's bar counts to: files are read in pieces of about _CHUNK_BYTES.
    length = None if paths is None else sum(p.stat().st_size // _CHUNK_BYTES + 1 for p in paths)
    library_bars = show_progress and sys.stderr.isatty()
    if show_progress and not library_bars:
        texts = _reported(texts, paths, f"training a {kind} tokenizer of {vocab_size:,} tokens")
    if kind == "wordpiece":
        from lmforge.tokenizers.wordpiece import train_wordpiece

        # BERT's pre-tokenizer splits at whitespace and punctuation: cutting long runs of the rest bounds its words.
        tok = train_wordpiece(_cut_long_runs(texts), vocab_size, min_frequency, library_bars, length)
    elif kind == "unigram":  # its pieces have at most 16 characters: a long word costs it only its length
        from lmforge.tokenizers.unigram import train_unigram

        tok = train_unigram(texts, vocab_size, special_tokens, n_sentinels, library_bars, length)
    elif kind == "bpe":
        special_tokens = list(special_tokens or [ENDOFTEXT])
        tok = _train_byte_level_bpe(texts, vocab_size, special_tokens, min_frequency, library_bars, length)
    else:
        tok = _train_char(texts, vocab_size, list(special_tokens or [ENDOFTEXT, UNK]))
    replacements.report()
    return tok


def _source_paths(source) -> list[Path] | None:
    """The files to read, or None for an iterator of texts."""
    if isinstance(source, (str, os.PathLike)):
        source = [source]
    if not isinstance(source, (list, tuple)):
        return None
    paths = [Path(p) for p in source]
    for path in paths:
        if not path.is_file():
            raise LmforgeError(f"training file {path} does not exist; pass existing text files")
    return paths


def _reported(texts: Iterator[str], paths: list[Path] | None, what: str) -> Iterator[str]:
    """The texts, with a bar on stderr of the bytes read, then a line for the part after reading."""
    total = sum(p.stat().st_size for p in paths) if paths else None
    with tqdm(total=total, unit="B", unit_scale=True, desc="reading", file=sys.stderr) as bar:
        for text in texts:
            bar.update(len(text.encode("utf-8", "replace")))
            yield text
    print(f"{what}: learning the vocabulary from what was read (this can take minutes)", file=sys.stderr)


def _nonempty_texts(source: list[Path] | Iterator[str], replacements: Replacements) -> Iterator[str]:
    """The clean training texts of checked files or an iterator, checked up front: no text at all is an error."""
    if isinstance(source, list):
        texts = itertools.chain.from_iterable(_read_chunks(p, replacements) for p in source)
    else:
        texts = (replacements.clean(text, "the training texts") for text in source)
    # Peek for the first text with content, so that empty data fails before training, not after.
    texts = (t for t in texts if t)
    first = next(texts, None)
    if first is None:
        raise LmforgeError("the training data has no text; pass non-empty files or texts")
    return itertools.chain([first], texts)


def _read_chunks(path: Path, replacements: Replacements) -> Iterator[str]:
    """A file's text in pieces of about _CHUNK_BYTES (even a file of one line), invalid UTF-8 as U+FFFD."""
    rest = b""
    with open(path, "rb") as f:
        while block := f.read(_CHUNK_BYTES):
            data = rest + block
            cut = _cut(data)
            yield replacements.clean(data[:cut], str(path))
            rest = data[cut:]
    if rest:
        yield replacements.clean(rest, str(path))


def _cut(data: bytes) -> int:
    """Where a piece of data ends: after its last line end, else before its last space (where byte-level BPE
    splits too), else before its last character (at a UTF-8 lead byte, so that no character is cut in two)."""
    cut = data.rfind(b"\n") + 1 or data.rfind(b" ")
    if cut > 0:
        return cut
    lead = len(data) - 1
    while lead > max(0, len(data) - 4) and data[lead] & 0xC0 == 0x80:  # 10xxxxxx: a continuation byte
        lead -= 1
    return lead or len(data)


def _cut_long_runs(texts: Iterator[str]) -> Iterator[str]:
    """The texts, with every run of more than MAX_WORD_CHARS characters without whitespace cut into pieces of
    at most that many (each piece a text of its own: a word never spans two texts)."""
    for text in texts:
        start = 0
        for run in _LONG_RUN.finditer(text):
            for cut in range(run.start() + MAX_WORD_CHARS, run.end(), MAX_WORD_CHARS):
                yield text[start:cut]
                start = cut
        yield text[start:]


def _train_byte_level_bpe(
    texts: Iterator[str],
    vocab_size: int,
    special_tokens: list[str],
    min_frequency: int,
    show_progress: bool,
    length: int | None,
) -> Tokenizer:
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    minimum = len(alphabet) + len(special_tokens)
    if vocab_size < minimum:
        raise LmforgeError(
            f"vocabulary size {vocab_size} is too small: byte-level BPE needs at least {minimum} "
            f"({len(alphabet)} bytes + {len(special_tokens)} special tokens); pass --vocab-size >= {minimum}"
        )
    backend = tokenizers.Tokenizer(models.BPE())
    backend.pre_tokenizer = bounded_byte_level()  # for training only: see MAX_WORD_CHARS
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=special_tokens,
        # All 256 bytes, even those absent from the data, so that any text can be encoded.
        initial_alphabet=alphabet,
        show_progress=show_progress,
    )
    backend.train_from_iterator(texts, trainer=trainer, length=length)
    # The saved tokenizer splits as GPT-2's does; a long word still encodes, into tokens of the bounded words.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    return Tokenizer(backend, **_special_roles(backend, special_tokens))


def bounded_byte_level() -> pre_tokenizers.PreTokenizer:
    """GPT-2's byte-level pre-tokenizer with words of at most MAX_WORD_CHARS characters: BPE's for training."""
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_BOUNDED_GPT2_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def _train_char(texts: Iterator[str], vocab_size: int, special_tokens: list[str]) -> Tokenizer:
    if UNK not in special_tokens:
        special_tokens = [*special_tokens, UNK]
    if vocab_size <= len(special_tokens):
        raise LmforgeError(
            f"vocabulary size {vocab_size} is too small: a char tokenizer needs more than its "
            f"{len(special_tokens)} special tokens; pass --vocab-size > {len(special_tokens)}"
        )
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(text)
    kept = sorted(c for c, _ in counts.most_common(vocab_size - len(special_tokens)))
    vocab = {token: i for i, token in enumerate([*special_tokens, *kept])}
    # BPE without merges is exactly a character-level lookup, with unk for the rest.
    backend = tokenizers.Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    backend.decoder = decoders.Fuse()  # concatenate, where the default decoder would join with spaces
    backend.add_special_tokens(special_tokens)
    return Tokenizer(backend, **_special_roles(backend, special_tokens))


def _special_roles(backend: tokenizers.Tokenizer, special_tokens: list[str]) -> dict[str, str | None]:
    """Roles by conventional spelling ("<s>", "</s>", "<pad>", "<unk>", ...), the rest as in GPT-2.

    GPT-2: one token (here the first special token, default "<|endoftext|>") ends documents and doubles
    as bos and pad.
    """
    roles = resolve_special_roles(backend, config={}, special_map={})
    eos = roles["eos_token"] or special_tokens[0]
    return {
        **roles,
        "eos_token": eos,
        "bos_token": roles["bos_token"] or eos,
        "pad_token": roles["pad_token"] or eos,
    }
