"""Model families, each a composition of the shared layers in `lmforge.nn`."""

from __future__ import annotations

from lmforge.errors import LmforgeError
from lmforge.models.bert import Bert, BertConfig, RobertaConfig
from lmforge.models.decoder import CausalLM
from lmforge.models.gpt2 import GPT2, GPT2Config
from lmforge.models.heads import ClassifierConfig, SequenceClassifier, SpanQA
from lmforge.models.llama import Llama, LlamaConfig
from lmforge.models.presets import PRESETS, get_preset
from lmforge.models.t5 import T5, T5Config

# model_type -> (config class, model class)
FAMILIES = {
    "gpt2": (GPT2Config, GPT2),
    "llama": (LlamaConfig, Llama),
    "bert": (BertConfig, Bert),
    "roberta": (RobertaConfig, Bert),
    "t5": (T5Config, T5),
}


def build_model(config) -> CausalLM:
    """A randomly initialised model for a config (or a preset name)."""
    if isinstance(config, str):
        config = get_preset(config)
    try:
        _, model_cls = FAMILIES[config.model_type]
    except KeyError:
        raise LmforgeError(
            f"unsupported model type {config.model_type!r}; supported: {', '.join(FAMILIES)}"
        ) from None
    return model_cls(config)


__all__ = [
    "FAMILIES",
    "GPT2",
    "PRESETS",
    "T5",
    "Bert",
    "BertConfig",
    "CausalLM",
    "ClassifierConfig",
    "GPT2Config",
    "Llama",
    "LlamaConfig",
    "RobertaConfig",
    "SequenceClassifier",
    "SpanQA",
    "T5Config",
    "build_model",
    "get_preset",
]
