"""The sampler is numerically safe for every accepted temperature and repetition penalty: float32
log space, a near-zero temperature is greedy, extreme penalties and logits never give NaN or inf
probabilities, and any integer seed works."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmforge.errors import LmforgeError
from lmforge.inference import GenerationConfig, apply_repetition_penalty, sample_next
from lmforge.inference.generate import new_generator

INF = float("inf")
V = 8
LOGIT = st.one_of(
    st.floats(-1e4, 1e4),
    st.sampled_from([-INF, INF, math.nan, 3e38, -3e38, 1e30, -1e30, 0.0]),
)


@settings(max_examples=300, deadline=None)
@given(
    logits=st.lists(st.lists(LOGIT, min_size=V, max_size=V), min_size=1, max_size=3),
    temperature=st.one_of(st.floats(0, 1e6), st.sampled_from([0.0, 1e-6, 1e-5, 1e-300, 1e6])),
    penalty=st.one_of(st.floats(1e-300, 1e6, exclude_min=False), st.sampled_from([1e-300, 1e-6, 1.0, 1e6])),
    top_k=st.one_of(st.none(), st.integers(1, 2 * V)),
    top_p=st.one_of(st.none(), st.floats(1e-6, 1.0)),
    dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16, torch.float64]),
    seed=st.integers(-(2**70), 2**70),
)
def test_sampled_ids_are_valid_for_any_logits_and_settings(
    logits, temperature, penalty, top_k, top_p, dtype, seed
):
    config = GenerationConfig(
        temperature=temperature, repetition_penalty=penalty, top_k=top_k, top_p=top_p, seed=seed
    )
    logits = torch.tensor(logits, dtype=torch.float64).to(dtype)  # values past a dtype's range are inf
    seen = torch.rand(logits.shape, generator=torch.Generator().manual_seed(0)) < 0.5
    ids = sample_next(logits, config, new_generator(config.seed, torch.device("cpu")), seen=seen)
    assert ids.shape == (logits.shape[0],)
    assert ((ids >= 0) & (ids < V)).all()


def test_tiny_temperature_is_greedy():
    logits = torch.tensor([[1.0, 1.0 + 1e-3, 0.5], [3e38, -3e38, 1.0]])
    for temperature in (0.0, 1e-9, 9.9e-6):
        config = GenerationConfig(temperature=temperature)
        assert sample_next(logits, config).tolist() == [1, 0]


def test_a_removed_or_nan_token_is_never_sampled():
    logits = torch.tensor([[-INF, math.nan, 0.0, -INF]])
    for temperature in (1e-4, 1.0, 1e6):
        ids = sample_next(logits.expand(64, -1), GenerationConfig(temperature=temperature))
        assert set(ids.tolist()) == {2}


def test_huge_penalty_discourages_but_keeps_probabilities_finite():
    """Every token seen, penalty 1e6: logits stay finite, so the row is still a distribution."""
    logits = torch.tensor([[-3e38, 2.0, -1.0, 3e38]])
    seen = torch.ones_like(logits, dtype=torch.bool)
    for penalty in (1e6, 1e-300):
        out = apply_repetition_penalty(logits, seen, penalty)
        assert torch.isfinite(out).all()
        probs = out.log_softmax(-1).exp()
        assert torch.isfinite(probs).all() and probs.sum().item() == pytest.approx(1.0)
    masked = torch.tensor([[-INF, 1.0]])
    assert apply_repetition_penalty(masked, torch.ones_like(masked, dtype=torch.bool), 1e6)[0, 0] == -INF


def test_temperature_and_penalty_on_bf16_logits_equal_float32():
    """The work is done in float32 whatever the logits' dtype."""
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0)) * 5
    config = GenerationConfig(temperature=1e-4, seed=1)
    assert sample_next(logits.bfloat16(), config).tolist() == logits.bfloat16().float().argmax(-1).tolist()


@pytest.mark.parametrize("seed", [2**63, 2**64, 10**30, -(10**30)])
def test_a_huge_seed_is_reproducible(seed):
    logits = torch.zeros(1, 1000)
    config = GenerationConfig(temperature=1.0, seed=seed)
    draws = [sample_next(logits, config, new_generator(seed, torch.device("cpu"))).item() for _ in range(2)]
    assert draws[0] == draws[1]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", INF),
        ("temperature", math.nan),
        ("temperature", -1e-9),
        ("repetition_penalty", INF),
        ("repetition_penalty", 0.0),
        ("repetition_penalty", math.nan),
        ("top_p", math.nan),
        ("seed", 1.5),
        ("seed", "7"),
    ],
)
def test_out_of_range_values_are_refused_in_one_line(field, value):
    with pytest.raises(LmforgeError, match=field) as info:
        GenerationConfig(**{field: value})
    assert "\n" not in str(info.value)
