"""Token files and `PackedBatches`: checked loading, pure and exact batches, the rank split, eval batches."""

import json
from collections import Counter

import numpy as np
import pytest
import torch

from lmforge.data.tokens import PackedBatches, TokenFile
from lmforge.errors import LmforgeError

SEQ_LEN = 4


def write_token_dir(path, train, val, dtype="uint16"):
    """A directory in the lmforge-tokens-v1 format, as `lmforge prepare` writes it."""
    path.mkdir(parents=True, exist_ok=True)
    np.asarray(train, dtype=np.dtype(dtype).newbyteorder("<")).tofile(path / "train.bin")
    np.asarray(val, dtype=np.dtype(dtype).newbyteorder("<")).tofile(path / "val.bin")
    manifest = {
        "format": "lmforge-tokens-v1",
        "dtype": dtype,
        "vocab_size": 70000,
        "eos_token_id": 0,
        "train_tokens": len(train),
        "val_tokens": len(val),
    }
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


@pytest.fixture
def token_dir(tmp_path):
    # Token i is i, so a window is recognisable by its first token: window w starts at w * SEQ_LEN.
    return write_token_dir(
        tmp_path / "tokens", np.arange(24 * SEQ_LEN + 1), np.arange(1000, 1000 + 5 * SEQ_LEN + 3)
    )


def window_of(row: torch.Tensor) -> int:
    return int(row[0]) // SEQ_LEN


def test_token_file_reads_the_memmap(token_dir):
    train = TokenFile.load(token_dir)
    assert isinstance(train.tokens, np.memmap) and not train.tokens.flags.writeable
    assert train.tokens.tolist() == list(range(24 * SEQ_LEN + 1))
    assert train.num_windows(SEQ_LEN) == 24 and train.num_windows(1) == 24 * SEQ_LEN
    assert train.vocab_size == 70000 and train.eos_token_id == 0
    assert TokenFile.load(token_dir, "val").num_windows(SEQ_LEN) == 5


def test_uint32_token_files(tmp_path):
    ids = [0, 65535, 65536, 69999, 5]
    path = write_token_dir(tmp_path / "big", ids, ids, dtype="uint32")
    assert TokenFile.load(path).tokens.tolist() == ids


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "manifest.json").unlink(), "manifest.json is missing"),
        (lambda d: (d / "manifest.json").write_text("{not json"), "unreadable"),
        (
            lambda d: (d / "manifest.json").write_text('{"format": "other"}'),
            "not an lmforge-tokens-v1 manifest",
        ),
        (lambda d: (d / "train.bin").unlink(), "train.bin is missing"),
        (lambda d: (d / "train.bin").write_bytes(b"\0" * 10), "has 10 bytes but manifest.json expects 194"),
    ],
)
def test_damaged_directories_say_prepare_again(token_dir, damage, message):
    damage(token_dir)
    with pytest.raises(LmforgeError, match=message) as info:
        TokenFile.load(token_dir)
    assert "lmforge prepare" in str(info.value)


def test_batches_are_pure_functions_of_step_and_micro(token_dir):
    make = lambda: PackedBatches(TokenFile.load(token_dir), SEQ_LEN, 3, seed=5, grad_accum=2)  # noqa: E731
    a, b = make(), make()
    for step, micro in [(0, 0), (7, 1), (3, 0), (100, 1)]:
        x, y = a.batch(step, micro)
        assert x.dtype == torch.long and x.shape == y.shape == (3, SEQ_LEN)
        # A fresh object, and the same one after visiting other epochs, agree: resume is exact.
        assert all(torch.equal(p, q) for p, q in zip((x, y), b.batch(step, micro)))
    other_seed = PackedBatches(TokenFile.load(token_dir), SEQ_LEN, 3, seed=6, grad_accum=2)
    assert not torch.equal(a.batch(0, 0)[0], other_seed.batch(0, 0)[0])


def test_labels_are_inputs_shifted_by_one(token_dir):
    batches = PackedBatches(TokenFile.load(token_dir), SEQ_LEN, 4, seed=0)
    x, y = batches.batch(2)
    for row_x, row_y in zip(x, y):
        start = window_of(row_x) * SEQ_LEN
        assert row_x.tolist() == list(range(start, start + SEQ_LEN))
        assert row_y.tolist() == list(range(start + 1, start + SEQ_LEN + 1))


