"""Fusing linear layers that read the same input into one, for inference: the query, key and value
projections of self-attention (`Attention.fuse_qkv`), the gate and up projections of a gated MLP
(`GatedMLP.fuse_gate_up`); `CausalLM.fuse_projections` does both in every block.

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
