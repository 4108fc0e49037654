"""Reading GGUF files (llama.cpp's single-file format, https://github.com/ggml-org/ggml/blob/master/docs/gguf.md).

A GGUF file is a header of typed key-value metadata (`llama.block_count`, `tokenizer.ggml.tokens`, ...)
followed by tensors under llama.cpp's names (`blk.0.attn_q.weight`), each in a ggml storage type:
plain (F32, F16, BF16) or quantized in blocks (Q8_0, Q4_0, Q4_1, the K-quants Q4_K, Q5_K, Q6_K, ...).
Here the metadata becomes an lmforge config, and the tensors, dequantized to float by the `gguf`
package, become an lmforge state dict; or, for `load_model(..., quantize="int4")`, the block projections
stored as Q4_0 or Q4_1 become int4 layers straight from their codes (blocks.py).

Two layout differences from a Hugging Face checkpoint are undone on the way:
- llama.cpp rotates interleaved pairs (x0, x1), (x2, x3), ... of each head, while lmforge (like Hugging
  Face) rotates the first half of a head against its second half. Its converter therefore permutes the
  rows of the Q and K projections within each head; `unpermute_rope_rows` puts them back.
- GPT-2's fused `attn_qkv` is split into the q, k and v projections.
Llama 3.1's RoPE scaling arrives as a tensor of per-frequency divisors (`rope_freqs`); it is read back
into the `llama3` rope_scaling it came from.
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from lmforge.errors import LmforgeError
from lmforge.gguf.blocks import is_int4_blocks, read_int4_blocks
from lmforge.models import GPT2Config, LlamaConfig

ARCHITECTURES = ("llama", "gpt2")

# lmforge config field <- GGUF key (after the `{architecture}.` prefix).
LLAMA_KEYS = [
    ("max_seq_len", "context_length"),
    ("d_model", "embedding_length"),
    ("n_layers", "block_count"),
    ("n_heads", "attention.head_count"),
    ("n_kv_heads", "attention.head_count_kv"),
    ("d_head", "attention.key_length"),
    ("d_ff", "feed_forward_length"),
    ("norm_eps", "attention.layer_norm_rms_epsilon"),
    ("rope_theta", "rope.freq_base"),
]
GPT2_KEYS = [
    ("max_seq_len", "context_length"),
    ("d_model", "embedding_length"),
    ("n_layers", "block_count"),
    ("n_heads", "attention.head_count"),
    ("d_ff", "feed_forward_length"),
    ("norm_eps", "attention.layer_norm_epsilon"),
]
TOKEN_ID_KEYS = [
    ("bos_token_id", "tokenizer.ggml.bos_token_id"),
    ("eos_token_id", "tokenizer.ggml.eos_token_id"),
    ("pad_token_id", "tokenizer.ggml.padding_token_id"),
]
# Tokens that also end a turn (Llama 3's <|eot_id|>): they join EOS in generation_config.
EXTRA_EOS_KEYS = ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id")
# generation_config sampling default <- llama.cpp's key for it.
SAMPLING_KEYS = [
    ("temperature", "general.sampling.temp"),
    ("top_k", "general.sampling.top_k"),
    ("top_p", "general.sampling.top_p"),
    ("repetition_penalty", "general.sampling.penalty_repeat"),
]

# GGUF tensor name -> lmforge name. Outside the blocks:
GLOBAL_TENSORS = {
    "token_embd": "embed",
    "position_embd": "pos_embed",
    "output_norm": "norm",
    "output": "lm_head",
}
# Inside block i (`blk.{i}.NAME` -> `blocks.{i}.NAME`):
LAYER_TENSORS = {
    "attn_norm": "attn_norm",
    "attn_q": "attn.q_proj",
    "attn_k": "attn.k_proj",
    "attn_v": "attn.v_proj",
    "attn_output": "attn.o_proj",
    "ffn_norm": "mlp_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
FUSED_QKV = "attn_qkv"  # GPT-2: q, k and v stacked along the output rows
_LAYER_NAME = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


@dataclass
class GGUFFile:
    """A GGUF file's metadata (plain Python values) and its tensors (read lazily through a memory map)."""

    path: Path
    metadata: dict[str, Any]
    tensors: dict[str, Any]  # GGUF name -> gguf.ReaderTensor

    @property
    def architecture(self) -> str:
        return self.metadata.get("general.architecture", "")

    def arch_value(self, key: str, default: Any = None) -> Any:
        """The architecture's own `{architecture}.{key}` entry."""
        return self.metadata.get(f"{self.architecture}.{key}", default)

    def shape(self, name: str) -> tuple[int, ...]:
        """A tensor's shape in PyTorch order (GGUF lists dimensions fastest-first)."""
        return tuple(int(n) for n in reversed(self.tensors[name].shape))


