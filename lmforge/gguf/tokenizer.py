"""The tokenizer a GGUF file describes in its metadata, rebuilt on the `tokenizers` library.

A GGUF file carries no tokenizer.json, only llama.cpp's description of one: the vocabulary
(`tokenizer.ggml.tokens`, byte-level BPE spells bytes as printable characters, as GPT-2 does), its
merges, each token's type (normal, control = special, user-defined = added), the special ids (BOS, EOS,
unknown, padding), whether to start every text with BOS, and the chat template. What it does not carry
is the regular expression that splits text into words before BPE; `tokenizer.ggml.pre` names it, and
PRE_TOKENIZERS holds llama.cpp's expression for each name.
"""

from __future__ import annotations

import tokenizers
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors

from lmforge.errors import LmforgeError
from lmforge.gguf.reader import read_gguf

# llama.cpp's token types (tokenizer.ggml.token_type).
CONTROL, USER_DEFINED = 3, 4

# GPT-2's split (Radford et al., 2019): contractions, letters, digits, other symbols, spaces.
GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# Llama 3's: case-insensitive contractions, a symbol may lead letters, digits in threes, newlines apart.
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen 2's: Llama 3's with every digit on its own.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# tokenizer.ggml.pre -> the expressions applied in turn (each match isolated), as llama.cpp's
# llama-vocab.cpp lists them. A bare GPT-2 split is ByteLevel's own (use_regex=True).
PRE_TOKENIZERS = {
    "default": (GPT2_SPLIT,),
    "gpt-2": (GPT2_SPLIT,),
    "gpt2": (GPT2_SPLIT,),
    # StarCoder's family (SmolLM among them): every digit on its own, then GPT-2's split.
    "smollm": (r"\p{N}", GPT2_SPLIT),
    "starcoder": (r"\p{N}", GPT2_SPLIT),
    "refact": (r"\p{N}", GPT2_SPLIT),
    "codeshell": (r"\p{N}", GPT2_SPLIT),
    "llama3": (LLAMA3_SPLIT,),
    "llama-v3": (LLAMA3_SPLIT,),
    "llama-bpe": (LLAMA3_SPLIT,),
    "smaug-bpe": (LLAMA3_SPLIT,),
    "falcon3": (LLAMA3_SPLIT,),
    "qwen2": (QWEN2_SPLIT,),
    "deepseek-r1-qwen": (QWEN2_SPLIT,),
}


def read_gguf_tokenizer(path) -> tuple[tokenizers.Tokenizer, dict]:
    """The tokenizer of a GGUF file (byte-level BPE: llama.cpp's `gpt2` tokenizer model): its `tokenizers`
    backend, and the rest of an lmforge Tokenizer as its keyword arguments (the special tokens, the chat
    template, the longest input). lmforge.tokenizers.load_tokenizer builds the Tokenizer from them."""
    file = read_gguf(path)
    meta = file.metadata
    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise LmforgeError(
            f"{file.path.name} has a {kind!r} tokenizer; only byte-level BPE ('gpt2') GGUF tokenizers are supported"
        )
    tokens, merges = meta.get("tokenizer.ggml.tokens"), meta.get("tokenizer.ggml.merges")
    if not tokens or not merges:
        raise LmforgeError(f"{file.path.name} lacks its tokenizer's tokens or merges")
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise LmforgeError(
            f"{file.path.name}: unknown pre-tokenizer {pre!r} (tokenizer.ggml.pre); "
            f"supported: {', '.join(sorted(PRE_TOKENIZERS))}"
        )
    vocab = {token: i for i, token in enumerate(tokens)}
    bpe = models.BPE(vocab, [tuple(m.split(" ", 1)) for m in merges])
    backend = tokenizers.Tokenizer(bpe)
    backend.pre_tokenizer = _pre_tokenizer(PRE_TOKENIZERS[pre])
    backend.decoder = decoders.ByteLevel()
    _add_typed_tokens(backend, tokens, meta.get("tokenizer.ggml.token_type") or [])
    roles = {
        role: tokens[meta[key]] if isinstance(meta.get(key), int) and meta[key] < len(tokens) else None
        for role, key in (
            ("bos_token", "tokenizer.ggml.bos_token_id"),
            ("eos_token", "tokenizer.ggml.eos_token_id"),
            ("pad_token", "tokenizer.ggml.padding_token_id"),
            ("unk_token", "tokenizer.ggml.unknown_token_id"),
        )
    }
    backend.post_processor = _post_processor(
        roles["bos_token"] if meta.get("tokenizer.ggml.add_bos_token") else None,
        roles["eos_token"] if meta.get("tokenizer.ggml.add_eos_token") else None,
        vocab,
    )
    return backend, {
        **roles,
        "chat_template": meta.get("tokenizer.chat_template"),
        "model_max_length": file.arch_value("context_length"),
    }


def _pre_tokenizer(splits: tuple[str, ...]) -> pre_tokenizers.PreTokenizer:
    if splits == (GPT2_SPLIT,):
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    steps = [pre_tokenizers.Split(Regex(split), behavior="isolated") for split in splits]
    return pre_tokenizers.Sequence(
        [*steps, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )


def _add_typed_tokens(backend: tokenizers.Tokenizer, tokens: list[str], types: list[int]) -> None:
    """Control tokens become special added tokens, user-defined ones plain added tokens: both are
    matched whole in the text, as llama.cpp does, and keep their ids."""
    special = [AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == CONTROL]
    added = [
        AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == USER_DEFINED
    ]
    backend.add_special_tokens(special)
    backend.add_tokens(added)


def _post_processor(bos: str | None, eos: str | None, vocab: dict[str, int]):
    """BOS before (and EOS after) every text when the file says to add them."""
    if bos is None and eos is None:
        return processors.ByteLevel(trim_offsets=False)
    single = " ".join([*([f"{bos}:0"] if bos else []), "$A:0", *([f"{eos}:0"] if eos else [])])
    pair = " ".join([single, *([f"{bos}:1"] if bos else []), "$B:1", *([f"{eos}:1"] if eos else [])])
    return processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[(t, vocab[t]) for t in dict.fromkeys((bos, eos)) if t]
    )
