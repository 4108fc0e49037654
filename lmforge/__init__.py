"""lmforge: Transformer language models from first principles to production.

The public API:

    model = lmforge.load_model("DIR")          # a Hugging Face or lmforge checkpoint directory
    tok = lmforge.load_tokenizer("DIR")
    logits = model(input_ids)                  # (batch, seq, vocab)
    text = lmforge.generate(model, tok, "a prompt", max_new_tokens=50, temperature=0.0)
    vectors = lmforge.embed(encoder, tok, ["a sentence", "another"])  # (2, d_model), unit length
    lmforge.fill_mask(bert, tok, "Paris is the [MASK] of France.")  # [{"token_str", "score", ...}]
    model.save_pretrained("OUT"); tok.save_pretrained("OUT")
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# name -> module that defines it; imported on first use so `import lmforge` stays cheap.
_EXPORTS = {
    "LmforgeError": "lmforge.errors",
    "load_model": "lmforge.hf",
    "generate": "lmforge.inference",
    "embed": "lmforge.inference.embed",
    "fill_mask": "lmforge.inference.fill_mask",
    "GenerationConfig": "lmforge.inference",
    "GPT2Config": "lmforge.models",
    "LlamaConfig": "lmforge.models",
    "T5Config": "lmforge.models",
    "build_model": "lmforge.models",
    "SequenceClassifier": "lmforge.models",
    "SpanQA": "lmforge.models",
    "get_preset": "lmforge.models",
    "PrepareConfig": "lmforge.data.prepare",
    "prepare": "lmforge.data.prepare",
    "PretrainConfig": "lmforge.train.pretrain",
    "pretrain": "lmforge.train.pretrain",
    "FinetuneConfig": "lmforge.train.finetune",
    "finetune": "lmforge.train.finetune",
    "load_tokenizer": "lmforge.tokenizers",
    "train_tokenizer": "lmforge.tokenizers",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lmforge' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_EXPORTS])
