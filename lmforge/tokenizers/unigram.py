"""T5's tokenizer: a SentencePiece-style Unigram language model (Kudo, 2018) on the `tokenizers` library.

The pipeline, as in T5's own tokenizer.json: NFKC normalisation; Metaspace pre-tokenization (spaces
become "▁", which starts every word piece, so decoding restores them); a Unigram model that picks the
most probable segmentation of each word; and a template that ends every input with `</s>`.
Ids follow T5's layout: `<pad>` 0 (also the decoder's start token), `</s>` 1, `<unk>` 2, the learned
pieces, then the span-corruption sentinels counting down, so `<extra_id_0>` is the last id.
"""

from __future__ import annotations

from collections.abc import Iterator

import tokenizers
from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers, processors, trainers

from lmforge.errors import LmforgeError
from lmforge.tokenizers.tokenizer import Tokenizer

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
SPECIAL_TOKENS = [PAD, EOS, UNK]


def sentinel(i: int) -> str:
    """The i-th span-corruption sentinel, `<extra_id_i>`."""
    return f"<extra_id_{i}>"


def train_unigram(
    texts: Iterator[str],
    vocab_size: int,
    special_tokens: list[str] | None,
    n_sentinels: int,
    show_progress: bool,
    length: int | None = None,
) -> Tokenizer:
    """A T5-style Unigram tokenizer of at most `vocab_size` ids, `n_sentinels` of them sentinels.

    length: how many texts there are (about), for the progress bar.
    """
    special_tokens = list(special_tokens or SPECIAL_TOKENS)
    if UNK not in special_tokens:
        special_tokens.append(UNK)
    n_pieces = vocab_size - n_sentinels - len(special_tokens)
    if n_sentinels < 0 or n_pieces < 2:
        raise LmforgeError(
            f"vocabulary size {vocab_size} is too small for {len(special_tokens)} special tokens and "
            f"{n_sentinels} sentinels; pass --vocab-size > {n_sentinels + len(special_tokens) + 1}"
        )
    backend = tokenizers.Tokenizer(models.Unigram())
    backend.normalizer = normalizers.NFKC()
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size - n_sentinels,
        special_tokens=special_tokens,
        unk_token=UNK,
        show_progress=show_progress,
    )
    backend.train_from_iterator(texts, trainer=trainer, length=length)
    # Counting down, as T5's vocabulary has them: <extra_id_0> gets the highest id.
    sentinels = [sentinel(i) for i in reversed(range(n_sentinels))]
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in sentinels])
    eos = EOS if EOS in special_tokens else None
    if eos is not None:
        backend.post_processor = processors.TemplateProcessing(
            single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, backend.token_to_id(eos))]
        )
    pad = PAD if PAD in special_tokens else None
    return Tokenizer(backend, eos_token=eos, pad_token=pad, unk_token=UNK)
