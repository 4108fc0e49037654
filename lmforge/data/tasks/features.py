"""Feature rows shared by every task: a truncating copy of a tokenizer's backend, and padding into batches.

A feature is a dict of Python lists (one example, unpadded): `input_ids`, `attention_mask`, optionally
`token_type_ids`, and the task's targets: `labels` (an int for classification, a list of token ids for
generation, with IGNORE_INDEX on positions that carry no loss), or `start_positions`/`end_positions`
(extractive QA). `pad_batch` turns a list of them into (B, T) tensors, right-padded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tokenizers
import torch

from lmforge.data.objectives import IGNORE_INDEX
from lmforge.errors import LmforgeError
from lmforge.tokenizers import Tokenizer

# What each padded position holds, per key; keys not listed are per-example scalars, stacked.
_PAD_VALUES = {"attention_mask": 0, "token_type_ids": 0, "labels": IGNORE_INDEX}


def truncating_backend(
    tokenizer: Tokenizer,
    max_length: int | None,
    *,
    stride: int = 0,
    strategy: str = "longest_first",
    is_pair: bool = False,
) -> tokenizers.Tokenizer:
    """A private copy of the tokenizer's backend that truncates to `max_length` ids, special tokens
    included, before the post-processor adds them (so a final [SEP] or </s> survives truncation).

    The literal text of special tokens in the data is encoded as plain text, as `Tokenizer.encode` does.
    With a stride, `Encoding.overflowing` holds the further windows, overlapping by `stride` tokens.
    """
    backend = tokenizers.Tokenizer.from_str(tokenizer.backend.to_str())
    backend.encode_special_tokens = True
    backend.no_padding()
    backend.no_truncation()
    if max_length is not None:
        n_special = backend.num_special_tokens_to_add(is_pair)
        if max_length <= n_special + stride:
            raise LmforgeError(
                f"max_length {max_length} leaves no room for text ({n_special} special tokens, "
                f"stride {stride}); pass a larger --max-length"
            )
        backend.enable_truncation(max_length, stride=stride, strategy=strategy)
    return backend


def pad_batch(features: Sequence[dict[str, Any]], pad_token_id: int | None) -> dict[str, torch.Tensor]:
    """(B, T) long tensors from feature dicts: token lists right-padded (input_ids with pad_token_id,
    attention_mask and token_type_ids with 0, labels with IGNORE_INDEX); scalar keys stacked to (B,)."""
    if not features:
        raise LmforgeError("cannot batch zero examples; the dataset is empty")
    batch = {}
    for key, first in features[0].items():
        values = [f[key] for f in features]
        if not isinstance(first, (list, tuple)):
            batch[key] = torch.tensor(values, dtype=torch.long)
            continue
        width = max(len(v) for v in values)
        pad = _PAD_VALUES.get(key, pad_token_id)
        if pad is None and any(len(v) < width for v in values):
            raise LmforgeError(
                f"the tokenizer has no pad token, so {key} rows of different lengths cannot be batched; "
                "use batch size 1 or a tokenizer with a pad token"
            )
        batch[key] = torch.tensor([list(v) + [pad] * (width - len(v)) for v in values], dtype=torch.long)
    return batch
