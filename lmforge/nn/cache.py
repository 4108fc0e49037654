"""The key/value cache of decoding: every layer's keys and values of the tokens already seen, so a new
token computes only its own.

The cache is the one thing that knows what each row holds, so it alone says how the tokens fed next
attend (`feed` gives their `Feed`: slots, position ids, mask). Each row has its own state:
- `lengths` (B,): the slots the row has filled; its next token goes to slot lengths[row];
- `valid` (B, capacity): which slots hold real tokens, not the padding of a left-padded prompt;
  position ids count a row's real tokens, so a padded row sees the positions it would see alone;
- `active` (B,): 0 for a released row, which then holds nothing and does not grow.
Rows are independent of each other: beam search moves them (`reorder`); a serving engine frees a
finished one (`release`) and puts a prompt prefilled on its own cache in its place (`admit`),
between decode steps, while the other rows decode on.

It is read two ways:
- dynamic (the default): attention reads the slots up to the longest row's, a Python count, and
  while every row holds the same unpadded tokens ("aligned") it builds no mask tensor at all;
- static (`is_static`): attention reads every slot, masked, and the state lives in tensors updated
  in place: every tensor a decode step touches keeps its shape, so the step compiles once
  (torch.compile) and replays for every token.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.nn.attention import Feed, causal_mask


class KVCache:
    """Keys and values of every layer, preallocated as (rows, n_kv_heads, capacity, d_head), and the
    state of each row."""

    def __init__(
        self,
        n_layers: int,
        rows: int,
        capacity: int,
        n_kv_heads: int,
        d_head: int,
        *,
        dtype: torch.dtype,
        device: torch.device | str,
        is_static: bool = False,
    ):
        shape = (rows, n_kv_heads, capacity, d_head)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.lengths = torch.zeros(rows, dtype=torch.long, device=device)
        self.valid = torch.zeros(rows, capacity, dtype=torch.bool, device=device)
        self.active = torch.ones(rows, dtype=torch.long, device=device)  # what a row grows by, per token
        self.capacity, self.is_static = capacity, is_static
        self.end = 0  # dynamic: the slots attention reads (the longest row's)
        # Dynamic: while the rows are aligned, `end` alone describes them; `lengths` and `valid` are
        # written out when they stop being so (`_unalign`).
        self.is_aligned = not is_static
        self.cross: CrossKVCache | None = None  # an encoder-decoder's cross-attention keys and values
        self._slots = torch.arange(capacity, device=device)

    @property
    def length(self) -> int:
        """The slots of the longest row (in a batch fed together: the tokens fed so far)."""
        return int(self.lengths.max()) if self.is_static else self.end

    def feed(self, n: int, attention_mask: torch.Tensor | None = None) -> Feed:
        """Take the next n slots of every row for the tokens being fed (B, n) and say how they attend:
        to the real tokens their row holds, and causally to each other.

        attention_mask (B, n) is 0 at padding (a left-padded prompt), None without padding.
        """
        if self.is_aligned and attention_mask is None:
            return self._feed_aligned(n)
        self._unalign()
        n_keys = self.capacity if self.is_static else self._extend(n)
        # NOTE: clamped, as a static cache cannot check its length without reading it back: a row fed
        # past its capacity overwrites its last slot instead of writing out of bounds.
        slots = (self.lengths[:, None] + self._slots[:n]).clamp(max=self.capacity - 1)  # (B, n)
        held = self.valid.sum(-1, keepdim=True)  # (B, 1): the real tokens before these
        if attention_mask is None:
            positions = held + self._slots[:n]
            self.valid.scatter_(1, slots, True)
        else:
            real = attention_mask.bool()
            positions = (held + real.long().cumsum(-1) - 1).clamp(min=0)
            self.valid.scatter_(1, slots, real)
        self.lengths.add_(self.active, alpha=n)
        if n == 1 and attention_mask is None:
            # No slot after a row's newest holds a real token, so `valid` is the causal mask already.
            mask = self.valid[:, None, None, :n_keys]
        else:
            mask = causal_mask(slots, n_keys, self.valid[:, :n_keys])
        rows, n_kv_heads, _, d_head = self.keys[0].shape
        index = slots[:, None, :, None].expand(rows, n_kv_heads, n, d_head)  # one for every layer's scatter
        return Feed(mask, positions=positions, slots=slots, n_keys=n_keys, cache=self, index=index)

    def _feed_aligned(self, n: int) -> Feed:
        start, n_keys = self.end, self._extend(n)
        slots = self._slots[start:n_keys][None]  # (1, n): the same in every row
        if start == 0 or n == 1:  # the tokens alone, or one token that sees every key: no mask tensor
            mask, is_causal = None, start == 0 and n > 1
        else:
            mask, is_causal = causal_mask(slots, n_keys), False
        return Feed(mask, is_causal, positions=slots, slots=slots, n_keys=n_keys, cache=self, start=start)

    def _extend(self, n: int) -> int:
        if self.end + n > self.capacity:
            raise LmforgeError(
                f"sequence of {self.end + n} tokens exceeds the cache of {self.capacity}; "
                "use a shorter prompt or fewer new tokens"
            )
        self.end += n
        return self.end

    def _unalign(self) -> None:
        """Write the aligned rows' state out per row, before the rows start to differ."""
        if self.is_aligned:
            self.lengths.fill_(self.end)
            self.valid[:, : self.end] = True
            self.is_aligned = False

    def store(
        self, layer: int, feed: Feed, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Write a layer's new keys and values (B, n_kv_heads, T, d_head) at the feed's slots; return
        the slots attention reads, (B, n_kv_heads, n_keys, d_head) each."""
        keys, values = self.keys[layer], self.values[layer]
        # NOTE: under autocast the projections hand back bf16 keys for a float32 cache (or the reverse).
        k, v = k.to(keys.dtype), v.to(values.dtype)
        if feed.start is not None:
            keys[:, :, feed.start : feed.start + k.shape[2]] = k
            values[:, :, feed.start : feed.start + v.shape[2]] = v
        else:
            keys.scatter_(2, feed.index, k)
            values.scatter_(2, feed.index, v)
        return keys[:, :, : feed.n_keys], values[:, :, : feed.n_keys]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows `index`, in that order (beam search moves hypotheses between rows)."""
        for store in (self.keys, self.values):
            for i, t in enumerate(store):
                store[i] = t.index_select(0, index)
        self.lengths, self.valid, self.active = (
            t.index_select(0, index) for t in (self.lengths, self.valid, self.active)
        )
        if self.cross is not None:
            self.cross.reorder(index)

    def release(self, row: int) -> None:
        """Empty `row`: it holds nothing and does not grow, whatever it is fed, until `admit`."""
        self._unalign()
        self.lengths[row], self.active[row] = 0, 0
        self.valid[row] = False
        if not self.is_static:
            self.end = int(self.lengths.max())

    def head_rows(self, n: int) -> KVCache:
        """The first n rows as a cache of their own, sharing this one's storage: a serving engine
        decodes only the rows up to its last busy one, whatever its capacity in rows."""
        self._unalign()
        view = object.__new__(KVCache)
        view.__dict__.update(self.__dict__)
        view.keys, view.values = [t[:n] for t in self.keys], [t[:n] for t in self.values]
        view.lengths, view.valid, view.active = self.lengths[:n], self.valid[:n], self.active[:n]
        view.end = int(view.lengths.max()) if n else 0
        return view

    def admit(self, row: int, source: KVCache, source_row: int = 0) -> None:
        """Put row `source_row` of `source` (a prompt prefilled on a cache of its own) in `row`, which
        then decodes on exactly as that prompt alone would."""
        if self.cross is not None or source.cross is not None:
            raise LmforgeError("rows of an encoder-decoder's cache cannot be admitted one by one")
        source._unalign()
        self._unalign()
        n = int(source.lengths[source_row])
        if n > self.capacity:
            raise LmforgeError(f"a row of {n} tokens does not fit a cache of {self.capacity}")
        for mine, theirs in zip([*self.keys, *self.values], [*source.keys, *source.values]):
            mine[row, :, :n] = theirs[source_row, :, :n]
        self.valid[row] = False
        self.valid[row, :n] = source.valid[source_row, :n]
        self.lengths[row], self.active[row] = n, 1
        if not self.is_static:
            self.end = max(self.end, n)


class CrossKVCache:
    """Keys and values of cross-attention, per decoder layer: they depend only on the encoder output,
    so they are computed at the first decoding step and reused by every later one."""

    def __init__(self, n_layers: int):
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers

    def get(self, layer: int, compute) -> tuple[torch.Tensor, torch.Tensor]:
        """The cached (k, v) of a layer; `compute()` gives them the first time."""
        if self.keys[layer] is None:
            self.keys[layer], self.values[layer] = compute()
        return self.keys[layer], self.values[layer]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows `index`."""
        for cache in (self.keys, self.values):
            for i, t in enumerate(cache):
                if t is not None:
                    cache[i] = t.index_select(0, index)


def allocate_cache(
    blocks: Sequence[nn.Module],
    rows: int,
    capacity: int,
    *,
    dtype: torch.dtype,
    device: torch.device | str,
    is_static: bool = False,
) -> KVCache:
    """The one cache factory: an empty cache for `rows` sequences of up to `capacity` tokens through
    `blocks`, the blocks of a decoder (each with `attn`, and `cross_attn` in an encoder-decoder)."""
    attn = blocks[0].attn
    cache = KVCache(
        len(blocks),
        rows,
        capacity,
        attn.n_kv_heads,
        attn.d_head,
        dtype=dtype,
        device=device,
        is_static=is_static,
    )
    if getattr(blocks[0], "cross_attn", None) is not None:
        cache.cross = CrossKVCache(len(blocks))
    return cache
