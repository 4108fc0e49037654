"""BERT's WordPiece tokenizer (Schuster & Nakajima, 2012; Devlin et al., 2019), on the `tokenizers` library.

The pipeline: BertNormalizer (clean control characters, space out CJK characters, lowercase and strip
accents), BertPreTokenizer (split on whitespace and punctuation), WordPiece (greedy longest match;
"##" marks a piece that continues a word), and a template that frames inputs as `[CLS] a [SEP]` and
pairs as `[CLS] a [SEP] b [SEP]` with token type 1 on the second segment.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

from lmforge.errors import LmforgeError
from lmforge.tokenizers.tokenizer import Tokenizer

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = [PAD, UNK, CLS, SEP, MASK]


def bert_pipeline(backend: tokenizers.Tokenizer, *, lowercase: bool = True) -> tokenizers.Tokenizer:
    """Set BERT's normalizer, pre-tokenizer and decoder on a WordPiece backend (in place)."""
    backend.normalizer = normalizers.BertNormalizer(lowercase=lowercase)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    return backend


def bert_template(backend: tokenizers.Tokenizer) -> processors.TemplateProcessing:
    """`[CLS] $A [SEP]` and `[CLS] $A [SEP] $B:1 [SEP]:1`, with the backend's ids of [CLS] and [SEP]."""
    ids = {t: backend.token_to_id(t) for t in (CLS, SEP)}
    missing = [t for t, i in ids.items() if i is None]
    if missing:
        raise LmforgeError(f"the WordPiece vocabulary lacks {', '.join(missing)}; BERT inputs need both")
    return processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}",
        pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
        special_tokens=list(ids.items()),
    )


def read_vocab_txt(path: Path, *, lowercase: bool = True) -> tokenizers.Tokenizer:
    """A BERT tokenizer from an original `vocab.txt` (one token per line, the line number its id)."""
    try:
        backend = tokenizers.Tokenizer(models.WordPiece.from_file(str(path), unk_token=UNK))
    except Exception as e:  # the library raises a bare Exception for an unreadable vocabulary
        raise LmforgeError(f"cannot read the WordPiece vocabulary {path} ({e})") from e
    bert_pipeline(backend, lowercase=lowercase)
    backend.post_processor = bert_template(backend)
    # Mark the special tokens as such, so that decode skips them.
    backend.add_special_tokens([t for t in SPECIAL_TOKENS if backend.token_to_id(t) is not None])
    return backend


def train_wordpiece(
    texts: Iterator[str], vocab_size: int, min_frequency: int, show_progress: bool, length: int | None = None
) -> Tokenizer:
    """A lowercasing BERT WordPiece tokenizer with [PAD] [UNK] [CLS] [SEP] [MASK] as ids 0-4 (length: how
    many texts there are, about, for the progress bar)."""
    if vocab_size <= len(SPECIAL_TOKENS):
        raise LmforgeError(
            f"vocabulary size {vocab_size} is too small: WordPiece needs more than its "
            f"{len(SPECIAL_TOKENS)} special tokens; pass --vocab-size > {len(SPECIAL_TOKENS)}"
        )
    backend = bert_pipeline(tokenizers.Tokenizer(models.WordPiece(unk_token=UNK)))
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        continuing_subword_prefix="##",
        show_progress=show_progress,
    )
    backend.train_from_iterator(texts, trainer=trainer, length=length)
    backend.post_processor = bert_template(backend)
    # NOTE: BERT has no bos/eos; [SEP] ends segments, and documents are separated by it in pretraining.
    return Tokenizer(
        backend, pad_token=PAD, unk_token=UNK, cls_token=CLS, sep_token=SEP, mask_token=MASK, eos_token=SEP
    )
