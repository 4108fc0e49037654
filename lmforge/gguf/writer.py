"""Writing GGUF files (llama.cpp's single-file format, https://github.com/ggml-org/ggml/blob/master/docs/gguf.md).

The inverse of reader.py: an lmforge llama or GPT-2 model and its byte-level BPE tokenizer become the
metadata and tensors llama.cpp's converter (convert_hf_to_gguf.py) writes for the same checkpoint, under
the same names (reader.py's maps, inverted) and in the same layouts:
- the rows of each Q and K projection are permuted within each head (`permute_rope_rows`), since
  llama.cpp rotates interleaved pairs where lmforge rotates the first half of a head against the second;
- GPT-2's q, k and v projections are stacked into one `attn_qkv` (out, in) matrix, the transpose of
  Hugging Face's Conv1D `c_attn`, and its output head is written as a copy of the embedding;
- Llama 3.1's RoPE scaling becomes per-frequency divisors (`rope_freqs`), linear scaling two keys.
Storage follows the converter's rules: vectors, norms, biases and position embeddings stay F32, matrices
take the chosen type (f32, f16 or q8_0, quantized by the `gguf` package; a row that Q8_0's 32-value
blocks do not divide falls back to F16).

The tokenizer goes in as llama.cpp's `gpt2` tokenizer model: the vocabulary padded to the model's size,
each token's type, the merges, the name of its pre-tokenizer split (`tokenizer.ggml.pre`), the special
ids, whether BOS/EOS are added, and the chat template. generation_config's extra end ids (end of turn)
and its sampling defaults go into the keys llama.cpp reads for them.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import gguf
import torch

from lmforge.errors import LmforgeError
from lmforge.gguf.reader import (
    EXTRA_EOS_KEYS,
    FUSED_QKV,
    GLOBAL_TENSORS,
    GPT2_KEYS,
    LAYER_TENSORS,
    LLAMA_KEYS,
    SAMPLING_KEYS,
)
from lmforge.gguf.tokenizer import CONTROL, GPT2_SPLIT, PRE_TOKENIZERS, USER_DEFINED
from lmforge.nn.position import rope_frequencies

Q = gguf.GGMLQuantizationType
# --dtype -> (general.file_type, the storage type of matrices)
DTYPES = {
    "f32": (gguf.LlamaFileType.ALL_F32, Q.F32),
    "f16": (gguf.LlamaFileType.MOSTLY_F16, Q.F16),
    "q8_0": (gguf.LlamaFileType.MOSTLY_Q8_0, Q.Q8_0),
}
NORMAL, UNUSED = gguf.TokenType.NORMAL, gguf.TokenType.UNUSED  # besides CONTROL and USER_DEFINED
# tokenizer.ggml.pre: the name llama.cpp's converter gives each split it knows (tokenizer.py's table).
PRE_TOKENIZER_NAMES = {PRE_TOKENIZERS[name]: name for name in ("gpt-2", "smollm", "llama-bpe", "qwen2")}
_GLOBAL_NAMES = {ours: theirs for theirs, ours in GLOBAL_TENSORS.items()}
_LAYER_NAMES = {ours: theirs for theirs, ours in LAYER_TENSORS.items()}
_BLOCK_NAME = re.compile(r"blocks\.(\d+)\.(.+)\.(weight|bias)")


def write_gguf(model, tokenizer, out: str | Path, *, dtype: str = "f16", name: str | None = None) -> Path:
    """Write a llama or GPT-2 model with its tokenizer as a GGUF file (replaced whole, never half-written)."""
    out = check_gguf_out(out, dtype)
    config = model.config
    arch = getattr(config, "model_type", None)
    if arch not in ("llama", "gpt2"):
        raise LmforgeError(
            f"GGUF export supports llama and gpt2 models; this one is {arch or type(model).__name__}"
        )
    if arch == "gpt2" and config.activation != "gelu_tanh":
        raise LmforgeError(
            f"llama.cpp's GPT-2 uses tanh-approximated GELU; this model uses {config.activation}"
        )
    tensors = gguf_tensors(model)  # before any metadata: an unknown weight is refused first
    file_type, qtype = DTYPES[dtype]
    writer = gguf.GGUFWriter(None, arch)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name or out.stem)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_hyperparameters(writer, config)
    add_tokenizer(writer, tokenizer, model)
    for tensor_name, tensor in tensors.items():
        data, raw_dtype = encode_tensor(tensor_name, tensor, qtype)
        writer.add_tensor(tensor_name, data, raw_dtype=raw_dtype)
    _write_atomically(writer, out)
    return out


def check_gguf_out(out: str | Path, dtype: str) -> Path:
    """`out` as a Path, or one line: an unknown dtype, a name without .gguf, a directory."""
    if dtype not in DTYPES:
        raise LmforgeError(f"unknown GGUF dtype {dtype!r}; supported: {', '.join(DTYPES)}")
    out = Path(out)
    if out.suffix != ".gguf":
        raise LmforgeError(f"the output {out} should be a .gguf file")
    if out.is_dir():
        raise LmforgeError(f"the output {out} is a directory; name the .gguf file to write")
    return out


def permute_rope_rows(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """llama.cpp's order of a Q or K projection's output rows (weight or bias); reader's
    `unpermute_rope_rows` undoes it.

    Within each head, row j of the first half goes to 2j and row j of the second half to 2j + 1, so that
    the pairs llama.cpp rotates together, (2j, 2j + 1), are the pairs lmforge rotates, (j, j + d_head / 2).
    """
    d_half = weight.shape[0] // n_heads // 2
    rows = weight.reshape(n_heads, 2, d_half, *weight.shape[1:])  # (heads, half, d_head / 2, ...)
    return rows.transpose(1, 2).reshape(weight.shape)  # (heads, d_head / 2, pair, ...) flattened


def gguf_tensors(model) -> dict[str, torch.Tensor]:
    """The model's weights under llama.cpp's names and in its layouts, as float32."""
    config, state = model.config, model.state_dict()
    is_llama = config.model_type == "llama"
    tensors = {}
    for name, tensor in state.items():
        stem, _, kind = name.rpartition(".")
        match = _BLOCK_NAME.fullmatch(name)
        if stem in _GLOBAL_NAMES:
            if stem == "lm_head" and is_llama and config.tie_embeddings:
                continue  # a tied head is the embedding: llama.cpp reads it from token_embd
            tensors[f"{_GLOBAL_NAMES[stem]}.{kind}"] = tensor
        elif match is None or match[2] not in _LAYER_NAMES:
            raise LmforgeError(f"the model has a weight GGUF export does not know: {name}")
        elif not is_llama and match[2] in ("attn.q_proj", "attn.k_proj", "attn.v_proj"):
            if match[2] == "attn.q_proj":  # GPT-2: q, k and v stacked along the output rows
                qkv = [state[f"blocks.{match[1]}.attn.{x}_proj.{kind}"] for x in "qkv"]
                tensors[f"blk.{match[1]}.{FUSED_QKV}.{kind}"] = torch.cat(qkv)
        else:
            if is_llama and match[2] in ("attn.q_proj", "attn.k_proj"):
                heads = config.n_heads if match[2] == "attn.q_proj" else config.n_kv_heads
                tensor = permute_rope_rows(tensor, heads)
            tensors[f"blk.{match[1]}.{_LAYER_NAMES[match[2]]}.{kind}"] = tensor
    scaling = getattr(config, "rope_scaling", None) or {}
    if scaling.get("rope_type", scaling.get("type")) == "llama3":
        # The divisor of each frequency: what llama.cpp needs to turn plain RoPE into the scaled one.
        plain = rope_frequencies(config.d_head, config.rope_theta)
        tensors["rope_freqs.weight"] = plain / rope_frequencies(config.d_head, config.rope_theta, scaling)
    return {name: t.detach().to(device="cpu", dtype=torch.float32) for name, t in tensors.items()}


def encode_tensor(name: str, tensor: torch.Tensor, qtype):
    """(data, raw_dtype) for GGUFWriter.add_tensor, in the storage type llama.cpp's converter picks."""
    values = tensor.numpy()
    is_f32 = values.ndim == 1 or name.endswith("_norm.weight") or not name.endswith(".weight")
    if is_f32 or name.startswith("position_embd.") or qtype == Q.F32:
        return values, None
    try:
        return gguf.quants.quantize(values, qtype), qtype
    except gguf.QuantError:  # a row length Q8_0's 32-value blocks do not divide
        return gguf.quants.quantize(values, Q.F16), Q.F16


