"""Linear layers rewritten for decoding: the ones that read the same input fused into one (the query,
key and value projections of self-attention, `Attention.fuse_qkv`; the gate and up projections of a
gated MLP, `GatedMLP.fuse_gate_up`), and every one made faster on the few rows of a decode step
(`DecodeLinear`). `CausalLM.fuse_projections` does all of it, in every block and the head.

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
MAX_ROWS = 16  # past this, F.linear's own path is as fast (it becomes a real matrix product)


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


class DecodeLinear(nn.Linear):
    """`nn.Linear` that multiplies the few rows of a decode step faster on the CPU, by itself (no
    function mode: a mode sees every operation of the step, which costs more than a small model's
    products save).

    - 2 to MAX_ROWS rows: `(W @ x^T)^T`, which runs about twice as fast as `F.linear`'s `x @ W^T`
      (lmforge/inference/few_rows.py, the same product for a model not rewritten for decoding).
    - 1 float32 row: `F.linear` takes MKL's matrix-vector path, on one thread at a fraction of the
      memory bandwidth; the row sent twice through `W @ x^T` is a matrix product on every thread (half
      of it kept). Measured on a 2-core EPYC (AVX512-BF16), weights read from memory: a 1024 x 256
      weight 124 us against 47, SmolLM2's 49152 x 576 output head 9.9 ms against 3.2. In bfloat16 one
      row is fast as it is (oneDNN), and a weight small enough to stay in cache does not pay for the
      extra operations (about 10 us together), so only weights of ONE_ROW_MIN_ELEMENTS or more double
      it: decoding the demo shape (256-wide) at batch 1 went from 488 to 566 tokens/s with every layer
      doubling (65,536 elements and up), while the tiny shape (64-wide) slowed from 1,757 to 1,285
      with its head and MLP doubling (16,384 elements and up).
    """

    ONE_ROW_MIN_ELEMENTS = 1 << 16  # 256 KB of float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // max(x.shape[-1], 1)
        if x.device.type != "cpu" or x.dtype != self.weight.dtype or not 1 <= rows <= MAX_ROWS:
            return F.linear(x, self.weight, self.bias)
        if rows == 1 and (x.dtype != torch.float32 or self.weight.numel() < self.ONE_ROW_MIN_ELEMENTS):
            return F.linear(x, self.weight, self.bias)
        return rows_product(x, self.weight, self.bias, rows)


def rows_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, rows: int) -> torch.Tensor:
    """`F.linear(x, weight, bias)` for x of `rows` rows (any leading shape) computed as
    `(W @ x^T)^T + b`, a single row sent twice (a matrix product, not a vector one); contiguous."""
    x2d = x.reshape(rows, -1)
    if rows == 1:
        x2d = torch.cat((x2d, x2d))  # (2, in)
    if bias is None:
        out = torch.mm(weight, x2d.t())
    else:
        out = torch.addmm(bias[:, None], weight, x2d.t())  # (out, rows)
    return out[:, :rows].t().contiguous().view(*x.shape[:-1], weight.shape[0])


def swap_decode_linears(model: nn.Module) -> int:
    """Make every `nn.Linear` of `model` (its head included) a DecodeLinear; return how many. The same
    modules with the same parameters (a tied head stays tied): only their forward changes."""
    plain = [m for m in model.modules() if type(m) is nn.Linear]
    for module in plain:
        module.__class__ = DecodeLinear
    return len(plain)
