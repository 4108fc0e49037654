"""Masked-LM and span-corruption objectives: statistics on large random batches, exact structure,
reproducibility from the generator, and property tests on random shapes."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.data.objectives import (
    corrupt_spans,
    generator_for,
    mask_tokens,
    noise_counts,
    random_spans_noise_mask,
    raw_length_for,
    span_corruption_lengths,
)
from lmforge.errors import LmforgeError
from lmforge.train.loss import IGNORE_INDEX

VOCAB = 1000
SPECIALS = torch.tensor([0, 1, 2, 3, 4])  # pad, unk, cls, sep, mask
MASK_ID = 4
ORDINARY = torch.arange(5, VOCAB)
SENTINELS = torch.arange(VOCAB - 1, VOCAB - 101, -1)  # <extra_id_0> is the last id, as in T5
EOS = 1


def _corpus(shape, seed=0, special_rate=0.05):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, shape, generator=g)
    is_special = torch.rand(shape, generator=g) < special_rate
    return torch.where(is_special, SPECIALS[torch.randint(0, 4, shape, generator=g)], ids)


def _mask(ids, seed=0):
    return mask_tokens(
        ids, mask_token_id=MASK_ID, special_ids=SPECIALS, random_ids=ORDINARY, generator=generator_for(seed)
    )


def _within(observed: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    """Whether a binomial count is within `sigmas` standard deviations of n * p."""
    return abs(observed - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def test_masking_statistics_on_a_large_batch():
    ids = _corpus((256, 512))
    inputs, labels = _mask(ids)
    ordinary = ~torch.isin(ids, SPECIALS)
    chosen = labels != IGNORE_INDEX
    n_ordinary, n_chosen = int(ordinary.sum()), int(chosen.sum())
    assert _within(n_chosen, n_ordinary, 0.15), n_chosen / n_ordinary  # 15% +- 5 sigma (about 0.5%)
    masked = chosen & (inputs == MASK_ID)
    kept = chosen & (inputs == ids)
    replaced = chosen & (inputs != MASK_ID) & (inputs != ids)
    # A random replacement equals the original with probability 1 / len(ORDINARY): counted as kept.
    p_collide = 0.1 / len(ORDINARY)
    assert _within(int(masked.sum()), n_chosen, 0.8)
    assert _within(int(replaced.sum()), n_chosen, 0.1 - p_collide)
    assert _within(int(kept.sum()), n_chosen, 0.1 + p_collide)
    print(
        f"chosen {n_chosen / n_ordinary:.4f}, [MASK] {masked.sum() / n_chosen:.4f}, "
        f"random {replaced.sum() / n_chosen:.4f}, kept {kept.sum() / n_chosen:.4f}"
    )


def test_masking_never_touches_specials_and_labels_mark_exactly_the_chosen_positions():
    ids = _corpus((64, 256), seed=1, special_rate=0.3)
    inputs, labels = _mask(ids, seed=1)
    is_special = torch.isin(ids, SPECIALS)
    chosen = labels != IGNORE_INDEX
    assert not (chosen & is_special).any()
    assert torch.equal(inputs[is_special], ids[is_special])
    assert torch.equal(labels[chosen], ids[chosen])  # the original id at every chosen position
    assert not ((inputs != ids) & ~chosen).any()  # nothing changes outside the chosen positions
    random = chosen & (inputs != ids) & (inputs != MASK_ID)
    assert random.any() and not torch.isin(inputs[random], SPECIALS).any()  # never a special token


def test_masking_is_a_function_of_the_generator_seed():
    ids = _corpus((8, 128))
    a, b, c = _mask(ids, seed=3), _mask(ids, seed=3), _mask(ids, seed=4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    assert generator_for(7, 0, 1).initial_seed() != generator_for(7, 1, 0).initial_seed()


def _spans(mask: torch.Tensor) -> list[int]:
    """Lengths of the runs of True in a 1-D bool mask."""
    runs, n = [], 0
    for is_noise in mask.tolist() + [False]:
        if is_noise:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    return runs


def test_noise_mask_statistics():
    length, n_rows = 512, 400
    g = generator_for(0)
    masks = torch.stack([random_spans_noise_mask(length, g) for _ in range(n_rows)])
    n_noise, n_spans = noise_counts(length)
    assert (n_noise, n_spans) == (77, 26)  # round(0.15 * 512), round(77 / 3)
    assert (masks.sum(1) == n_noise).all()  # exactly 15% noise in every row
    spans = [_spans(m) for m in masks]
    assert all(len(s) == n_spans for s in spans)
    lengths = torch.tensor([x for s in spans for x in s], dtype=torch.float)
    assert abs(lengths.mean().item() - 3.0) < 0.05  # 77 / 26 = 2.96
    assert lengths.min() >= 1 and lengths.std() > 1  # random lengths, not all 3
    assert not masks[:, 0].any() and masks[:, -1].all()  # non-noise first, noise last (as HF)
    # Away from the ends, every position is noise about 15% of the time.
    rate = masks[:, 50:-50].float().mean().item()
    assert abs(rate - 0.15) < 0.01, rate
    # Different rows get different layouts.
    assert len({tuple(m.nonzero().flatten().tolist()) for m in masks}) == n_rows


def _uncorrupt(inputs: list[int], targets: list[int]) -> list[int]:
    """The original tokens from a corrupted input and its target."""
    index = {s: i for i, s in enumerate(SENTINELS.tolist())}
    assert inputs[-1] == EOS and targets[-1] == EOS
    filled, pieces, current = {}, [], None
    for t in targets[:-1]:
        if t in index:
            current = index[t]
            filled[current] = []
        else:
            filled[current].append(t)
    for t in inputs[:-1]:
        pieces.extend(filled[index[t]] if t in index else [t])
    return pieces


def _check_corruption(tokens: torch.Tensor, seed: int) -> None:
    inputs, labels = corrupt_spans(
        tokens, sentinel_ids=SENTINELS, eos_token_id=EOS, generator=generator_for(seed)
    )
    assert (inputs.shape[1], labels.shape[1]) == span_corruption_lengths(tokens.shape[1])
    _, n_spans = noise_counts(tokens.shape[1])
    for row, inp, lab in zip(tokens.tolist(), inputs.tolist(), labels.tolist()):
        in_sentinels = [t for t in inp if t in set(SENTINELS.tolist())]
        out_sentinels = [t for t in lab if t in set(SENTINELS.tolist())]
        assert in_sentinels == out_sentinels == SENTINELS[:n_spans].tolist()  # <extra_id_0>, 1, ... in order
        assert lab[0] == SENTINELS[0]  # the target opens with the first sentinel
        assert _uncorrupt(inp, lab) == row  # input + target give back the original exactly


def test_span_corruption_reconstructs_the_original_with_fixed_lengths():
    tokens = torch.randint(5, 800, (64, 568), generator=torch.Generator().manual_seed(0))
    _check_corruption(tokens, seed=0)
    assert span_corruption_lengths(568) == (512, 114)  # HF run_t5_mlm_flax for max_seq_length 512
    assert raw_length_for(512) == 568


@settings(max_examples=60, deadline=None)
@given(length=st.integers(2, 300), rows=st.integers(1, 4), seed=st.integers(0, 2**32))
def test_span_corruption_properties(length, rows, seed):
    tokens = torch.randint(5, 800, (rows, length), generator=torch.Generator().manual_seed(seed))
    _check_corruption(tokens, seed)


@settings(max_examples=60, deadline=None)
@given(input_length=st.integers(3, 2000))
def test_raw_length_is_the_longest_that_fits(input_length):
    raw = raw_length_for(input_length)
    assert span_corruption_lengths(raw)[0] <= input_length < span_corruption_lengths(raw + 1)[0]


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(1, 6),
    length=st.integers(1, 64),
    special_rate=st.floats(0, 1),
    seed=st.integers(0, 2**32),
)
def test_masking_properties(rows, length, special_rate, seed):
    ids = _corpus((rows, length), seed=seed % 1000, special_rate=special_rate)
    inputs, labels = _mask(ids, seed=seed)
    chosen = labels != IGNORE_INDEX
    assert inputs.shape == labels.shape == ids.shape
    assert not (chosen & torch.isin(ids, SPECIALS)).any()
    assert torch.equal(labels[chosen], ids[chosen]) and torch.equal(inputs[~chosen], ids[~chosen])


def test_too_few_sentinels_is_a_clear_error():
    tokens = torch.randint(5, 800, (1, 400))
    with pytest.raises(LmforgeError, match="sentinel"):
        corrupt_spans(tokens, sentinel_ids=SENTINELS[:5], eos_token_id=EOS, generator=generator_for(0))
