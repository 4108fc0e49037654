"""Weight-only int8 / int4 layers (lmforge/nn/quant.py): each layer multiplies by the weight its codes
stand for; a quantized tiny decoder stays close to its float self and generates; `--quantize` works
through the real command, and what it cannot quantize is refused in one line.

Tolerances: the kernels take bfloat16 activations and give bfloat16 outputs (8 significant bits), so a
layer matches its dequantized float reference within 1% of the output's largest magnitude; the codes
are within half a step (plus bfloat16 rounding of the scales) of the float weight.
"""

import pytest
import torch
import torch.nn.functional as F
from lmforge_cli import assert_one_line_error, run_lmforge
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.inference import GenerationConfig, generate_ids
from lmforge.models import build_model, get_preset
from lmforge.nn.quant import (
    Int4Linear,
    Int8Linear,
    dequantize_int4,
    quantize_int4,
    quantize_linear,
    quantize_model,
)
from lmforge.tokenizers import train_tokenizer

LAYER_TOLERANCE = 0.01  # of the output's largest magnitude (measured: about 0.002)


def _linear(in_features=96, out_features=48, bias=True, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(in_features, out_features, bias=bias)


def _close(y: torch.Tensor, ref: torch.Tensor, tolerance: float) -> float:
    error = (y - ref).abs().max().item() / ref.abs().max().item()
    assert error <= tolerance, error
    return error


def test_int8_codes_are_within_half_a_step_of_the_weight():
    linear = _linear()
    layer = Int8Linear(linear)
    step = layer.scales.float()[:, None]  # (out, 1)
    assert layer.weight_int8.dtype == torch.int8 and layer.weight_int8.abs().max() <= 127
    assert ((layer.dequantized_weight() - linear.weight).abs() <= step * 0.51).all()


@pytest.mark.parametrize("bias", [True, False])
def test_int8_linear_matches_its_dequantized_weight(bias):
    linear = _linear(bias=bias)
    layer = Int8Linear(linear)
    x = torch.randn(2, 3, 96)
    y = layer(x)
    assert y.shape == (2, 3, 48) and y.dtype == torch.float32
    _close(y, F.linear(x, layer.dequantized_weight(), linear.bias), LAYER_TOLERANCE)
    # ... and that weight is the float one, to int8 precision: the layer is a drop-in replacement.
    _close(y, linear(x).detach(), 0.02)


@pytest.mark.parametrize("group_size", [32, 64])
def test_int4_codes_are_within_half_a_step_of_the_weight(group_size):
    w = _linear(128, 32).weight.detach()
    codes, scales, zeros = quantize_int4(w, group_size)
    assert codes.min() >= 0 and codes.max() <= 15 and scales.shape == (32, 128 // group_size)
    step = scales.float().repeat_interleave(group_size, dim=1)  # (out, in)
    assert ((dequantize_int4(codes, scales, zeros) - w).abs() <= step * 0.51 + 1e-3 * w.abs()).all()


@pytest.mark.parametrize("group_size", [32, 64])
def test_int4_linear_matches_its_dequantized_weight(group_size):
    linear = _linear(128, 32)
    layer = Int4Linear(linear, group_size)
    x = torch.randn(5, 128)
    reference = F.linear(x, dequantize_int4(*quantize_int4(linear.weight.detach(), group_size)), linear.bias)
    _close(layer(x), reference, LAYER_TOLERANCE)
    # Codes packed in another layout than the kernel reads would be as far off as the float output is
    # (about 6% here), not within 1%; and that float output is still near.
    _close(layer(x), linear(x).detach(), 0.15)


def test_int4_takes_only_shapes_its_kernel_can_and_falls_back_to_int8():
    odd = _linear(96, 50)  # 50 rows: the int4 kernel needs a multiple of 16
    with pytest.raises(LmforgeError, match="divisible by 16"):
        Int4Linear(odd)
    assert isinstance(quantize_linear(odd, "int4"), Int8Linear)
    assert isinstance(quantize_linear(_linear(96, 48), "int4", group_size=64), Int8Linear)  # 96 % 64
    assert isinstance(quantize_linear(_linear(96, 48), "int4", group_size=32), Int4Linear)


def _decoder(family: str, seed=0):
    torch.manual_seed(seed)
    if family == "llama":  # d_ff 128: every projection fits int4's kernel
        return build_model(get_preset("llama-tiny", vocab_size=64, max_seq_len=64, d_ff=128)).eval()
    return build_model(get_preset("tiny", vocab_size=64, max_seq_len=64)).eval()


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("mode", ["int8", "int4"])
def test_quantized_decoder_stays_close_to_float_and_generates(family, mode):
    model = _decoder(family)
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(ids)
    model.fuse_projections()  # as quantize_model does first: q/k/v in one layer, gate/up in one
    linears = sum(isinstance(m, nn.Linear) for m in model.blocks.modules())
    done = quantize_model(model, mode)
    kind = "Int8Linear" if mode == "int8" else "Int4Linear"
    assert done == ({kind: linears, "Int8Linear": 1} if mode == "int4" else {kind: linears + 1})
    assert not any(isinstance(m, nn.Linear) for m in model.modules())
    with torch.no_grad():
        logits = model(ids)
    # Measured: int8 within 0.7% of the largest logit, int4 within 7% (tiny random weights, groups of 32).
    _close(logits, expected, 0.03 if mode == "int8" else 0.15)
    agree = (logits.argmax(-1) == expected.argmax(-1)).float().mean().item()
    assert agree >= (0.9 if mode == "int8" else 0.75), agree
    config = GenerationConfig(max_new_tokens=6, temperature=0.0)
    steps = list(generate_ids(model, [[1, 2, 3], [4, 5]], config))
    assert len(steps) == 6 and all(0 <= t < 64 for step in steps for t in step)


def test_quantize_model_refuses_what_it_cannot_do():
    with pytest.raises(LmforgeError, match="unknown quantization 'int3'; choose one of: int8, int4"):
        quantize_model(_decoder("gpt2"), "int3")
    with pytest.raises(LmforgeError, match="group size"):
        quantize_model(_decoder("gpt2"), "int4", group_size=16)
    for preset in ("bert-tiny", "t5-tiny"):
        with pytest.raises(LmforgeError, match="decoder-only models"):
            quantize_model(build_model(get_preset(preset)), "int8")
    model = _decoder("llama")
    quantize_model(model, "int8")
    with pytest.raises(LmforgeError, match="already quantized"):
        quantize_model(model, "int4")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny GPT-2 checkpoint with a character tokenizer, as `lmforge generate` reads one."""
    out = tmp_path_factory.mktemp("quant")
    tok = train_tokenizer(iter(["def add(a, b):\n    return a + b\n"] * 20), vocab_size=48, kind="char")
    torch.manual_seed(0)
    build_model(get_preset("tiny", vocab_size=tok.vocab_size, max_seq_len=64)).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.mark.slow
def test_generate_quantize_int8_through_the_command(checkpoint):
    import lmforge

    args = ["--prompt", "def ", "--max-new-tokens", 12, "--temperature", 0]
    result = run_lmforge("generate", "--model", checkpoint, *args, "--quantize", "int8", "--bench")
    assert result.returncode == 0, result.stderr
    assert "tokens/s (int8, cpu)" in result.stderr
    model = lmforge.load_model(checkpoint, quantize="int8")  # as the command loads it
    expected = lmforge.generate(
        model, lmforge.load_tokenizer(checkpoint), "def ", max_new_tokens=12, temperature=0
    )
    assert result.stdout == expected + "\n"


@pytest.mark.slow
def test_bad_quantize_values_and_models_are_one_line(checkpoint, tmp_path):
    args = ["--prompt", "def ", "--max-new-tokens", 2]
    result = run_lmforge("generate", "--model", checkpoint, *args, "--quantize", "int3")
    assert_one_line_error(result, "--quantize", "int3")
    for preset in ("bert-tiny", "t5-tiny"):
        build_model(get_preset(preset)).save_pretrained(tmp_path / preset)
        result = run_lmforge("generate", "--model", tmp_path / preset, *args, "--quantize", "int8")
        assert_one_line_error(result, "quantization is for decoder-only models")


def test_load_model_checks_the_mode_before_loading(tmp_path):
    import lmforge

    # The directory does not exist: a mode error first means the weights were never looked for.
    with pytest.raises(LmforgeError, match="unknown quantization 'int2'"):
        lmforge.load_model(tmp_path / "missing", quantize="int2")


@pytest.mark.parametrize("in_features", [100, 104, 8])
def test_a_shape_the_int8_kernel_cannot_take_stays_float(in_features):
    """The CPU int8 kernel crashes (in_features not a multiple of 8) or is wrong (of 8 but not 16):
    such a layer is left float, in both modes, and computes exactly what it did."""
    linear = nn.Linear(in_features, 48)
    for mode in ("int8", "int4"):
        assert quantize_linear(linear, mode) is linear
    assert isinstance(quantize_linear(nn.Linear(112, 48), "int8"), Int8Linear)
