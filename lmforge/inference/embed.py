"""Sentence embeddings from an encoder (Reimers & Gurevych, 2019, "Sentence-BERT").

A text's embedding pools the encoder's last hidden states into one vector: the mean over its real
tokens (padding excluded), or the hidden state of [CLS]; L2-normalised, the dot product of two
embeddings is their cosine similarity. A sentence-transformers folder says how it was trained to be
pooled: `modules.json` lists the modules (Transformer, Pooling, and Normalize when outputs are
unit-length), `1_Pooling/config.json` the pooling mode, `sentence_bert_config.json` the maximum length.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from lmforge.errors import LmforgeError
from lmforge.hf.checkpoint import checkpoint_file

POOLINGS = ("mean", "cls")


@dataclass
class SentenceSettings:
    """How a checkpoint pools its outputs; the defaults are for a plain encoder."""

    pooling: str = "mean"
    normalize: bool = True
    max_length: int | None = None


def read_sentence_settings(folder: str | Path | None) -> SentenceSettings:
    """The pooling, normalisation and max length a sentence-transformers folder declares."""
    folder = Path(folder) if folder else None
    if folder is None or not (folder / "modules.json").is_file():
        return SentenceSettings()
    modules = _read(folder / "modules.json")
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise LmforgeError(
            f"{folder / 'modules.json'} should hold a list of module objects; the folder is corrupt"
        )
    types = [str(m.get("type", "")) for m in modules]
    settings = SentenceSettings(normalize=any(t.endswith(".Normalize") for t in types))
    pooling_dir = next((m.get("path") for m, t in zip(modules, types) if t.endswith(".Pooling")), None)
    pooling_config = None
    if pooling_dir:  # NOTE: a path read from the folder's own JSON: it must not lead out of the folder
        name = f"{pooling_dir}/config.json" if isinstance(pooling_dir, str) else pooling_dir
        pooling_config = checkpoint_file(folder, name, folder / "modules.json")
    if pooling_config is not None and pooling_config.is_file():
        config = _read(pooling_config)
        modes = [m for m in ("cls_token", "mean_tokens") if config.get(f"pooling_mode_{m}")]
        others = [k for k, v in config.items() if k.startswith("pooling_mode_") and v and k[13:] not in modes]
        if others or len(modes) != 1:
            raise LmforgeError(
                f"{pooling_config} asks for pooling {others or modes}; "
                "only one of mean_tokens or cls_token is supported"
            )
        settings.pooling = "cls" if modes == ["cls_token"] else "mean"
    if (folder / "sentence_bert_config.json").is_file():
        settings.max_length = _read(folder / "sentence_bert_config.json").get("max_seq_length")
    return settings


def _read(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LmforgeError(
            f"{path} is not valid JSON ({e}); the sentence-transformers folder is corrupt"
        ) from None


def check_encoder(model) -> None:
    """Refuse a model that has no bidirectional encoder to embed with."""
    from lmforge.models.bert import Bert

    if not isinstance(model, Bert):
        kind = getattr(model.config, "model_type", type(model).__name__)
        what = "an encoder-decoder model" if kind == "t5" else "a decoder-only language model"
        raise LmforgeError(
            f"{kind} is {what}; embed needs an encoder such as BERT "
            "(a BertModel or sentence-transformers checkpoint)"
        )


def max_input_length(model, tok, settings: SentenceSettings, max_length: int | None = None) -> int:
    """The longest input in tokens: max_length, else the smallest limit of folder, tokenizer and model."""
    limits = [max_length or settings.max_length, tok.model_max_length, model.max_positions]
    return min(n for n in limits if n)


def count_too_long(tok, texts: list[str], max_length: int) -> list[int]:
    """Indices of the texts that are longer than max_length tokens (special tokens included)."""
    lengths = [len(ids) for ids in tok.encode_batch(texts)]
    return [i for i, n in enumerate(lengths) if n > max_length]


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, T, d) hidden states -> (B, d): the mean over real tokens, or the first token ([CLS])."""
    if pooling == "cls":
        return hidden[:, 0]
    weights = attention_mask.to(hidden.dtype)[..., None]  # (B, T, 1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)


@torch.no_grad()
def embed(
    model,
    tok,
    texts: str | list[str],
    *,
    pooling: str | None = None,
    normalize: bool | None = None,
    batch_size: int = 32,
    max_length: int | None = None,
    truncate: bool = True,
) -> torch.Tensor:
    """Embeddings (n, d_model), float32 on the CPU, one row per text.

    pooling ("mean" or "cls") and normalize default to the settings of the sentence-transformers folder
    the model was loaded from, else mean pooling and L2 normalisation. Texts longer than max_length
    (default: the folder's max_seq_length, capped by the tokenizer's and the model's limits) are cut
    there, as sentence-transformers does; with truncate=False they are an error instead.
    """
    check_encoder(model)
    texts = [texts] if isinstance(texts, str) else list(texts)
    settings = read_sentence_settings(getattr(model, "name_or_path", None))
    pooling = pooling or settings.pooling
    if pooling not in POOLINGS:
        raise LmforgeError(f"unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")
    normalize = settings.normalize if normalize is None else normalize
    if batch_size < 1:
        raise LmforgeError(f"batch size must be at least 1, got {batch_size}")
    limit = max_input_length(model, tok, settings, max_length)
    if not truncate and (too_long := count_too_long(tok, texts, limit)):
        raise LmforgeError(
            f"{len(too_long)} texts are longer than the model's maximum of {limit} tokens (first: text "
            f"{too_long[0] + 1}); shorten them or allow truncation"
        )
    rows = []
    for start in range(0, len(texts), batch_size):
        batch = tok.encode_inputs(texts[start : start + batch_size], max_length=limit, return_tensors="pt")
        batch = {k: v.to(model.device) for k, v in batch.items()}
        hidden = model.hidden(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
        rows.append(pool(hidden.float(), batch["attention_mask"], pooling).cpu())
    vectors = torch.cat(rows) if rows else torch.empty(0, model.config.d_model)
    return F.normalize(vectors, dim=-1) if normalize else vectors