def read_gguf(path: str | Path) -> GGUFFile:
    """Open a GGUF file (cached: the model and its tokenizer read the same file)."""
    path = Path(path).resolve()
    try:
        stat = path.stat()
    except OSError as e:
        raise LmforgeError(f"cannot read {path} ({e.strerror})") from None
    return _read_gguf(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=2)
def _read_gguf(path: Path, mtime_ns: int, size: int) -> GGUFFile:
    import gguf

    class Reader(gguf.GGUFReader):
        # NOTE: the reader slices its np.memmap once per metadata item (two per token of the vocabulary),
        # and slicing a memmap is slow. A plain ndarray view of the same mapped memory reads the
        # metadata about 2.5x faster (SmolLM2: 2 s instead of 6).
        @property
        def data(self):
            return self._array

        @data.setter
        def data(self, value):
            self._array = value.view(np.ndarray)

    try:
        reader = Reader(path)
        metadata = {name: field.contents() for name, field in reader.fields.items()}
    except Exception as e:  # the reader raises ValueError, struct and index errors for a bad file
        raise LmforgeError(
            f"{path} is not a readable GGUF file ({type(e).__name__}: {e}); it is truncated or not GGUF"
        ) from None
    parts = metadata.get("split.count", 1)
    if parts > 1:
        raise LmforgeError(
            f"{path.name} is one of {parts} parts of a split GGUF model; join them into one file first "
            "(llama.cpp: llama-gguf-split --merge FIRST-PART OUT.gguf)"
        )
    return GGUFFile(path, metadata, {t.name: t for t in reader.tensors})


def _float32_value(value: float) -> float:
    # GGUF stores float32: 1e-5 arrives as 9.999999747378752e-06. Its shortest float32 spelling
    # gives the number the model was configured with (and a clean config.json).
    return float(str(np.float32(value)))


def model_config(file: GGUFFile) -> LlamaConfig | GPT2Config:
    """The lmforge config the file's metadata describes."""
    arch = file.architecture
    if arch not in ARCHITECTURES:
        raise LmforgeError(
            f"{file.path.name}: unsupported GGUF architecture {arch!r}; supported: {', '.join(ARCHITECTURES)}"
        )
    if "token_embd.weight" not in file.tensors:
        raise LmforgeError(f"{file.path.name} has no token_embd.weight; it is not a language model file")
    keys = LLAMA_KEYS if arch == "llama" else GPT2_KEYS
    fields = {ours: file.arch_value(theirs) for ours, theirs in keys if file.arch_value(theirs) is not None}
    fields.update({ours: file.metadata[key] for ours, key in TOKEN_ID_KEYS if key in file.metadata})
    fields["vocab_size"] = file.shape("token_embd.weight")[0]
    for name in ("norm_eps", "rope_theta"):
        if name in fields:
            fields[name] = _float32_value(fields[name])
    if arch == "llama":
        fields.update(_llama_fields(file, fields))
    try:
        return (LlamaConfig if arch == "llama" else GPT2Config)(**fields)
    except (TypeError, ValueError) as e:
        raise LmforgeError(f"{file.path.name}: invalid {arch} metadata ({e})") from None


