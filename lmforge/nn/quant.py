"""Weight-only quantized linear layers for decoding on the CPU, on PyTorch's own int8 and int4 kernels.

Decoding one token reads every weight once, so at batch 1 its speed is memory bandwidth over weight
bytes: int8 weights are a quarter of float32's, int4 an eighth. Only the weights are quantized; the
activations stay floating point (weight-only quantization, as in GPTQ/AWQ-style int4 and llama.cpp's
Q8_0/Q4_x, without their calibration: plain round-to-nearest here).

- int8, per output channel, symmetric: `w[n, k] ~ s[n] * q[n, k]`, q in [-127, 127], s = max|w[n]| / 127.
  Kernel: `aten._weight_int8pack_mm(x (M, K), q int8 (N, K), s (N,))`.
- int4, per group of `group_size` inputs of each output row, asymmetric (min/max):
  `w ~ (q - 8) * scale + zero`, q in [0, 15], scale = (max - min) / 15, zero = min + 8 * scale.
  Kernels: `aten._convert_weight_to_int4pack_for_cpu(q int32 (N, K), 2)` packs two codes a byte once;
  `aten._weight_int4pack_mm_for_cpu(x (M, K), packed, group_size, scales_and_zeros (K / G, N, 2))`.
  It needs N divisible by 16 and K by the group size (32, 64, 128 or 256); a layer that is not gets int8.

`quantize_model(model, "int8" | "int4")` swaps a decoder's `nn.Linear` layers (every block's projections)
for these once the float weights are loaded, and its output head for an int8 one in both modes: the head
is a fifth of a small model's weights (SmolLM2-135M: a 49152 x 576 vocabulary) and about half its
float32 decoding time, and int4 there costs more quality than anywhere else (bench/quant.py: SmolLM2's
perplexity +6% with an int4 head, +0.0% with int8). The token embedding stays float: a lookup reads
one row per token, not the whole matrix.
`model.float()` after quantizing moves the scales to float32 and the kernels to float32 activations:
the same weights, much slower (see COMPUTE_DTYPE).
"""

from __future__ import annotations

import torch
from torch import nn

from lmforge.errors import LmforgeError

MODES = ("int8", "int4")
GROUP_SIZES = (32, 64, 128, 256)
# NOTE: both kernels accept float32 activations, but on the CPU only their bfloat16 path is vectorised
# (measured on an AVX512-BF16 EPYC: 5-20x faster per layer). So a quantized layer computes in bfloat16
# and gives its result back in the input's dtype; the rest of the model keeps its own dtype.
COMPUTE_DTYPE = torch.bfloat16


class QuantizedLinear(nn.Module):
    """What the int8 and int4 layers share: shapes, the float bias, and the dtype round trip."""

    in_features: int
    out_features: int

    def __init__(self, base: nn.Linear):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        bias = None if base.bias is None else base.bias.detach().clone()
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        # The kernels take 2-D activations in the dtype of the scales (bfloat16 unless moved since).
        y = self.matmul(x.reshape(-1, self.in_features).to(self.scales.dtype)).to(x.dtype)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*shape[:-1], self.out_features)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
        )


class Int8Linear(QuantizedLinear):
    """`nn.Linear` with int8 weights and one scale per output channel (symmetric)."""

    def __init__(self, base: nn.Linear):
        super().__init__(base)
        codes, scales = quantize_int8(base.weight.detach())
        self.register_buffer("weight_int8", codes)  # (out, in)
        self.register_buffer("scales", scales)  # (out,)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int8pack_mm(x, self.weight_int8, self.scales)

    def dequantized_weight(self) -> torch.Tensor:
        """The float32 weight (out, in) that this layer multiplies by."""
        return self.weight_int8.float() * self.scales.float()[:, None]


