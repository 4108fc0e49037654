"""The logits processors on hand-made logits, against hand-computed values and the transformers
processors of the same name, and the sampler built on them."""

import math

import pytest
import torch
from transformers.generation.logits_process import (
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from lmforge.inference import (
    GenerationConfig,
    apply_repetition_penalty,
    apply_temperature,
    apply_top_k,
    apply_top_p,
    sample_next,
    seen_tokens,
)

INF = float("inf")


def test_temperature():
    logits = torch.tensor([[1.0, -2.0, 0.5]])
    assert apply_temperature(logits, 0.5).tolist() == [[2.0, -4.0, 1.0]]


def test_top_k_keeps_the_k_largest_and_ties():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0], [5.0, 1.0, 5.0, 4.0]])
    assert apply_top_k(logits, 2).tolist() == [[-INF, 3.0, 2.0, -INF], [5.0, -INF, 5.0, -INF]]
    assert apply_top_k(logits, 100).tolist() == logits.tolist()


@pytest.mark.parametrize(
    ("top_p", "kept"),
    [(0.75, [0, 1]), (0.85, [0, 1, 2]), (0.4, [0]), (1e-6, [0]), (1.0, [0, 1, 2, 3])],
)
def test_top_p_keeps_the_smallest_set_reaching_p(top_p, kept):
    probs = [0.5, 0.3, 0.15, 0.05]  # cumulative from the top: 0.5, 0.8, 0.95, 1.0
    logits = torch.tensor([[math.log(p) for p in probs]])
    out = apply_top_p(logits, top_p)[0]
    assert torch.isfinite(out).nonzero().flatten().tolist() == kept
    torch.testing.assert_close(out[kept], logits[0, kept])


def test_repetition_penalty_semantics():
    """A seen token's logit is divided by the penalty if positive, multiplied if negative."""
    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0]])
    seen = torch.tensor([[True, True, False, False]])
    assert apply_repetition_penalty(logits, seen, 2.0).tolist() == [[1.0, -4.0, 1.0, -1.0]]
    assert apply_repetition_penalty(logits, seen, 0.5).tolist() == [[4.0, -1.0, 1.0, -1.0]]


def test_seen_tokens_ignore_padding():
    ids = torch.tensor([[0, 0, 3, 4], [0, 0, 0, 1]])
    mask = torch.tensor([[0, 1, 1, 1], [0, 0, 0, 1]])  # row 0 uses pad id 0 as a real token too
    seen = seen_tokens(ids, mask, vocab_size=5)
    assert seen.tolist() == [[True, False, False, True, True], [False, True, False, False, False]]


def test_processors_equal_transformers():
    torch.manual_seed(0)
    logits = torch.randn(4, 50) * 3
    ids = torch.randint(0, 50, (4, 12))
    seen = seen_tokens(ids, torch.ones_like(ids), 50)
    cases = [
        (apply_repetition_penalty(logits, seen, 1.3), RepetitionPenaltyLogitsProcessor(1.3)),
        (apply_temperature(logits, 0.7), TemperatureLogitsWarper(0.7)),
        (apply_top_k(logits, 7), TopKLogitsWarper(7)),
        (apply_top_p(logits, 0.6), TopPLogitsWarper(0.6)),
    ]
    for ours, theirs in cases:
        torch.testing.assert_close(ours, theirs(ids, logits.clone()))


def test_greedy_is_argmax():
    logits = torch.randn(8, 30)
    config = GenerationConfig(temperature=0)
    assert sample_next(logits, config).tolist() == logits.argmax(-1).tolist()


def test_top_k_1_and_tiny_top_p_are_greedy():
    logits = torch.randn(64, 30)
    generator = torch.Generator().manual_seed(0)
    for config in [GenerationConfig(temperature=1.0, top_k=1), GenerationConfig(temperature=2.0, top_p=1e-6)]:
        assert sample_next(logits, config, generator).tolist() == logits.argmax(-1).tolist()


def test_samples_only_kept_tokens_with_their_probabilities():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1]])).expand(20000, 3)
    generator = torch.Generator().manual_seed(0)
    counts = torch.bincount(sample_next(logits, GenerationConfig(temperature=1.0), generator), minlength=3)
    torch.testing.assert_close(counts / 20000, torch.tensor([0.6, 0.3, 0.1]), atol=0.015, rtol=0)
    top_2 = sample_next(logits, GenerationConfig(temperature=1.0, top_k=2), generator)
    assert set(top_2.tolist()) == {0, 1}


def test_draw_never_takes_a_token_of_probability_zero():
    """Zero-probability tokens first, between and last: none is drawn, the others in proportion."""
    from lmforge.inference.sampling import draw

    probs = torch.tensor([[0.0, 0.5, 0.0, 0.0, 0.25, 0.25, 0.0]]).expand(20000, 7)
    counts = torch.bincount(draw(probs, torch.Generator().manual_seed(1)), minlength=7) / 20000
    assert counts[[0, 2, 3, 6]].sum() == 0
    torch.testing.assert_close(counts[[1, 4, 5]], torch.tensor([0.5, 0.25, 0.25]), atol=0.015, rtol=0)


def test_same_seed_same_samples():
    logits = torch.randn(16, 40)
    config = GenerationConfig(temperature=1.0, top_p=0.9)
    runs = [sample_next(logits, config, torch.Generator().manual_seed(5)) for _ in range(2)]
    assert runs[0].tolist() == runs[1].tolist()


def test_repetition_penalty_changes_the_greedy_choice():
    logits = torch.tensor([[3.0, 2.0, 0.0]])
    seen = torch.tensor([[True, False, False]])
    config = GenerationConfig(temperature=0, repetition_penalty=2.0)
    assert sample_next(logits, config, seen=seen).tolist() == [1]  # 3 / 2 < 2
    assert sample_next(logits, GenerationConfig(temperature=0), seen=seen).tolist() == [0]
