"""Fused projections (lmforge/nn/fuse.py): q/k/v in one layer and gate/up in one compute what the
separate layers did, in float and quantized models alike; what cannot be stacked (LoRA) is left as it
is; a fused model refuses to be saved as a checkpoint, in one line.
"""

import contextlib

import pytest
import torch
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.inference import GenerationConfig, generate_ids
from lmforge.inference.few_rows import few_rows_linear
from lmforge.models import build_model, get_preset
from lmforge.models.llama import LlamaConfig
from lmforge.nn import apply_lora
from lmforge.nn.fuse import INT4_ROW_BLOCK, DecodeLinear, stack_linears
from lmforge.nn.quant import Int4Linear, Int8Linear, quantize_model

# GPT-2 (biases, one kind of head) and Llama with grouped-query attention (2 key/value heads for 4).
GQA_LLAMA = LlamaConfig(
    vocab_size=97, max_seq_len=64, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=96
)


def _model(family: str):
    torch.manual_seed(0)
    config = get_preset("tiny", max_seq_len=64) if family == "gpt2" else GQA_LLAMA
    return build_model(config).eval()


def _greedy(model, prompts, n=10):
    config = GenerationConfig(max_new_tokens=n, temperature=0.0)
    return list(generate_ids(model, prompts, config))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_fused_model_computes_what_the_separate_layers_did(family):
    model = _model(family)
    ids = torch.randint(0, 97, (2, 17), generator=torch.Generator().manual_seed(1))
    prompts = [ids[0, :9].tolist(), ids[1].tolist()]
    with torch.no_grad():
        expected_logits = model(ids)
    expected_tokens = _greedy(model, prompts)
    per_block = 2 if family == "llama" else 1  # attention, and a gated MLP's gate and up
    assert model.fuse_projections() == per_block * len(model.blocks)
    attn = model.blocks[0].attn
    assert attn.qkv_proj.out_features == (attn.n_heads + 2 * attn.n_kv_heads) * attn.d_head
    assert not hasattr(attn, "q_proj") and not hasattr(attn, "v_proj")
    with torch.no_grad():
        torch.testing.assert_close(model(ids), expected_logits, rtol=0, atol=1e-5)
    assert _greedy(model, prompts) == expected_tokens
    assert model.fuse_projections() == 0  # already fused: nothing more to do


@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantized_fused_layers_hold_the_same_codes_as_separate_ones(mode):
    """Quantization is per output row (and group), so stacking before or after quantizing is the same:
    the fused model gives the unfused quantized model's logits exactly."""
    fused, separate = _model("llama"), _model("llama")
    quantize_model(fused, mode)  # fuses first
    separate.fuse_projections = lambda: 0  # quantized layer by layer, unfused
    quantize_model(separate, mode)
    layer = {"int8": Int8Linear, "int4": Int4Linear}[mode]
    assert type(fused.blocks[0].attn.qkv_proj) is layer
    assert type(separate.blocks[0].attn.q_proj) is layer
    ids = torch.randint(0, 97, (1, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(fused(ids), separate(ids), rtol=0, atol=1e-6)


@pytest.mark.parametrize("layer", [Int8Linear, Int4Linear])
@pytest.mark.parametrize("sizes", [(64, 32, 32), (128, 64, 48), (32, 16)])
def test_quantized_layers_stack_after_quantizing_too(layer, sizes):
    """Layers quantized apart (as GGUF blocks arrive) stack into one that multiplies like them all; int4
    ones only where each but the last fills whole blocks of packed rows (else they stay apart)."""
    torch.manual_seed(0)
    quantized = [layer(nn.Linear(64, n)) for n in sizes]
    stacked = stack_linears(quantized)
    if layer is Int4Linear and any(n % INT4_ROW_BLOCK for n in sizes[:-1]):
        assert stacked is None
        return
    assert type(stacked) is layer and stacked.out_features == sum(sizes)
    x = torch.randn(3, 64)
    torch.testing.assert_close(stacked(x), torch.cat([q(x) for q in quantized], dim=-1), rtol=0, atol=0)


def test_int4_packing_is_in_blocks_of_rows():
    """What stack_linears assumes of the int4 kernel's packing: whole blocks concatenate, a partial one
    does not (a torch upgrade that changes this fails here, not in a model's outputs)."""
    codes = torch.randint(0, 16, (INT4_ROW_BLOCK + 16, 64), dtype=torch.int32)

    def pack(c):
        return torch.ops.aten._convert_weight_to_int4pack_for_cpu(c, 2)

    whole, rest = codes[:INT4_ROW_BLOCK], codes[INT4_ROW_BLOCK:]
    assert torch.equal(torch.cat([pack(whole), pack(rest)]), pack(codes))
    halves = codes[: INT4_ROW_BLOCK // 2], codes[INT4_ROW_BLOCK // 2 :]
    assert not torch.equal(torch.cat([pack(h) for h in halves]), pack(codes))


def test_what_cannot_be_stacked_is_left_alone():
    model = _model("llama")
    apply_lora(model, targets=("q_proj", "v_proj"), r=4)
    assert stack_linears([nn.Linear(8, 4), nn.Linear(16, 4)]) is None  # different inputs
    assert model.fuse_projections() == len(model.blocks)  # gate/up only: LoRA layers stay apart
    assert model.blocks[0].attn.qkv_proj is None and hasattr(model.blocks[0].attn, "q_proj")


def test_a_fused_model_is_not_saved(tmp_path):
    model = _model("gpt2")
    model.fuse_projections()
    with pytest.raises(LmforgeError, match="rewritten for inference") as error:
        model.save_pretrained(tmp_path / "out")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("shape", [(48,), (1, 48), (1, 1, 48), (3, 48), (2, 5, 48), (17, 48)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("one_row_min", [0, 10**9])
def test_decode_linear_equals_linear(shape, bias, dtype, one_row_min, monkeypatch):
    """Every path (one row doubled or not, a few rows as W @ x^T, many rows): F.linear's values and
    shape, contiguous."""
    monkeypatch.setattr(DecodeLinear, "ONE_ROW_MIN_ELEMENTS", one_row_min)
    torch.manual_seed(0)
    layer = nn.Linear(48, 40, bias=bias).to(dtype)
    x = torch.randn(shape, dtype=dtype)
    expected = layer(x)
    layer.__class__ = DecodeLinear
    got = layer(x)
    assert got.shape == expected.shape and got.is_contiguous()
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got, expected, rtol=0, atol=tolerance)


def test_fused_model_decodes_through_its_own_layers_and_keeps_the_head_tied(monkeypatch):
    """After fuse_projections every linear layer is a DecodeLinear (the tied head still the embedding),
    generation takes no function mode, and greedy tokens at batch 1 and 2 are unchanged."""
    model = _model("gpt2")
    prompts = [[5, 6, 7], [8, 9]]
    expected = _greedy(model, prompts[:1]) + _greedy(model, prompts)
    monkeypatch.setattr(DecodeLinear, "ONE_ROW_MIN_ELEMENTS", 0)  # a single row doubled everywhere
    model.fuse_projections()
    assert type(model.lm_head) is DecodeLinear and model.lm_head.weight is model.embed.weight
    assert all(type(m) is not nn.Linear for m in model.modules())
    assert isinstance(few_rows_linear(2, model.device, model), contextlib.nullcontext)
    assert _greedy(model, prompts[:1]) + _greedy(model, prompts) == expected
