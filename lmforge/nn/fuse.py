"""Linear layers rewritten for decoding: the ones that read the same input fused into one (the query,
key and value projections of self-attention, `Attention.fuse_qkv`; the gate and up projections of a
gated MLP, `GatedMLP.fuse_gate_up`), and large float32 ones made faster on a single row
(`OneRowLinear`). `CausalLM.fuse_projections` does all of it, in every block and the head.

A decode step at batch 1 is a chain of matrix-vector products, each with a fixed cost of its own
(a dispatch, a thread launch, the float/bfloat16 casts of a quantized layer): one product over the
stacked rows costs less than three over the parts (SmolLM2-135M int4: 4 products a block instead of 7).
Rows of a weight are independent in every layout here, so stacking works on float, int8 and int4
layers alike: their weights (and scales, zero points, biases) are concatenated along the output rows
(int4 in whole blocks of packed rows; quantize_model stacks float layers before quantizing anyway).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

INT4_ROW_BLOCK = 64  # rows packed together by aten._convert_weight_to_int4pack_for_cpu


def stack_linears(layers: list[nn.Module]) -> nn.Module | None:
    """One layer computing what `layers` compute on the same input, their outputs side by side; None
    where they cannot be stacked (different kinds or input sizes, a LoRA layer)."""
    first = layers[0]
    if any(type(layer) is not type(first) or layer.in_features != first.in_features for layer in layers):
        return None
    if type(first) is nn.Linear:
        return _stack_float(layers)
    out_dims = _quantized_out_dims(first)
    if out_dims is None or any(
        getattr(layer, "group_size", None) != getattr(first, "group_size", None) for layer in layers
    ):
        return None
    # NOTE: the int4 kernel packs its rows in blocks of INT4_ROW_BLOCK, a partial block laid out apart:
    # packed parts concatenate into the packing of their stacked codes only when each part but the
    # last fills whole blocks (measured on torch 2.13; tests/nn/test_fuse.py checks it).
    if "weight_int4" in out_dims and any(layer.out_features % INT4_ROW_BLOCK for layer in layers[:-1]):
        return None
    stacked = copy.copy(first)  # the same class and settings; every buffer is replaced below
    stacked._buffers = {}
    for name, dim in out_dims.items():
        parts = [layer._buffers[name] for layer in layers]
        stacked.register_buffer(name, None if parts[0] is None else torch.cat(parts, dim=dim))
    stacked.out_features = sum(layer.out_features for layer in layers)
    return stacked


def _stack_float(layers: list[nn.Linear]) -> nn.Linear:
    first = layers[0]
    out_features = sum(layer.out_features for layer in layers)
    stacked = nn.Linear(first.in_features, out_features, bias=first.bias is not None)
    stacked.to(device=first.weight.device, dtype=first.weight.dtype)
    with torch.no_grad():
        stacked.weight.copy_(torch.cat([layer.weight for layer in layers]))
        if stacked.bias is not None:
            stacked.bias.copy_(torch.cat([layer.bias for layer in layers]))
    return stacked


def _quantized_out_dims(layer: nn.Module) -> dict[str, int] | None:
    """{buffer: the dimension of its output rows} of a quantized layer, None for another kind."""
    from lmforge.nn.quant import Int4Linear, Int8Linear

    if type(layer) is Int8Linear:  # codes (out, in), one scale per output row
        return {"weight_int8": 0, "scales": 0, "bias": 0}
    if type(layer) is Int4Linear:  # packed codes (out, in / 2), scales and zeros (in / group, out, 2)
        return {"weight_int4": 0, "scales": 1, "bias": 0}
    return None


class OneRowLinear(nn.Linear):
    """`nn.Linear` that multiplies a single float32 row on the CPU as a two-row matrix product.

    For one row, `F.linear` takes MKL's matrix-vector path, which runs on one thread at a fraction of
    the memory bandwidth; the same row sent twice through `W @ x^T` is a matrix product on every
    thread (half of it kept). Measured on a 2-core EPYC (AVX512-BF16), float32 weights read from
    memory: a 1024 x 256 weight 124 us against 47, SmolLM2's 49152 x 576 output head 9.9 ms against
    3.2. In bfloat16 one row is fast as it is (oneDNN), and a small weight does not pay for the extra
    operations (about 10 us together), so only float32 weights of MIN_ELEMENTS or more are swapped.
    """

    MIN_ELEMENTS = 1 << 18  # 1 MB of float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() != x.shape[-1] or x.dtype != torch.float32 or x.device.type != "cpu":
            return F.linear(x, self.weight, self.bias)
        row = x.reshape(1, -1)
        rows = torch.cat((row, row)).t()  # (in, 2)
        out = (
            torch.mm(self.weight, rows)
            if self.bias is None
            else torch.addmm(self.bias[:, None], self.weight, rows)
        )
        return out[:, :1].t().contiguous().view(*x.shape[:-1], self.out_features)


def swap_one_row_linears(model: nn.Module) -> int:
    """Make every large float32 `nn.Linear` of `model` (its head included) a OneRowLinear; return how
    many. The same modules with the same parameters (a tied head stays tied): only their forward changes."""
    large = [
        m
        for m in model.modules()
        if type(m) is nn.Linear
        and m.weight.dtype == torch.float32
        and m.weight.numel() >= OneRowLinear.MIN_ELEMENTS
    ]
    for module in large:
        module.__class__ = OneRowLinear
    return len(large)
