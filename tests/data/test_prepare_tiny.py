"""A one-document corpus too small for `--val-fraction` still leaves a validation split that holds a
window (three tokens), and never takes more than half of the text for it."""

import numpy as np
import pytest

from lmforge.data.prepare import MIN_SPLIT_TOKENS, PrepareConfig, prepare
from lmforge.data.tokens import TokenFile


def _split(tmp_path, text: str, val_fraction: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    (tmp_path / "one.txt").write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    prepare(
        PrepareConfig(data=[str(tmp_path / "one.txt")], out=str(out), val_fraction=val_fraction),
        progress=False,
    )
    return TokenFile.load(out, "train").tokens, TokenFile.load(out, "val").tokens


def test_two_sentences_keep_a_validation_window(tmp_path):
    train, val = _split(tmp_path, "I love you\nI miss you\n")  # 1% of its tokens would be none
    assert len(val) == MIN_SPLIT_TOKENS == 3 and len(train) > len(val)


@pytest.mark.parametrize("text", ["hi", "hello"])
def test_a_tinier_corpus_is_split_in_half_at_most(tmp_path, text):
    train, val = _split(tmp_path, text)
    n = len(train) + len(val)
    assert len(val) == min(MIN_SPLIT_TOKENS, n // 2) and len(train) >= len(val)


def test_a_larger_fraction_still_wins(tmp_path):
    train, val = _split(tmp_path, " ".join(f"w{i % 13}" for i in range(300)), val_fraction=0.2)
    assert len(val) == round((len(train) + len(val)) * 0.2) > MIN_SPLIT_TOKENS