def test_every_window_once_per_epoch(token_dir):
    # 24 windows, 12 samples per step (3 per micro-batch x 2 ranks x 2 micro-batches): 2 steps per epoch.
    ranks = [
        PackedBatches(TokenFile.load(token_dir), SEQ_LEN, 3, seed=1, rank=r, world_size=2, grad_accum=2)
        for r in range(2)
    ]
    epochs = []
    for first_step in (0, 2):
        seen = [
            window_of(row)
            for step in (first_step, first_step + 1)
            for b in ranks
            for m in range(2)
            for row in b.batch(step, m)[0]
        ]
        assert sorted(seen) == list(range(24))
        epochs.append(seen)
    assert epochs[0] != epochs[1], "each epoch has its own order"


def test_ranks_together_equal_one_process_with_their_batch(token_dir):
    # 24 windows, 20 samples per step: epochs straddle steps and batches.
    one = PackedBatches(TokenFile.load(token_dir), SEQ_LEN, 10, seed=3, grad_accum=2)
    ranks = [
        PackedBatches(TokenFile.load(token_dir), SEQ_LEN, 5, seed=3, rank=r, world_size=2, grad_accum=2)
        for r in range(2)
    ]
    for step in range(5):
        single = Counter(window_of(row) for m in range(2) for row in one.batch(step, m)[0])
        split = Counter(window_of(row) for b in ranks for m in range(2) for row in b.batch(step, m)[0])
        assert single == split


def test_eval_batches_are_the_first_windows_in_order(token_dir):
    val = TokenFile.load(token_dir, "val")
    batches = PackedBatches(val, SEQ_LEN, 2, seed=0, rank=1, world_size=2)
    evals = batches.eval_batches(2)
    assert [[(int(row[0]) - 1000) // SEQ_LEN for row in x] for x, _ in evals] == [[0, 1], [2, 3]]
    assert evals[0][0][0].tolist() == [1000, 1001, 1002, 1003] and evals[0][1][0].tolist() == [
        1001,
        1002,
        1003,
        1004,
    ]
    again = batches.eval_batches(2)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(evals, again))
    # More than there are: as many full batches as fit; fewer windows than a batch: one smaller batch.
    assert len(batches.eval_batches(10)) == 2
    assert [x.shape[0] for x, _ in PackedBatches(val, SEQ_LEN, 8, seed=0).eval_batches(3)] == [5]


def test_too_short_file_is_an_error(tmp_path):
    path = write_token_dir(tmp_path / "short", np.arange(8), np.arange(3))
    with pytest.raises(
        LmforgeError, match=r"has 8 tokens, fewer than one window of seq_len\+1 = 9.*--seq-len"
    ):
        PackedBatches(TokenFile.load(path), 8, 2, seed=0)
    assert PackedBatches(TokenFile.load(path), 7, 2, seed=0).num_windows == 1
    with pytest.raises(LmforgeError, match=r"val\.bin has 3 tokens"):
        PackedBatches(TokenFile.load(path, "val"), 8, 2, seed=0)


def test_empty_split_loads_and_has_no_windows(tmp_path):
    path = write_token_dir(tmp_path / "empty", np.arange(10), [])
    assert TokenFile.load(path, "val").num_windows(4) == 0


@pytest.mark.parametrize(
    "kwargs", [{"rank": 2, "world_size": 2}, {"grad_accum": 0}, {"batch_size": 0}, {"seq_len": 0}]
)
def test_bad_batch_arguments(token_dir, kwargs):
    args = {"seq_len": SEQ_LEN, "batch_size": 2, "seed": 0, **kwargs}
    with pytest.raises(LmforgeError):
        PackedBatches(TokenFile.load(token_dir), **args)


def test_micro_batch_out_of_range(token_dir):
    batches = PackedBatches(TokenFile.load(token_dir), SEQ_LEN, 2, seed=0, grad_accum=2)
    with pytest.raises(LmforgeError, match="micro-batch 2"):
        batches.batch(0, 2)
