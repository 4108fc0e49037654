"""Incremental detokenization: streamed pieces equal the full decode, never a partial character."""

import random

import pytest
import tokenizers
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import decoders, models, pre_tokenizers, trainers

from lmforge.tokenizers import IncrementalDecoder, Tokenizer, train_tokenizer

# Mostly multi-byte characters, so byte-level BPE splits many of them across tokens.
MULTI_BYTE = st.text(
    alphabet=st.sampled_from([*"ab ,\n", *"你好世界学习", *"éüß", "🎉", "🦀", "👍", "🏽", "\U0001f9ea"])
    | st.characters(codec="utf-8"),
    max_size=60,
)


def make_corpus(seed: int = 0, n_words: int = 1500) -> str:
    rng = random.Random(seed)
    words = ["the", "cat", "sat", "hello", "world", "你好", "世界", "学习", "🎉", "🦀", "é", "ü"]
    return " ".join(rng.choice(words) for _ in range(n_words))


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    # A small vocabulary: emoji and CJK stay split into byte tokens.
    return train_tokenizer(iter([make_corpus()]), vocab_size=300)


@pytest.fixture(scope="module")
def metaspace() -> Tokenizer:
    """A SentencePiece-style tokenizer, whose decoder drops the first token's leading space."""
    backend = tokenizers.Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=120, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False
    )
    backend.train_from_iterator([make_corpus()], trainer=trainer)
    return Tokenizer(backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def stream(tokenizer: Tokenizer, ids: list[int], skip_special_tokens: bool = True) -> list[str]:
    decoder = IncrementalDecoder(tokenizer, skip_special_tokens=skip_special_tokens)
    return [decoder.push(i) for i in ids] + [decoder.flush()]


@settings(deadline=None)
@given(MULTI_BYTE)
def test_stream_of_encoded_text_equals_full_decode(bpe, text):
    ids = bpe.encode(text)
    pieces = stream(bpe, ids)
    assert "".join(pieces) == bpe.decode(ids) == text
    assert not any("\ufffd" in piece for piece in pieces) or "\ufffd" in text


@settings(deadline=None)
@given(st.lists(st.integers(0, 299), max_size=40), st.booleans())
def test_stream_of_any_ids_equals_full_decode(bpe, ids, skip_special_tokens):
    # Generated ids can be any sequence, including broken UTF-8 and special tokens mid-character.
    pieces = stream(bpe, ids, skip_special_tokens)
    assert "".join(pieces) == bpe.decode(ids, skip_special_tokens=skip_special_tokens)


@settings(deadline=None)
@given(st.lists(st.integers(0, 119), max_size=40), st.booleans())
def test_stream_with_context_dependent_decoder(metaspace, ids, skip_special_tokens):
    pieces = stream(metaspace, ids, skip_special_tokens)
    assert "".join(pieces) == metaspace.decode(ids, skip_special_tokens=skip_special_tokens)


def test_pieces_are_whole_characters(bpe):
    ids = bpe.encode("🦀👍🏽")
    assert len(ids) > 2  # split across byte tokens, or this test proves nothing
    pieces = stream(bpe, ids)
    assert "".join(pieces) == "🦀👍🏽"
    assert all(p in ("", "🦀", "👍", "🏽") for p in pieces)


def test_special_tokens_are_skipped_like_decode(bpe):
    ids = [*bpe.encode("a"), bpe.eos_token_id, *bpe.encode(" b")]
    assert "".join(stream(bpe, ids)) == "a b"
    assert "".join(stream(bpe, ids, skip_special_tokens=False)) == "a<|endoftext|> b"
