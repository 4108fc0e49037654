"""GGUF import on tiny files written the way llama.cpp writes real ones (tests/gguf/tiny_gguf.py):
llama with grouped-query attention and GPT-2, in every storage type real files use, against the
transformers model they were written from and against transformers reading the same file."""

import pytest
import torch
from conftest import TASK_TEXT, make_hf_gpt2, make_hf_llama
from tiny_gguf import Q, finish, hf_from_gguf, logits, write_gpt2, write_llama

import lmforge
from lmforge.errors import LmforgeError
from lmforge.hf import resolve_checkpoint_dir
from lmforge.nn.position import rope_frequencies
from lmforge.tokenizers import train_tokenizer

VOCAB = 400
MIXED = [
    "def area(r):\n    return 3.14159 * r ** 2  # 12345\n\n\n",
    "你好，世界！ emoji 🤖🎉 and   runs\t\tof   spaces  ",
    "The Normans' 10th-century raiders <|im_end|> didn't stop",
]


@pytest.fixture(scope="module")
def tok():
    texts = [*TASK_TEXT.splitlines(), *MIXED, "x = 1234567890; y = [0, 11, 222]"] * 3
    return train_tokenizer(
        iter(texts),
        vocab_size=VOCAB,
        kind="bpe",
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    )


def _llama(tmp_path, **overrides):
    """A tiny random transformers Llama with grouped-query attention (4 query heads, 2 key/value heads);
    row lengths are multiples of 32, as the block quantizations need."""
    sizes = dict(vocab_size=VOCAB, hidden_size=64, n_heads=4, n_kv_heads=2, intermediate_size=96)
    return make_hf_llama(tmp_path / "hf", **{**sizes, **overrides})


def _ids(tok) -> list[int]:
    return tok.encode("The Normans were the people who gave their name to Normandy, 10th century.")


def test_llama_f32_equals_the_model_it_was_written_from(tmp_path, tok):
    # Grouped-query attention (4 query heads over 2 key/value heads): a wrong un-permutation of either
    # projection, or one using the other's head count, changes the logits.
    hf = _llama(tmp_path)
    write_llama(tmp_path / "tiny.gguf", hf, tok)
    model = lmforge.load_model(tmp_path / "tiny.gguf")
    assert model.config.n_kv_heads == 2 and not model.config.tie_embeddings
    torch.testing.assert_close(logits(model, _ids(tok)), logits(hf, _ids(tok)), atol=1e-5, rtol=0)


def test_llama3_rope_factors_become_its_rope_scaling(tmp_path, tok):
    """Llama 3.1's scaling reaches a GGUF file only as per-frequency divisors (rope_freqs); read back as
    rope_scaling it rotates as the source model does (a window longer than the original length)."""
    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 8.0}
    hf = _llama(tmp_path, rope_scaling={**rope, "original_max_position_embeddings": 128})
    write_llama(tmp_path / "llama3.gguf", hf, tok)
    model = lmforge.load_model(tmp_path / "llama3.gguf")
    scaling = model.config.rope_scaling
    assert scaling["rope_type"] == "llama3" and scaling["factor"] == 8.0
    ids = (_ids(tok) * 10)[:120]
    torch.testing.assert_close(logits(model, ids), logits(hf, ids), atol=1e-5, rtol=0)
    assert not torch.allclose(model.pos_embed.inv_freq, rope_frequencies(16, 10000.0))  # scaling mattered


def test_llama_quantized_types_equal_transformers_reading_the_same_file(tmp_path, tok):
    hf = _llama(tmp_path, tie=True)
    types = {
        "token_embd": Q.Q8_0,
        "attn_q": Q.Q4_0,
        "attn_k": Q.Q4_1,
        "attn_v": Q.Q8_0,
        "attn_output": Q.F16,
        "ffn_gate": Q.BF16,
        "ffn_up": Q.Q4_1,
        "ffn_down": Q.Q4_0,
    }
    path = tmp_path / "quantized.gguf"
    write_llama(path, hf, tok, types=types)
    model = lmforge.load_model(path)
    assert model.config.tie_embeddings and model.lm_head.weight is model.embed.weight
    theirs, _ = hf_from_gguf(path)
    ours = logits(model, _ids(tok))
    torch.testing.assert_close(ours, logits(theirs, _ids(tok)), atol=1e-4, rtol=0)
    # Quantization moved the weights: the logits are no longer the source model's.
    assert (ours - logits(hf, _ids(tok))).abs().max() > 1e-3


def test_llama_k_quants_equal_transformers_reading_the_same_file(tmp_path, tok):
    hf = _llama(tmp_path, hidden_size=256, n_layers=1, n_heads=8, intermediate_size=256)  # K-quant rows: 256
    types = {
        "attn_q": Q.Q4_K,
        "attn_k": Q.Q5_K,
        "attn_v": Q.Q6_K,
        "ffn_up": Q.Q4_K,
        "ffn_down": Q.Q6_K,
        "output": Q.Q5_K,
    }
    path = tmp_path / "kquants.gguf"
    write_llama(path, hf, tok, types=types)
    theirs, _ = hf_from_gguf(path)
    torch.testing.assert_close(
        logits(lmforge.load_model(path), _ids(tok)), logits(theirs, _ids(tok)), atol=1e-4, rtol=0
    )