def _add_hyperparameters(writer, config) -> None:
    arch = config.model_type
    for field, key in LLAMA_KEYS if arch == "llama" else GPT2_KEYS:
        value = getattr(config, field)
        if isinstance(value, float):
            writer.add_float32(f"{arch}.{key}", value)
        else:
            writer.add_uint32(f"{arch}.{key}", value)
    if arch != "llama":
        return
    writer.add_value_length(config.d_head)
    writer.add_rope_dimension_count(config.d_head)
    writer.add_vocab_size(config.vocab_size)
    scaling = config.rope_scaling or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(scaling["factor"])
    elif kind not in ("default", "llama3"):  # llama3 is the rope_freqs tensor (gguf_tensors)
        raise LmforgeError(f"GGUF export supports RoPE scaling linear and llama3, not {kind!r}")


def add_tokenizer(writer, tokenizer, model) -> None:
    """A byte-level BPE tokenizer, and the model's special ids and sampling defaults, as GGUF metadata."""
    spec = json.loads(tokenizer.backend.to_str())
    _check_byte_level_bpe(spec)
    pre = PRE_TOKENIZER_NAMES.get(_splits(spec.get("pre_tokenizer")))
    if pre is None:
        names = ", ".join(PRE_TOKENIZER_NAMES.values())
        raise LmforgeError(
            f"the tokenizer splits text in a way GGUF cannot name (tokenizer.ggml.pre: {names}); "
            "llama.cpp could not reproduce it"
        )
    tokens, types = _vocabulary(tokenizer, model.config.vocab_size)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    ids = special_ids(tokenizer, model)
    for key, value in ids.items():
        writer.add_uint32(key, value)
    add_bos, add_eos = _added_specials(tokenizer, ids)
    writer.add_add_bos_token(add_bos)
    writer.add_add_eos_token(add_eos)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)
    sampling = model.sampling_defaults()
    for ours, key in SAMPLING_KEYS:
        if ours in sampling:
            (writer.add_int32 if ours == "top_k" else writer.add_float32)(key, sampling[ours])


