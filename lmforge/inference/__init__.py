"""Generation: sampling, greedy and beam search on token ids, stop strings and streaming text."""

from lmforge.inference.batch import TokenBuffer, next_token_logits
from lmforge.inference.beam import beam_search
from lmforge.inference.generate import GenerationConfig, generate, generate_ids
from lmforge.inference.sampling import (
    apply_repetition_penalty,
    apply_temperature,
    apply_top_k,
    apply_top_p,
    sample_next,
    seen_tokens,
)
from lmforge.inference.stop import StopChecker

__all__ = [
    "GenerationConfig",
    "StopChecker",
    "TokenBuffer",
    "apply_repetition_penalty",
    "apply_temperature",
    "apply_top_k",
    "apply_top_p",
    "beam_search",
    "generate",
    "generate_ids",
    "next_token_logits",
    "sample_next",
    "seen_tokens",
]