def _llama_fields(file: GGUFFile, fields: dict) -> dict:
    name = file.path.name
    if file.arch_value("expert_count", 0):
        raise LmforgeError(
            f"{name} is a mixture-of-experts model (Mixtral-style); only dense llama is supported"
        )
    if isinstance(fields.get("n_kv_heads"), list):
        raise LmforgeError(
            f"{name} has a different number of key/value heads per layer; this is not supported"
        )
    d_head = fields.get("d_head") or fields["d_model"] // fields["n_heads"]
    if file.arch_value("rope.dimension_count", d_head) != d_head:
        raise LmforgeError(f"{name} rotates only part of each head (partial RoPE); this is not supported")
    if file.arch_value("attention.value_length", d_head) != d_head:
        raise LmforgeError(f"{name} has value heads of another size than key heads; this is not supported")
    kind = file.arch_value("rope.scaling.type", "none")
    if kind not in ("none", "linear"):
        raise LmforgeError(f"{name}: unsupported RoPE scaling {kind!r}; supported: none, linear, llama3")
    scaling = None
    if kind == "linear":
        scaling = {"rope_type": "linear", "factor": _float32_value(file.arch_value("rope.scaling.factor"))}
    if "rope_freqs.weight" in file.tensors:
        theta = fields.get("rope_theta", 10000.0)
        scaling = llama3_scaling(dequantize(file, "rope_freqs.weight"), d_head, theta, name)
    return {
        "d_head": d_head,
        "rope_scaling": scaling,
        "tie_embeddings": "output.weight" not in file.tensors,
        "attention_bias": "blk.0.attn_q.bias" in file.tensors,
        "mlp_bias": "blk.0.ffn_up.bias" in file.tensors,
    }


def llama3_scaling(factors: torch.Tensor, d_head: int, theta: float, name: str) -> dict | None:
    """Llama 3.1's rope_scaling, from the per-frequency factors (`rope_freqs`) llama.cpp stores instead.

    Its converter divides frequency i by factor_i: 1 at short wavelengths, `factor` at long ones, and
    1 / ((1 - s) / factor + s) between, where s = (L / wavelength - low) / (high - low) is linear in
    1 / wavelength. Two factors in that band fix the line, and with it the rotation whatever the original
    length L; Llama 3's 8192 is taken, which gives back its own low and high factors.
    """
    factors = factors.double()
    factor = float(factors.max())
    if factor == 1.0:
        return None
    wavelength = 2 * math.pi * theta ** (torch.arange(0, d_head, 2, dtype=torch.float64) / d_head)
    smooth = (1 / factors - 1 / factor) / (1 - 1 / factor)
    band = (smooth > 1e-4) & (smooth < 1 - 1e-4)
    if int(band.sum()) < 2:
        raise LmforgeError(
            f"{name}: its RoPE factors (rope_freqs) are not Llama 3.1's scaling; not supported"
        )
    x, y = 1 / wavelength[band], smooth[band]
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())
    intercept = float(y.mean()) - slope * float(x.mean())
    old_len = 8192
    low = -intercept * old_len / slope
    return {
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": round(low, 4),
        "high_freq_factor": round(low + old_len / slope, 4),
        "original_max_position_embeddings": old_len,
    }


def generation_eos_ids(file: GGUFFile) -> list[int]:
    """EOS and the other ids that end a reply (end of turn, end of message), without repeats."""
    ids = [file.metadata.get(key) for key in ("tokenizer.ggml.eos_token_id", *EXTRA_EOS_KEYS)]
    return list(dict.fromkeys(i for i in ids if i is not None))


def dequantize(file: GGUFFile, name: str) -> torch.Tensor:
    """One tensor as float32, whatever its storage type."""
    from gguf.quants import dequantize as gguf_dequantize

    tensor = file.tensors[name]
    try:
        values = gguf_dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError:
        raise LmforgeError(
            f"{file.path.name}: tensor {name} has type {tensor.tensor_type.name}, which the installed "
            "gguf package cannot dequantize; upgrade it (pip install -U gguf)"
        ) from None
    # A copy: plain F32 tensors would otherwise stay views of the read-only memory map.
    return torch.from_numpy(np.array(values, dtype=np.float32).reshape(file.shape(name)))