def _check_byte_level_bpe(spec: dict) -> None:
    model, decoder = spec.get("model") or {}, spec.get("decoder") or {}
    if model.get("type") != "BPE" or decoder.get("type") != "ByteLevel":
        kind = model.get("type") if model.get("type") != "BPE" else "a BPE without byte-level decoding"
        raise LmforgeError(
            f"GGUF export writes byte-level BPE tokenizers (llama.cpp's 'gpt2' model); this one is {kind}"
        )
    if (
        model.get("byte_fallback")
        or model.get("continuing_subword_prefix")
        or model.get("end_of_word_suffix")
    ):
        raise LmforgeError(
            "the tokenizer's BPE marks subwords or falls back to bytes; GGUF cannot express it"
        )
    if spec.get("normalizer") is not None:
        kind = spec["normalizer"].get("type", "a")
        raise LmforgeError(f"the tokenizer has a normalizer ({kind}), which GGUF cannot express")


def _splits(pre: dict | None) -> tuple[str, ...] | None:
    """The regular expressions a byte-level pre-tokenizer splits by in turn, or None when it does
    something else (tokenizer.py's PRE_TOKENIZERS lists them the same way)."""
    steps = [] if pre is None else pre["pretokenizers"] if pre.get("type") == "Sequence" else [pre]
    if not steps or steps[-1].get("type") != "ByteLevel" or steps[-1].get("add_prefix_space"):
        return None
    splits = []
    for step in steps[:-1]:
        if step.get("type") == "Digits" and step.get("individual_digits"):
            splits.append(r"\p{N}")  # Rust's char::is_numeric is the Unicode number category
        elif step.get("type") == "Split" and step.get("behavior") == "Isolated" and not step.get("invert"):
            pattern = step.get("pattern", {})
            if "Regex" not in pattern:
                return None
            splits.append(pattern["Regex"])
        else:
            return None
    if steps[-1].get("use_regex", True):
        splits.append(GPT2_SPLIT)  # ByteLevel's own split is GPT-2's
    return tuple(splits)


