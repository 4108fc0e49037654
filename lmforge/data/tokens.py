"""Token files for pretraining, and deterministic batches of windows from them.

The format "lmforge-tokens-v1", written by `lmforge prepare` into one directory:
- train.bin, val.bin: raw little-endian token ids, uint16 when every id fits (vocab_size <= 65536), else
  uint32, with no header, so that `np.memmap(path, dtype, mode="r")` reads them. Each document's tokens
  are followed by the EOS id and documents are concatenated: the packed stream of GPT-2 (Radford et al.
  2019) and nanoGPT, where a training sample is any window of seq_len + 1 consecutive tokens.
- manifest.json: {"format", "dtype", "vocab_size", "eos_token_id", "train_tokens", "val_tokens", ...}.
- the tokenizer, in the Hugging Face layout (tokenizer.json, ...).

`PackedBatches` cuts the stream into non-overlapping windows and orders them by a seeded permutation per
epoch, so that the batch of any (step, micro-batch, rank) is a pure function of those numbers: resuming a
run reproduces it exactly, and N ranks see what one process with an N times larger batch would.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmforge.errors import LmforgeError

FORMAT = "lmforge-tokens-v1"
SPLITS = ("train", "val")
DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}


def token_dtype(vocab_size: int) -> np.dtype:
    """The smallest little-endian dtype that holds every id below `vocab_size`."""
    return DTYPES["uint16"] if vocab_size <= 1 << 16 else DTYPES["uint32"]


class TokenFile:
    """One split of a prepared directory: its tokens as a read-only memmap, and the manifest."""

    def __init__(self, path: Path, tokens: np.ndarray, manifest: dict[str, Any]):
        self.path = path
        self.tokens = tokens
        self.manifest = manifest

    @classmethod
    def load(cls, directory: str | Path, split: str = "train") -> TokenFile:
        """Open DIR/{split}.bin, checked against DIR/manifest.json."""
        if split not in SPLITS:
            raise LmforgeError(f"unknown split {split!r}; pass one of {', '.join(SPLITS)}")
        directory = Path(directory)
        manifest = read_manifest(directory)
        path = directory / f"{split}.bin"
        dtype = DTYPES[manifest["dtype"]]
        expected = manifest[f"{split}_tokens"] * dtype.itemsize
        try:
            size = path.stat().st_size
        except OSError:
            raise LmforgeError(f"{path} is missing; run `lmforge prepare` again") from None
        if size != expected:
            raise LmforgeError(
                f"{path} has {size} bytes but manifest.json expects {expected}; run `lmforge prepare` again"
            )
        # NOTE: numpy cannot memory-map an empty file.
        tokens = np.memmap(path, dtype=dtype, mode="r") if size else np.empty(0, dtype)
        return cls(path, tokens, manifest)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def vocab_size(self) -> int:
        return self.manifest["vocab_size"]

    @property
    def eos_token_id(self) -> int:
        return self.manifest["eos_token_id"]

    def num_windows(self, seq_len: int) -> int:
        """Non-overlapping windows of seq_len + 1 tokens, window i starting at token i * seq_len."""
        return max(0, (len(self.tokens) - 1) // seq_len)

    def window(self, index: int, seq_len: int) -> np.ndarray:
        """Tokens [index * seq_len, index * seq_len + seq_len + 1): inputs and, shifted by one, labels."""
        start = index * seq_len
        return self.tokens[start : start + seq_len + 1]


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """DIR/manifest.json, checked for the fields that reading the token files needs."""
    path = Path(directory) / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LmforgeError(
            f"{path} is missing: {directory} holds no prepared tokens; run `lmforge prepare`"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LmforgeError(f"{path} is unreadable ({e}); run `lmforge prepare` again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise LmforgeError(f"{path} is not an {FORMAT} manifest; run `lmforge prepare` again")
    for key in ("vocab_size", "eos_token_id", "train_tokens", "val_tokens"):
        if not isinstance(manifest.get(key), int) or manifest[key] < 0:
            raise LmforgeError(f"{path} has no valid {key!r}; run `lmforge prepare` again")
    if manifest.get("dtype") not in DTYPES:
        raise LmforgeError(
            f"{path} has an unknown dtype {manifest.get('dtype')!r}; run `lmforge prepare` again"
        )
    return manifest


class PackedBatches:
    """Batches of windows in a seeded order, a pure function of (step, micro-batch, rank).

    In optimizer step s the global batch is samples g = s * G + j, j < G = batch_size * world_size *
    grad_accum; micro-batch m of rank r takes j in [(m * world_size + r) * batch_size, + batch_size).
    Sample g is window perm_e[g % N] of epoch e = g // N, where N = num_windows and perm_e is the
    permutation of range(N) drawn by np.random.default_rng(seed + e): every window once per epoch.
    """

    def __init__(
        self,
        token_file: TokenFile,
        seq_len: int,
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        grad_accum: int = 1,
    ):
        if min(seq_len, batch_size, world_size, grad_accum) < 1:
            raise LmforgeError("seq_len, batch_size, world_size and grad_accum must all be at least 1")
        if not 0 <= rank < world_size:
            raise LmforgeError(f"rank {rank} is outside world size {world_size}")
        self.token_file = token_file
        self.seq_len = seq_len
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.grad_accum = grad_accum
        self.num_windows = token_file.num_windows(seq_len)
        if self.num_windows == 0:
            raise LmforgeError(
                f"{token_file.path} has {len(token_file)} tokens, fewer than one window of seq_len+1 = "
                f"{seq_len + 1}; use a smaller --seq-len or more data"
            )
        self._permutations: dict[int, np.ndarray] = {}

    @property
    def global_batch_size(self) -> int:
        """Samples per optimizer step, over all ranks and micro-batches."""
        return self.batch_size * self.world_size * self.grad_accum

    def batch(self, step: int, micro: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, labels), both (batch_size, seq_len) int64, for this rank's micro-batch of a step."""
        if step < 0 or not 0 <= micro < self.grad_accum:
            raise LmforgeError(
                f"step {step} / micro-batch {micro} out of range (grad_accum {self.grad_accum})"
            )
        return self.samples(
            step * self.global_batch_size + (micro * self.world_size + self.rank) * self.batch_size
        )

    def samples(self, first: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(input_ids, labels) of the batch_size samples from global sample `first` on."""
        return self._stack([self._window_of_sample(g) for g in range(first, first + self.batch_size)])

    def eval_batches(self, n_batches: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The first n_batches * batch_size windows in order, unshuffled: the same on every call and rank.

        With fewer windows than that, as many full batches as fit, or one smaller batch of all of them.
        """
        n_batches = min(n_batches, max(1, self.num_windows // self.batch_size))
        n_windows = min(n_batches * self.batch_size, self.num_windows)
        return [
            self._stack(range(start, min(start + self.batch_size, n_windows)))
            for start in range(0, n_windows, self.batch_size)
        ]

    def _window_of_sample(self, sample: int) -> int:
        epoch, position = divmod(sample, self.num_windows)
        if epoch not in self._permutations:
            # Keep two epochs, enough for a batch that straddles an epoch boundary.
            if len(self._permutations) >= 2:
                del self._permutations[min(self._permutations)]
            rng = np.random.default_rng(self.seed + epoch)
            self._permutations[epoch] = rng.permutation(self.num_windows)
        return int(self._permutations[epoch][position])

    def _stack(self, windows) -> tuple[torch.Tensor, torch.Tensor]:
        rows = np.stack([self.token_file.window(w, self.seq_len) for w in windows]).astype(np.int64)
        # (B, T + 1) -> inputs (B, T) and labels (B, T), the same tokens shifted by one
        return torch.from_numpy(rows[:, :-1].copy()), torch.from_numpy(rows[:, 1:].copy())
