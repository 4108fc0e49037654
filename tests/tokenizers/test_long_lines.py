"""Tokenizer training on pathological lines: no word the trainer counts is longer than MAX_WORD_CHARS, so that
its time stays proportional to the input (a 1 MB line without spaces used to train for minutes); ordinary
text trains exactly as before. Times are measured by hand, never asserted: these check the bound itself."""

import itertools
import json
import random
import subprocess
import sys

import tokenizers
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import pre_tokenizers

from lmforge.text import Replacements
from lmforge.tokenizers import load_tokenizer, train_tokenizer
from lmforge.tokenizers import train as train_module
from lmforge.tokenizers.train import MAX_WORD_CHARS, bounded_byte_level

RNG = random.Random(0)
GPT2_SPLIT = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
PATHOLOGICAL = {
    "letters": "".join(RNG.choices("acgt", k=5000)),  # a DNA sequence
    "one character": "a" * 5000,
    "Chinese": "".join(RNG.choices("的一是不了人我在有他这中大来上", k=5000)),
    "spaces": "x" + " " * 5000 + "y",
    "newlines": "x" + "\n" * 5000 + "y",
    "punctuation": "=" * 5000,
}


def longest_word(pre_tokenizer, text: str) -> int:
    """Characters of the input in the longest split (offsets count the input's characters, not its bytes)."""
    return max(end - start for _, (start, end) in pre_tokenizer.pre_tokenize_str(text))


def test_training_words_are_bounded_on_pathological_lines():
    for name, line in PATHOLOGICAL.items():
        assert longest_word(GPT2_SPLIT, line) >= 4999, name  # one word, which at 1 MB trains for minutes
        assert longest_word(bounded_byte_level(), line) <= MAX_WORD_CHARS + 1, name  # and a leading space


@settings(deadline=None, max_examples=300)
@given(st.text(alphabet=st.sampled_from("ab Z9 \t\n\r's.,!-é中🎉\u00a0\u3000x"), max_size=MAX_WORD_CHARS))
def test_ordinary_text_splits_exactly_as_gpt2(text):
    assert bounded_byte_level().pre_tokenize_str(text) == GPT2_SPLIT.pre_tokenize_str(text)


def test_ordinary_text_trains_the_same_vocabulary_and_merges():
    rng = random.Random(0)
    words = ["the", "cat", "sat", "on", "mat", "über", "数据", "don't", "42", "!!"]
    corpus = [" ".join(rng.choice(words) for _ in range(50)) + "\n" for _ in range(40)]
    ours = train_tokenizer(iter(corpus), vocab_size=300)
    plain = tokenizers.Tokenizer(tokenizers.models.BPE())
    plain.pre_tokenizer = GPT2_SPLIT
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=GPT2_SPLIT.alphabet()
    )
    plain.train_from_iterator(iter(corpus), trainer=trainer)
    model = json.loads(ours.backend.to_str())["model"]
    assert (
        model["vocab"] == plain.get_vocab()
        and model["merges"] == json.loads(plain.to_str())["model"]["merges"]
    )


def test_no_learned_token_is_longer_than_the_bound(tmp_path):
    """One line of one character, trained as BPE and WordPiece: unbounded, both learn tokens of thousands."""
    path = tmp_path / "line.txt"
    path.write_text("a" * 20_000)
    for kind in ("bpe", "wordpiece"):
        tok = train_tokenizer(path, vocab_size=300, kind=kind)
        assert max(len(t.removeprefix("##")) for t in tok.backend.get_vocab()) <= MAX_WORD_CHARS, kind
    # The saved BPE tokenizer is GPT-2's: the bound is for training only.
    tok = train_tokenizer(path, vocab_size=300)
    tok.save_pretrained(tmp_path / "bpe")
    pre_tokenizer = json.loads((tmp_path / "bpe" / "tokenizer.json").read_text())["pre_tokenizer"]
    assert pre_tokenizer["type"] == "ByteLevel" and pre_tokenizer["use_regex"] is True
    assert load_tokenizer(tmp_path / "bpe").decode(tok.encode("a" * 1000)) == "a" * 1000


def test_wordpiece_texts_have_bounded_runs():
    texts = list(train_module._cut_long_runs(iter(["x " + "a" * 1000 + " y", "ordinary text"])))
    assert "".join(texts[:-1]) == "x " + "a" * 1000 + " y" and texts[-1] == "ordinary text"
    assert max(len(run) for text in texts for run in text.split()) <= MAX_WORD_CHARS


def test_a_file_of_one_line_is_read_in_bounded_pieces(tmp_path, monkeypatch):
    monkeypatch.setattr(train_module, "_CHUNK_BYTES", 64)
    text = "".join(random.Random(0).choices(["word ", "中文", "🎉", "x", "\n"], k=2000))
    for name, content in {"mixed": text, "no space": "中" * 500, "one line": text.replace("\n", " ")}.items():
        path = tmp_path / f"{name}.txt"
        path.write_text(content, encoding="utf-8")
        replacements = Replacements()
        pieces = list(train_module._read_chunks(path, replacements))
        # No character cut in two: each piece decodes whole.
        assert "".join(pieces) == content and replacements.replaced_bytes == 0, name
        assert max(len(p.encode()) for p in pieces) <= 2 * 64, name
        # Cuts fall after a line end, else before a space, so that the words on either side stay whole.
        if name != "no space":
            assert all(p.endswith("\n") or n.startswith(" ") for p, n in itertools.pairwise(pieces)), name


def test_cli_trains_on_a_long_line_without_whitespace(tmp_path):
    path = tmp_path / "dna.txt"
    path.write_text("".join(random.Random(0).choices("acgt", k=50_000)))
    result = subprocess.run(
        [sys.executable, "-m", "lmforge", "tokenizer", "train", "--data", str(path), "--vocab-size", "300"]
        + ["--out", str(tmp_path / "tok"), "--no-progress"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    vocab = load_tokenizer(tmp_path / "tok").backend.get_vocab()
    assert max(map(len, vocab)) <= MAX_WORD_CHARS