def _vocabulary(tokenizer, vocab_size: int) -> tuple[list[str], list[int]]:
    """Every id's token and type; ids the tokenizer lacks (an embedding padded past its vocabulary)
    become unused `[PAD{id}]` tokens, as llama.cpp's converter writes them."""
    vocab = tokenizer.backend.get_vocab(with_added_tokens=True)
    if max(vocab.values()) >= vocab_size:
        raise LmforgeError(
            f"the tokenizer has ids up to {max(vocab.values())} but the model's vocabulary is {vocab_size}"
        )
    added = tokenizer.backend.get_added_tokens_decoder()
    tokens, types = [f"[PAD{i}]" for i in range(vocab_size)], [UNUSED] * vocab_size
    for token, i in vocab.items():
        tokens[i] = token
        types[i] = (CONTROL if added[i].special else USER_DEFINED) if i in added else NORMAL
    return tokens, types


def special_ids(tokenizer, model) -> dict[str, int]:
    """tokenizer.ggml.* special ids: the tokenizer's roles, else the model config's; the other ids that
    end a reply (config and generation_config EOS lists) as end of turn and end of message."""
    config = model.config
    eos_ids = []
    for eos in (config.eos_token_id, getattr(model, "generation_config", {}).get("eos_token_id")):
        eos_ids += [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else next(iter(eos_ids), None)
    values = {
        "tokenizer.ggml.bos_token_id": _first(tokenizer.bos_token_id, config.bos_token_id),
        "tokenizer.ggml.eos_token_id": eos,
        "tokenizer.ggml.padding_token_id": _first(tokenizer.pad_token_id, config.pad_token_id),
        "tokenizer.ggml.unknown_token_id": tokenizer.unk_token_id,
    }
    # NOTE: GGUF has keys for two more end ids (end of turn, end of message); a third is left to
    # llama.cpp, which also recognises end tokens by their text.
    extra = [i for i in dict.fromkeys(eos_ids) if i != eos]
    values.update(zip(EXTRA_EOS_KEYS, extra))
    return {key: value for key, value in values.items() if value is not None}


def _first(*values):
    return next((v for v in values if v is not None), None)


def _added_specials(tokenizer, ids: dict[str, int]) -> tuple[bool, bool]:
    """Whether the tokenizer's post-processor adds BOS before and EOS after a text; anything else it
    adds, GGUF cannot express."""
    bos, eos = ids.get("tokenizer.ggml.bos_token_id"), ids.get("tokenizer.ggml.eos_token_id")
    plain = tokenizer.encode("a", add_special_tokens=False)
    full = tokenizer.encode("a")
    add_bos = bos is not None and full[:1] == [bos] and full[1 : len(plain) + 1] == plain
    rest = full[1:] if add_bos else full
    add_eos = eos is not None and rest == [*plain, eos]
    if not add_eos and rest != plain:
        raise LmforgeError(
            "the tokenizer adds special tokens other than BOS and EOS around a text; GGUF cannot express it"
        )
    return add_bos, add_eos


def _write_atomically(writer, out: Path) -> None:
    """Write to a temporary file beside `out`, then rename it: `out` is the old file or the whole new one."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        writer.write_header_to_file(path=tmp)
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(tmp, out)
    except OSError as e:
        raise LmforgeError(f"cannot write {out} ({e.strerror or e})") from None
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)