def unpermute_rope_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's reordering of a Q or K projection's output rows (weight or bias).

    Within each head, its converter moved row j of the first half to 2j and row j of the second half to
    2j + 1, so that its RoPE can rotate adjacent pairs; this moves them back to halves.
    """
    d_half = weight.shape[0] // n_heads // 2
    rows = weight.reshape(n_heads, d_half, 2, *weight.shape[1:])  # (heads, d_head / 2, pair, ...)
    return rows.transpose(1, 2).reshape(weight.shape)  # (heads, half, d_head / 2, ...) flattened


def state_dict(
    file: GGUFFile, config, dtype: torch.dtype = torch.float32, skip: set[str] = frozenset()
) -> dict[str, torch.Tensor]:
    """The file's tensors under lmforge names, in dtype; unknown tensors are an error. `skip`: GGUF names
    read another way (int4_layers)."""
    state = {}
    for name in file.tensors:
        if name in skip:
            continue
        tensor = dequantize(file, name)
        for ours, value in _lmforge_tensors(file, name, tensor, config).items():
            state[ours] = value.to(dtype)
    if "lm_head.weight" not in state and getattr(config, "tie_embeddings", True):
        state["lm_head.weight"] = state["embed.weight"]
    return state


def _lmforge_tensors(file: GGUFFile, name: str, tensor: torch.Tensor, config) -> dict[str, torch.Tensor]:
    stem, _, kind = name.rpartition(".")
    if stem == "rope_freqs":  # Llama 3.1's RoPE scaling, read into the config (llama3_scaling)
        return {}
    if stem in GLOBAL_TENSORS:
        if stem == "output" and config.model_type == "gpt2":
            # NOTE: lmforge's GPT-2 ties its head to the embedding. llama.cpp writes the head as a copy
            # of token_embd (possibly quantized another way); the embedding is taken for both.
            return {}
        return {f"{GLOBAL_TENSORS[stem]}.{kind}": tensor}
    match = _LAYER_NAME.fullmatch(name)
    if match is None or (match[2] not in LAYER_TENSORS and match[2] != FUSED_QKV):
        raise LmforgeError(f"{file.path.name} has a tensor lmforge does not know: {name}")
    i, part, kind = match.groups()
    prefix = f"blocks.{i}."
    if part == FUSED_QKV:
        q, k, v = tensor.chunk(3, dim=0)
        return {f"{prefix}attn.{x}_proj.{kind}": t for x, t in zip("qkv", (q, k, v))}
    if part == "attn_q" and config.model_type == "llama":
        tensor = unpermute_rope_rows(tensor, config.n_heads)
    elif part == "attn_k" and config.model_type == "llama":
        tensor = unpermute_rope_rows(tensor, config.n_kv_heads)
    return {f"{prefix}{LAYER_TENSORS[part]}.{kind}": tensor}


def int4_layers(file: GGUFFile, config, dtype: torch.dtype) -> tuple[dict[str, nn.Module], set[str]]:
    """Int4Linear layers under lmforge module names, built straight from the codes and block scales of
    each block projection the file stores as Q4_0 or Q4_1 (blocks.py), its bias in dtype; and the GGUF
    names of the tensors they took. A projection the int4 kernel cannot take is left out."""
    from lmforge.nn.quant import Int4Linear

    layers, used = {}, set()
    for name, tensor in file.tensors.items():
        if not (name.endswith(".weight") and _LAYER_NAME.fullmatch(name) and is_int4_blocks(tensor)):
            continue
        # Each of codes, scales and zeros is laid out by rows: the Q/K row order and GPT-2's q, k, v split
        # apply to them as to a float weight.
        codes, scales, zeros = (
            _lmforge_tensors(file, name, t, config) for t in read_int4_blocks(tensor, file.shape(name))
        )
        if any(c.shape[0] % 16 for c in codes.values()):
            continue  # the int4 kernel takes output rows in 16s; quantize_model quantizes it from floats
        bias_name = name.removesuffix("weight") + "bias"
        biases = {}
        if bias_name in file.tensors:
            biases = _lmforge_tensors(file, bias_name, dequantize(file, bias_name), config)
            used.add(bias_name)
        for key in codes:
            module = key.removesuffix(".weight")
            bias = biases.get(f"{module}.bias")
            bias = None if bias is None else bias.to(dtype)
            layers[module] = Int4Linear.from_codes(codes[key], scales[key], zeros[key], bias)
        used.add(name)
    return layers, used


class SkipInitialisation(TorchFunctionMode):
    """While active, nn.init's in-place fills of parameters do nothing: for a model whose every weight
    comes from a file next. Its parameters stay fresh allocations, which the OS maps lazily: no time
    spent filling them, and no memory held for those the file's int4 layers replace before any use."""

    # Skipping one is only saved work: every parameter is overwritten or replaced after the build.
    FILLS = frozenset(
        [getattr(nn.init, f"{name}_") for name in ("normal", "uniform", "kaiming_uniform", "zeros", "ones")]
        + [torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.zero_, torch.Tensor.fill_]
    )

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        target = args[0] if args else kwargs.get("tensor")  # nn.init passes it by keyword
        if func in self.FILLS and isinstance(target, nn.Parameter):
            return target
        return func(*args, **kwargs)


