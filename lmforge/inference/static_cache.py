"""Decoding on a static KV cache: every tensor a decode step touches has a fixed shape, so the step
can be compiled once with `torch.compile` and replayed for every token. Eager decoding keeps the
dynamic cache, which reads only the slots filled so far.

The cache (`KVCache(is_static=True)`, lmforge/nn/cache.py) keeps where each row's next token goes,
its position and which slots hold real tokens in tensors updated in place, never Python numbers: a
compiled step sees inputs that change in value but not in shape, so it compiles once per (batch
size, max_len) and never per token. The price: attention reads all max_len slots every step
(masked), where a dynamic cache reads the filled ones only.
"""

from __future__ import annotations

import warnings

import torch

COMPILE_BACKEND = "inductor"  # the torch.compile backend of the decode step


class StaticDecoder:
    """Prefill once (eager), then decode one token per row per step on a KV cache: static when
    `is_static` (by default: when compiling), else dynamic.

    `step` runs `decode_step`, compiled when `use_compile` (falling back to eager, with one warning,
    if compilation fails or torch.compile is unavailable).
    """

    def __init__(
        self,
        model,
        batch_size: int,
        max_len: int,
        *,
        use_compile: bool = False,
        is_static: bool | None = None,
    ):
        self.model = model
        # NOTE: eager, the static cache costs more than it saves: attention reads every slot (masked)
        # from the first token on (demo shape, batch 1, 128 + 128 tokens on a 2-core EPYC: 1.45 ms a
        # token static, 1.2 dynamic).
        is_static = use_compile if is_static is None else is_static
        self.cache = model.new_cache(batch_size, max_len, is_static=is_static)
        self._compiled = _try(compiled_decode_step) if use_compile else None

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Float logits (B, V) of the token after each prompt: ids (B, T), left-padded where mask
        (B, T) has 0, or mask None without padding."""
        x = self.model.hidden(ids, attention_mask=mask, cache=self.cache)
        return self.model.lm_head(x[:, -1]).float()

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Float logits (B, V) of the token after `tokens` (B,), the last one of each row."""
        args = (self.model, self.cache, tokens[:, None])
        if self._compiled is not None:
            logits = _try(lambda: self._compiled(*args))
            if logits is not None:
                return logits
            self._compiled = None  # compilation fails before the step runs: nothing has moved yet
        return decode_step(*args)


def _try(compile_or_run):
    """Its result, or None with one warning where torch.compile fails (no C++ compiler, an operation
    it cannot compile, no torch.compile on this platform)."""
    try:
        return compile_or_run()
    except Exception as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        warnings.warn(f"torch.compile of the decode step failed ({message}); decoding eagerly", stacklevel=3)
        return None


def decode_step(model, cache, ids: torch.Tensor) -> torch.Tensor:
    """Float logits (B, V) of the token after ids (B, 1), which the cache stores after each row's."""
    x = model.hidden(ids, cache=cache)
    return model.lm_head(x[:, -1]).float()


_COMPILED: dict[str, object] = {}


def compiled_decode_step():
    """`decode_step` under torch.compile (one wrapper per backend: its compiled graphs are reused
    by every generation with the same model, batch size and max_len)."""
    if COMPILE_BACKEND not in _COMPILED:
        # NOTE: dynamic=False: a new shape compiles a new static graph instead of a dynamic one
        # (whose symbolic shapes would be slower per token); tokens never change a shape.
        _COMPILED[COMPILE_BACKEND] = torch.compile(decode_step, backend=COMPILE_BACKEND, dynamic=False)
    return _COMPILED[COMPILE_BACKEND]