def test_gpt2_equals_its_source_and_transformers(tmp_path, tok):
    # NOTE: transformers reads GPT-2's context_length as n_ctx, not n_positions: 1024 (its default) fits both.
    hf = make_hf_gpt2(tmp_path / "hf", vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=1024)
    write_gpt2(tmp_path / "gpt2.gguf", hf, tok)
    model = lmforge.load_model(tmp_path / "gpt2.gguf")
    assert model.config.model_type == "gpt2"
    torch.testing.assert_close(logits(model, _ids(tok)), logits(hf, _ids(tok)), atol=1e-5, rtol=0)

    types = {"attn_qkv": Q.Q8_0, "attn_output": Q.Q4_0, "ffn_up": Q.F16, "ffn_down": Q.Q4_1}
    write_gpt2(tmp_path / "q.gguf", hf, tok, types=types)
    theirs, _ = hf_from_gguf(tmp_path / "q.gguf")
    ours = lmforge.load_model(tmp_path / "q.gguf")
    torch.testing.assert_close(logits(ours, _ids(tok)), logits(theirs, _ids(tok)), atol=1e-4, rtol=0)


def test_tokenizer_from_metadata_equals_transformers(tmp_path, tok):
    hf = _llama(tmp_path)
    path = tmp_path / "tok.gguf"
    write_llama(path, hf, tok, add_bos=True)
    ours = lmforge.load_tokenizer(path)
    _, theirs = hf_from_gguf(path)
    assert ours.vocab_size == VOCAB and ours.bos_token == theirs.bos_token == "<|endoftext|>"
    assert "<|im_start|>" in ours.chat_template
    for text in MIXED:
        ids = ours.encode(text)
        assert ids[0] == ours.bos_token_id  # the file says to add BOS
        assert ids == theirs(text, split_special_tokens=True).input_ids  # special-token text stays text
        assert ours.encode(text, allow_special=True) == theirs(text).input_ids
        assert ours.decode(ids) == text  # BOS (special) dropped, the literal <|im_end|> kept
    # The original tokenizer, which the file's vocabulary and merges came from, agrees too.
    assert ours.encode(MIXED[0], add_special_tokens=False) == tok.encode(MIXED[0], add_special_tokens=False)


@pytest.mark.parametrize("pre", ["smollm", "llama-bpe", "qwen2"])
def test_pre_tokenizer_named_by_the_file(tmp_path, tok, pre):
    """tokenizer.ggml.pre picks the split before BPE: SmolLM's puts every digit apart (as its own
    tokenizer.json: Digits then ByteLevel), Llama 3's and Qwen 2's are transformers' expressions."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import pre_tokenizers

    hf = _llama(tmp_path)
    path = tmp_path / f"{pre}.gguf"
    write_llama(path, hf, tok, pre=pre)
    ours = lmforge.load_tokenizer(path)
    text = "x = 1234567890; y = [0, 11, 222]\n\n  It's DONE's 你好 " + MIXED[0]
    if pre == "smollm":
        reference = Backend.from_str(tok.backend.to_str())
        reference.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
        expected = reference.encode(text).ids
        assert expected != tok.encode(text)  # the digit split matters for this vocabulary
    else:
        expected = hf_from_gguf(path)[1](text).input_ids
    assert ours.encode(text) == expected


def test_a_directory_holding_one_gguf_file_is_that_file(tmp_path, tok):
    hf = _llama(tmp_path)
    folder = tmp_path / "folder"
    folder.mkdir()
    write_llama(folder / "model.Q8_0.gguf", hf, tok)
    model, ours = lmforge.load_model(folder), lmforge.load_tokenizer(folder)
    assert model.name_or_path.endswith("model.Q8_0.gguf") and ours.vocab_size == VOCAB
    write_llama(folder / "model.F32.gguf", hf, tok)
    with pytest.raises(LmforgeError, match=r"holds 2 \.gguf files .*pass the one"):
        lmforge.load_model(folder)


def test_unusable_gguf_files_are_one_line_errors(tmp_path, tok):
    import gguf

    (tmp_path / "garbage.gguf").write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(LmforgeError, match="not a readable GGUF file"):
        lmforge.load_model(tmp_path / "garbage.gguf")

    writer = gguf.GGUFWriter(tmp_path / "mamba.gguf", "mamba")
    writer.add_tensor("token_embd.weight", torch.zeros(4, 32).numpy())
    finish(writer)
    with pytest.raises(LmforgeError, match=r"unsupported GGUF architecture 'mamba'; supported: llama, gpt2"):
        lmforge.load_model(tmp_path / "mamba.gguf")

    writer = gguf.GGUFWriter(tmp_path / "part.gguf", "llama")
    writer.add_uint16("split.count", 3)
    finish(writer)
    with pytest.raises(LmforgeError, match=r"one of 3 parts of a split GGUF model; join them"):
        lmforge.load_tokenizer(tmp_path / "part.gguf")

    hf = _llama(tmp_path)
    write_llama(tmp_path / "odd.gguf", hf, tok, pre="no-such-split")
    with pytest.raises(LmforgeError, match=r"unknown pre-tokenizer 'no-such-split'"):
        lmforge.load_tokenizer(tmp_path / "odd.gguf")
    with pytest.raises(LmforgeError, match="is a GGUF file; this needs a checkpoint directory"):
        resolve_checkpoint_dir(tmp_path / "odd.gguf")
