"""Decoding with a static KV cache: every tensor a decode step touches has a fixed shape, so the
step can be compiled once with `torch.compile` and replayed for every token.

The cache holds max_len slots per row; token t of the left-padded batch goes to slot t. Where the
next token goes (`slots`), its position ids, and which slots hold real tokens (`valid`, (B, max_len))
are tensors updated in place, never Python numbers: a compiled step sees inputs that change in value
but not in shape, so it compiles once per (batch size, max_len) and never per token. The price:
attention reads all max_len slots every step (masked), where the dynamic `KVCache` reads the filled
ones only.
"""

from __future__ import annotations

import warnings

import torch

from lmforge.nn import decoder_positions

COMPILE_BACKEND = "inductor"  # the torch.compile backend of the decode step


class StaticKVCache:
    """Keys and values of every layer in (B, n_kv_heads, max_len, d_head) buffers, written at `slots`.

    It serves the model like `KVCache`, but after the prefill the model is always given position
    ids and a full 4-D mask with it: `length` stays 0 and `advance` does nothing, as the positions
    live in tensors. `update` returns the first `visible` slots: the prompt's during the prefill (so
    it attends to them alone, as with no cache), all max_len of them when decoding.
    """

    length = 0

    def __init__(self, model, batch_size: int, max_len: int):
        attn = model.blocks[0].attn
        shape = (batch_size, attn.n_kv_heads, max_len, attn.d_head)
        params = {"dtype": model.dtype, "device": model.device}
        self.keys = [torch.zeros(shape, **params) for _ in model.blocks]
        self.values = [torch.zeros(shape, **params) for _ in model.blocks]
        self.max_len = self.visible = max_len
        self.slots = torch.zeros(1, dtype=torch.long, device=model.device)  # of the tokens being fed

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, n_kv_heads, T, d_head) at `slots` (T,); return the visible slots."""
        # NOTE: under autocast the projections hand back bf16 keys for a float32 cache (or the reverse).
        self.keys[layer].index_copy_(2, self.slots, k.to(self.keys[layer].dtype))
        self.values[layer].index_copy_(2, self.slots, v.to(self.values[layer].dtype))
        return self.keys[layer][:, :, : self.visible], self.values[layer][:, :, : self.visible]

    def advance(self, n: int) -> None:
        pass


class StaticDecoder:
    """Prefill once (eager), then decode one token per row per step on a StaticKVCache.

    `step` runs `decode_step`, compiled when `use_compile` (falling back to eager, with one warning,
    if compilation fails or torch.compile is unavailable).
    """

    def __init__(self, model, batch_size: int, max_len: int, *, use_compile: bool = False):
        self.model = model
        self.cache = StaticKVCache(model, batch_size, max_len)
        self.valid = torch.zeros(batch_size, max_len, dtype=torch.bool, device=model.device)
        self.positions = torch.zeros(batch_size, 1, dtype=torch.long, device=model.device)
        self._compiled = _try(compiled_decode_step) if use_compile else None

    def prefill(self, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Float logits (B, V) of the token after each prompt: ids (B, T), left-padded where mask
        (B, T) has 0, or mask None without padding."""
        T = ids.shape[1]
        # The prompt fills slots 0..T-1 and attends to them alone: the model's own masks and
        # positions apply, exactly as without a cache.
        self.cache.slots, self.cache.visible = torch.arange(T, device=ids.device), T
        x = self.model.hidden(ids, attention_mask=mask, cache=self.cache)
        self.cache.slots = torch.full((1,), T, dtype=torch.long, device=ids.device)
        self.cache.visible = self.cache.max_len
        self.valid[:, :T] = True if mask is None else mask.bool()
        self.positions.copy_(decoder_positions(mask, T, 0, ids.device)[:, -1:] + 1)
        return self.model.lm_head(x[:, -1]).float()

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Float logits (B, V) of the token after `tokens` (B,), the last one of each row."""
        args = (self.model, self.cache, tokens[:, None], self.positions, self.valid)
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


def decode_step(model, cache: StaticKVCache, ids, positions, valid) -> torch.Tensor:
    """Float logits (B, V) of the token after ids (B, 1), stored at cache.slots with position ids
    `positions` (B, 1); then slots and positions move on by one, in place."""
    valid.index_fill_(1, cache.slots, True)
    x = model.hidden(ids, attention_mask=valid[:, None, None, :], position_ids=positions, cache=cache)
    cache.slots.add_(1)
    positions.add_(1)
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