def load_gguf_model(
    path: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    int4_blocks: bool = False,
):
    """A llama or GPT-2 model from a GGUF file, dequantized to dtype, in eval mode.

    int4_blocks (on the CPU): the block projections stored as Q4_0 or Q4_1 become Int4Linear layers
    straight from the file's codes and block scales (int4_layers), never float; the rest loads as above,
    for `quantize_model(model, "int4")` to finish (Q8_0 and other types, the head). The model is built
    without random initialisation (SkipInitialisation).
    """
    from lmforge.models import build_model

    file = read_gguf(path)
    config = model_config(file)
    layers, used = int4_layers(file, config, dtype) if int4_blocks else ({}, set())
    with SkipInitialisation() if int4_blocks else contextlib.nullcontext():
        model = build_model(config)
    state = state_dict(file, config, dtype, skip=used)
    taken = {f"{module}.{kind}" for module in layers for kind in ("weight", "bias")}
    _check_tensors(file, {k: t for k, t in model.state_dict().items() if k not in taken}, state)
    model.load_state_dict(state, strict=not layers)
    # NOTE: the projections read as int4 go in after .to(dtype), which would turn their bfloat16 scales
    # into dtype; the float layers they replace leave first, never filled (SkipInitialisation).
    for name in layers:
        _set_module(model, name, nn.Identity())
    model = model.to(device=device, dtype=dtype)
    for name, layer in layers.items():
        _set_module(model, name, layer)
    generation = _generation_config(file)
    if generation:
        model.generation_config = generation
    model.name_or_path = str(file.path)
    return model.eval()


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, module)


def _check_tensors(file: GGUFFile, expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor]) -> None:
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        what = f"lacks {missing[0]}" if missing else f"has an extra {unexpected[0]}"
        raise LmforgeError(f"{file.path.name} {what}; it does not match its own metadata")
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            raise LmforgeError(
                f"{file.path.name}: tensor {key} has shape {tuple(state[key].shape)} but the metadata "
                f"implies {tuple(tensor.shape)}"
            )


def _generation_config(file: GGUFFile) -> dict:
    eos_ids = generation_eos_ids(file)
    generation = {"eos_token_id": eos_ids} if len(eos_ids) > 1 else {}
    for ours, key in SAMPLING_KEYS:
        if isinstance(file.metadata.get(key), (int, float)):
            value = file.metadata[key]
            generation[ours] = value if isinstance(value, int) else _float32_value(value)
    return generation