class Int4Linear(QuantizedLinear):
    """`nn.Linear` with 4-bit weights, a scale and a zero point per group of `group_size` inputs."""

    def __init__(self, base: nn.Linear, group_size: int = 32, *, codes: tuple | None = None):
        """base's weight quantized by `quantize_int4`, or (from_codes) `codes` = (codes, scales, zeros)
        as quantize_int4 gives them, with base standing only for the shapes and the bias."""
        super().__init__(base)
        if not fits_int4(base, group_size):
            raise LmforgeError(
                f"int4 needs out_features divisible by 16 and in_features by the group size {group_size}; "
                f"this layer is ({base.out_features}, {base.in_features})"
            )
        self.group_size = group_size
        codes, scales, zeros = codes or quantize_int4(base.weight.detach(), group_size)
        self.register_buffer("weight_int4", torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 2))
        # (in / group_size, out, 2): the layout the kernel reads, scale then zero point.
        scales_and_zeros = torch.stack([scales, zeros], dim=-1).transpose(0, 1).to(COMPUTE_DTYPE).contiguous()
        self.register_buffer("scales", scales_and_zeros)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, self.weight_int4, self.group_size, self.scales)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, group_size={self.group_size}"

    @classmethod
    def from_codes(
        cls,
        codes: torch.Tensor,
        scales: torch.Tensor,
        zeros: torch.Tensor,
        bias: torch.Tensor | None = None,
        group_size: int = 32,
    ) -> Int4Linear:
        """A layer from codes already on the int4 grid, with no float weight ever made: codes (out, in)
        of an integer dtype in [0, 15], scales and zero points (out, in / group_size) such that the
        weight is `(codes - 8) * scale + zero` (those two rounded to COMPUTE_DTYPE here). GGUF's Q4_0
        and Q4_1 blocks arrive this way (lmforge/gguf/blocks.py)."""
        out_features, in_features = codes.shape
        if scales.shape != zeros.shape or scales.shape != (out_features, in_features // group_size):
            raise LmforgeError(
                f"int4 codes of shape {tuple(codes.shape)} in groups of {group_size} need scales and zero "
                f"points of shape {(out_features, in_features // group_size)}; got {tuple(scales.shape)} "
                f"and {tuple(zeros.shape)}"
            )
        shape = nn.Linear(in_features, out_features, bias=False, device="meta")  # shapes only, no memory
        layer = cls(shape, group_size, codes=(codes.to(torch.int32), scales, zeros))
        if bias is not None:
            layer.bias = bias.detach().clone()
        return layer


def dequantize_int4(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    """The float32 weight (out, in) that int4 codes, scales and zero points (as quantize_int4 gives them)
    stand for; the packed form the kernel reads cannot be unpacked portably, so this is the reference."""
    out_features, in_features = codes.shape
    groups = codes.float().view(out_features, scales.shape[1], -1)  # (out, groups, group_size)
    w = (groups - 8) * scales.float()[..., None] + zeros.float()[..., None]
    return w.view(out_features, in_features)


def quantize_int4(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes (out, in) int32 in [0, 15], scales and zero points (out, in / group_size) in COMPUTE_DTYPE,
    from each group's min and max, so that `w ~ (codes - 8) * scale + zero`."""
    out_features, in_features = w.shape
    groups = w.float().view(out_features, in_features // group_size, group_size)
    low, high = groups.amin(dim=-1), groups.amax(dim=-1)
    # The codes are rounded against the scale and zero point as stored (rounded to COMPUTE_DTYPE).
    scales = ((high - low) / 15).clamp(min=1e-8).to(COMPUTE_DTYPE)
    zeros = (low + 8 * scales.float()).to(COMPUTE_DTYPE)
    codes = torch.round((groups - zeros.float()[..., None]) / scales.float()[..., None] + 8).clamp(0, 15)
    return codes.view(out_features, in_features).to(torch.int32), scales, zeros


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes (out, in) int8 in [-127, 127] and one scale per output row in COMPUTE_DTYPE: `w ~ s * q`."""
    scales = (w.float().abs().amax(dim=1).clamp(min=1e-8) / 127).to(COMPUTE_DTYPE)  # (out,)
    codes = torch.round(w.float() / scales.float()[:, None]).clamp(-127, 127)
    return codes.to(torch.int8), scales


def fits_int8(linear: nn.Linear) -> bool:
    """Whether the int8 kernel takes this layer's shape."""
    # NOTE: measured on torch 2.13's CPU kernel: with in_features not a multiple of 8 it crashes the
    # process (SIGSEGV), and with a multiple of 8 but not of 16 its results are wrong (garbage, NaN).
    return linear.in_features % 16 == 0


def fits_int4(linear: nn.Linear, group_size: int) -> bool:
    """Whether the int4 kernel takes this layer's shape."""
    return linear.out_features % 16 == 0 and linear.in_features % group_size == 0


def quantize_linear(linear: nn.Linear, mode: str, group_size: int = 32) -> nn.Module:
    """The quantized version of one linear layer: int4 falls back to int8 where its kernel cannot take
    the shape, and int8 to the float layer itself."""
    if mode == "int4" and fits_int4(linear, group_size):
        return Int4Linear(linear, group_size)
    return Int8Linear(linear) if fits_int8(linear) else linear


def check_mode(mode: str, group_size: int = 32) -> None:
    """A one-line error for a mode or group size that quantize_model does not know."""
    if mode not in MODES:
        raise LmforgeError(f"unknown quantization {mode!r}; choose one of: {', '.join(MODES)}")
    if group_size not in GROUP_SIZES:
        sizes = ", ".join(map(str, GROUP_SIZES))
        raise LmforgeError(f"int4 group size must be one of {sizes}; got {group_size}")


def quantize_model(model: nn.Module, mode: str, *, group_size: int = 32, head: str | None = "int8") -> dict:
    """Replace every `nn.Linear` in a decoder-only model's blocks by an int8 or int4 one (`mode`), and its
    output head by one in `head`'s mode (None: the head stays float), in place; return {layer class:
    how many} of what was done. The model is for inference from then on (no gradients, no saving).
    """
    check_mode(mode, group_size)
    if head is not None:
        check_mode(head, group_size)
    # NOTE: duck-typed (lmforge.models imports lmforge.nn, not the reverse): `embed_input` is what only
    # the decoder-only families (CausalLM) define.
    if not hasattr(model, "embed_input") or not hasattr(model, "blocks"):
        kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise LmforgeError(f"quantization is for decoder-only models (gpt2, llama families); this is {kind}")
    if getattr(model, "quantization", None):
        raise LmforgeError(f"this model is already quantized ({model.quantization})")
    if model.device.type != "cpu":
        raise LmforgeError(f"quantized layers run on the CPU only; this model is on {model.device}")
    model.fuse_projections()  # fewer, larger products: q/k/v in one layer, gate/up in one
    modes = {f"blocks.{n}": mode for n, m in model.blocks.named_modules() if isinstance(m, nn.Linear)}
    if head is not None and isinstance(getattr(model, "lm_head", None), nn.Linear):
        modes["lm_head"] = head  # tied to the embedding: the head gets its own copy, the lookup stays float
    done: dict[str, int] = {}
    for name, layer_mode in modes.items():
        parent, _, child = name.rpartition(".")
        owner = model.get_submodule(parent)
        layer = quantize_linear(getattr(owner, child), layer_mode, group_size)
        setattr(owner, child, layer)
        done[type(layer).__name__] = done.get(type(layer).__name__, 0) + 1
    model.requires_grad_(False)
    model.quantization = mode if mode == "int8" else f"int4 (group {group_size})"
    return done
