"""A GGUF file whose weights hold NaN or Inf is refused by name like a checkpoint directory
(tests/hf/test_nonfinite.py), and loads with one warning under allow_nonfinite."""

import pytest
import torch
from conftest import make_hf_llama
from tiny_gguf import write_llama

import lmforge
from lmforge.errors import LmforgeError
from lmforge.tokenizers import train_tokenizer


def test_nonfinite_gguf_weights_are_named(tmp_path, capsys):
    texts = ["the quick brown fox jumps over the lazy dog"] * 20
    tok = train_tokenizer(iter(texts), vocab_size=300, kind="bpe", special_tokens=["<|endoftext|>"])
    hf = make_hf_llama(tmp_path / "hf", vocab_size=300, hidden_size=64, n_heads=4, n_kv_heads=2)
    with torch.no_grad():
        hf.model.layers[1].mlp.down_proj.weight.view(-1)[:7] = float("nan")
    write_llama(tmp_path / "tiny.gguf", hf, tok)
    with pytest.raises(
        LmforgeError, match=r"tiny\.gguf has non-finite values in blocks\.1\.mlp\.down_proj\.weight \(7 NaN\)"
    ):
        lmforge.load_model(tmp_path / "tiny.gguf")
    model = lmforge.load_model(tmp_path / "tiny.gguf", allow_nonfinite=True)
    assert torch.isnan(model.blocks[1].mlp.down_proj.weight).sum() == 7
    assert capsys.readouterr().err.count("lmforge: warning:") == 1
