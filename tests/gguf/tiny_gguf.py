"""Tiny GGUF files written with the `gguf` package the way llama.cpp's converter writes real ones: from a
transformers model, with llama.cpp's tensor names, its RoPE row permutation of Q and K, GPT-2's linear
layers stored as (out, in), and the tokenizer as metadata. The reader under test undoes all of it."""

from __future__ import annotations

import json

import gguf
import numpy as np
import torch

Q = gguf.GGMLQuantizationType
CONTROL, NORMAL = 3, 1


def llama_cpp_permute(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's converter: within each head, interleave the first and second halves of the rows."""
    return (
        weight.reshape(n_heads, 2, weight.shape[0] // n_heads // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def llama_cpp_rope_factors(rope: dict, d_head: int) -> np.ndarray:
    """llama.cpp's converter for Llama 3.1 scaling: one divisor per frequency (the rope_freqs tensor)."""
    inv_freq = 1.0 / rope["rope_theta"] ** (np.arange(0, d_head, 2, dtype=np.float64) / d_head)
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old_len = rope["original_max_position_embeddings"]
    factors = []
    for wavelength in 2 * np.pi / inv_freq:
        if wavelength < old_len / high:
            factors.append(1.0)
        elif wavelength > old_len / low:
            factors.append(factor)
        else:
            smooth = (old_len / wavelength - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


def random_kquant(rows: int, cols: int, qtype, rng: np.random.Generator) -> np.ndarray:
    """Random K-quant blocks (the gguf package can read but not write them) with small, finite scales."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    data = rng.integers(0, 256, size=(rows, cols // block, size), dtype=np.uint8)
    scale = np.frombuffer(np.float16(0.004).tobytes(), dtype=np.uint8)
    if qtype == Q.Q6_K:
        data[..., -2:] = scale  # d is the block's last field
    else:
        data[..., 0:2] = scale  # d, then dmin
        data[..., 2:4] = scale
    return data.reshape(rows, -1)


def encode(values: np.ndarray, qtype, rng: np.random.Generator):
    """(data, raw_dtype) for GGUFWriter.add_tensor: 1-D tensors stay F32, as llama.cpp keeps them."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    if values.ndim == 1 or qtype == Q.F32:
        return values, None
    if qtype == Q.F16:
        return values.astype(np.float16), None
    if qtype in (Q.Q4_K, Q.Q5_K, Q.Q6_K):
        return random_kquant(*values.shape, qtype, rng), qtype
    return gguf.quants.quantize(values, qtype), qtype


def add_tokenizer(writer: gguf.GGUFWriter, tok, *, pre: str = "default", add_bos: bool = False) -> None:
    """A byte-level BPE lmforge tokenizer as GGUF metadata (llama.cpp's `gpt2` tokenizer model)."""
    spec = json.loads(tok.backend.to_str())
    vocab = {**spec["model"]["vocab"], **{t["content"]: t["id"] for t in spec["added_tokens"]}}
    tokens = [token for token, _ in sorted(vocab.items(), key=lambda item: item[1])]
    specials = {t["content"] for t in spec["added_tokens"] if t["special"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types([CONTROL if t in specials else NORMAL for t in tokens])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(vocab[tok.bos_token])
    writer.add_eos_token_id(vocab[tok.eos_token])
    writer.add_pad_token_id(vocab[tok.eos_token])
    writer.add_add_bos_token(add_bos)
    writer.add_chat_template(
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


def finish(writer: gguf.GGUFWriter) -> None:
    """Write the header, metadata and tensors, and close the file."""
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_llama(path, hf_model, tok, *, types: dict[str, object] | None = None, seed: int = 0, **tok_options):
    """hf_model (a LlamaForCausalLM) as a GGUF file; types maps a GGUF tensor-name part ("attn_q",
    "token_embd", ...) to its storage type (default F32)."""
    config, rng = hf_model.config, np.random.default_rng(seed)
    types = types or {}
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.hidden_size // config.num_attention_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    add_tokenizer(writer, tok, **tok_options)
    state = {k: v.detach().float().numpy() for k, v in hf_model.state_dict().items()}
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    if not config.tie_word_embeddings:
        names["lm_head.weight"] = "output.weight"
    layer = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for i in range(config.num_hidden_layers):
        names.update(
            {f"model.layers.{i}.{hf}.weight": f"blk.{i}.{ours}.weight" for hf, ours in layer.items()}
        )
    if config.rope_parameters.get("rope_type") == "llama3":
        d_head = config.hidden_size // config.num_attention_heads
        writer.add_tensor("rope_freqs.weight", llama_cpp_rope_factors(config.rope_parameters, d_head))
    for hf_name, name in names.items():
        values = state[hf_name]
        if ".attn_q." in name:
            values = llama_cpp_permute(values, config.num_attention_heads)
        elif ".attn_k." in name:
            values = llama_cpp_permute(values, config.num_key_value_heads)
        data, raw_dtype = encode(values, types.get(name.split(".")[-2], Q.F32), rng)
        writer.add_tensor(name, data, raw_dtype=raw_dtype)
    finish(writer)


def write_gpt2(path, hf_model, tok, *, types: dict[str, object] | None = None, seed: int = 0):
    """hf_model (a GPT2LMHeadModel) as a GGUF file, as llama.cpp's converter writes GPT-2."""
    config, rng = hf_model.config, np.random.default_rng(seed)
    types = types or {}
    writer = gguf.GGUFWriter(path, "gpt2")
    writer.add_context_length(config.n_positions)
    writer.add_embedding_length(config.n_embd)
    writer.add_block_count(config.n_layer)
    writer.add_feed_forward_length(4 * config.n_embd)
    writer.add_head_count(config.n_head)
    writer.add_layer_norm_eps(config.layer_norm_epsilon)
    add_tokenizer(writer, tok)
    state = {k: v.detach().float().numpy() for k, v in hf_model.state_dict().items()}
    names = {
        "transformer.wte.weight": "token_embd.weight",
        "transformer.wpe.weight": "position_embd.weight",
        "transformer.ln_f.weight": "output_norm.weight",
        "transformer.ln_f.bias": "output_norm.bias",
    }
    layer = {
        "ln_1": "attn_norm",
        "attn.c_attn": "attn_qkv",
        "attn.c_proj": "attn_output",
        "ln_2": "ffn_norm",
        "mlp.c_fc": "ffn_up",
        "mlp.c_proj": "ffn_down",
    }
    for i in range(config.n_layer):
        for hf, ours in layer.items():
            for kind in ("weight", "bias"):
                names[f"transformer.h.{i}.{hf}.{kind}"] = f"blk.{i}.{ours}.{kind}"
    for hf_name, name in names.items():
        values = state[hf_name]
        if values.ndim == 2 and ".h." in hf_name:
            values = values.T  # Conv1D stores (in, out); GGUF stores (out, in)
        data, raw_dtype = encode(values, types.get(name.split(".")[-2], Q.F32), rng)
        writer.add_tensor(name, data, raw_dtype=raw_dtype)
    data, raw_dtype = encode(state["transformer.wte.weight"], types.get("token_embd", Q.F32), rng)
    writer.add_tensor("output.weight", data, raw_dtype=raw_dtype)  # llama.cpp writes the tied head again
    finish(writer)


def hf_from_gguf(path):
    """transformers' own reading of a GGUF file: (model, tokenizer)."""
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()
    tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model, tok


def logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        out = model(torch.tensor([ids]))
    return (out if isinstance(out, torch.Tensor) else out.logits)[0]
