"""The decode fast paths: the static KV cache equals the dynamic one (logits and greedy tokens), the
few-rows linear equals F.linear, and the compiled decode step compiles once and never per token."""

import pytest
import torch
import torch.nn.functional as F

from lmforge.inference import GenerationConfig, TokenBuffer, generate_ids, next_token_logits, static_cache
from lmforge.inference.few_rows import MAX_ROWS, FewRowsLinear, few_rows_linear
from lmforge.inference.static_cache import StaticDecoder
from lmforge.models import build_model, get_preset

N_STEPS = 12


@pytest.fixture(scope="module", params=["tiny", "llama-tiny"])
def model(request):
    torch.manual_seed(0)
    return build_model(get_preset(request.param, max_seq_len=64)).eval()


def left_padded_prompts(batch_size: int, vocab_size: int) -> list[list[int]]:
    generator = torch.Generator().manual_seed(batch_size)
    lengths = [9 - 3 * (row % 3) for row in range(batch_size)]  # 9, 6, 3, 9, ...: padding unless B is 1
    return [torch.randint(0, vocab_size, (n,), generator=generator).tolist() for n in lengths]


@pytest.mark.parametrize("batch_size", [1, 3])
@torch.inference_mode()
def test_static_cache_equals_dynamic_cache(model, batch_size):
    """Step by step, fed the same greedy tokens: the static path (with the few-rows linear a batch
    gets) gives the dynamic KV cache's logits within 1e-5, hence its greedy tokens."""
    prompts = left_padded_prompts(batch_size, model.config.vocab_size)
    capacity = max(map(len, prompts)) + N_STEPS
    batch = TokenBuffer(prompts, capacity, 0, model.device)
    cache = model.new_cache(batch_size, capacity - 1)
    decoder = StaticDecoder(model, batch_size, capacity - 1, is_static=True)
    expected = next_token_logits(model, batch, cache)
    got = decoder.prefill(
        batch.ids[:, : batch.length], batch.mask[:, : batch.length] if batch.is_padded else None
    )
    for _ in range(N_STEPS - 1):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
        assert torch.equal(got.argmax(-1), expected.argmax(-1))
        tokens = expected.argmax(-1)
        batch.append(tokens)
        expected = next_token_logits(model, batch, cache)
        with few_rows_linear(batch_size, model.device):
            got = decoder.step(tokens)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_generate_ids_equals_recompute(model, batch_size):
    """The engine's default (eager, on the dynamic cache) decodes the same greedy tokens as recomputing
    every step."""
    prompts = left_padded_prompts(batch_size, model.config.vocab_size)

    def run(**options):
        config = GenerationConfig(max_new_tokens=N_STEPS, temperature=0.0, **options)
        return list(generate_ids(model, prompts, config))

    assert run() == run(use_cache=False)


@pytest.mark.parametrize("shape", [(2, 48), (3, 5, 48), (16, 48)])
@pytest.mark.parametrize("use_bias", [True, False])
def test_few_rows_linear_equals_linear(shape, use_bias):
    torch.manual_seed(0)
    x, weight, bias = torch.randn(shape), torch.randn(40, 48), torch.randn(40) if use_bias else None
    with FewRowsLinear():
        got = F.linear(x, weight, bias)
        view = got.view(-1)  # contiguous, as the callers' .view() reshapes need
    torch.testing.assert_close(got, F.linear(x, weight, bias), rtol=0, atol=1e-5)
    assert view.shape == (got.numel(),)


def test_few_rows_linear_applies_to_small_cpu_batches_only():
    assert isinstance(few_rows_linear(2, torch.device("cpu")), FewRowsLinear)
    assert isinstance(few_rows_linear(MAX_ROWS, torch.device("cpu")), FewRowsLinear)
    # NOTE: never one row: a function mode sees every operation of the step, which costs more than
    # any product saves (SmolLM2 int4: 63 tokens/s without it, 40 with it).
    for batch_size, device in [(1, "cpu"), (MAX_ROWS + 1, "cpu"), (4, "cuda")]:
        assert not isinstance(few_rows_linear(batch_size, torch.device(device)), FewRowsLinear)


@pytest.fixture
def eager_backend(monkeypatch):
    """torch.compile with dynamo's `eager` backend: the same tracing and guards (so the same
    recompilations) as inductor, without seconds of C++ compilation per graph."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    monkeypatch.setattr(static_cache, "COMPILE_BACKEND", "eager")
    monkeypatch.setattr(static_cache, "_COMPILED", {})
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("batch_size", [1, 3])
def test_compiled_step_compiles_once(model, batch_size, eager_backend):
    """The compiled path gives the eager path's tokens, with one graph for the whole generation and
    none more for a second generation of the same shape: no recompilation per token."""
    prompts = left_padded_prompts(batch_size, model.config.vocab_size)
    counters = torch._dynamo.utils.counters

    def run(use_compile: bool):
        config = GenerationConfig(max_new_tokens=N_STEPS, temperature=0.0, use_compile=use_compile)
        return list(generate_ids(model, prompts, config))

    eager = run(False)
    assert run(True) == eager
    assert counters["stats"]["unique_graphs"] == 1
    assert counters["stats"]["calls_captured"] >= 1
    assert run(True) == eager
    assert counters["stats"]["unique_graphs"] == 1


def test_compile_failure_falls_back_to_eager(model, monkeypatch, eager_backend):
    monkeypatch.setattr(static_cache, "COMPILE_BACKEND", "no-such-backend")
    config = GenerationConfig(max_new_tokens=4, temperature=0.0)
    prompts = left_padded_prompts(1, model.config.vocab_size)
    expected = list(generate_ids(model, prompts, config))
    with pytest.warns(UserWarning, match="decoding eagerly"):
        got = list(
            generate_ids(
                model, prompts, GenerationConfig(max_new_tokens=4, temperature=0.0, use_compile=True)
            )
        )
    assert got == expected


def test_timings_count_every_new_token():
    """generate's `timings` (what `lmforge generate --bench` can print): TTFT and decode speed apart."""
    from lmforge.inference.generate import _timed

    torch.manual_seed(0)
    tiny = build_model(get_preset("tiny", max_seq_len=64)).eval()
    timings: dict = {}
    config = GenerationConfig(max_new_tokens=6, temperature=0.0)
    steps = list(_timed(generate_ids(tiny, left_padded_prompts(2, 512), config), timings))
    assert len(steps) == 6
    assert timings["new_tokens"] == 12
    assert 0 < timings["ttft_s"] < timings["total_s"]
    assert timings["decode_tokens_per_s"] > 0


@pytest.mark.parametrize("where", ["bf16 weights", "bf16 autocast"])
def test_compiled_and_static_decode_in_bf16(model, where, eager_backend):
    """In bf16 (weights, or float32 weights under autocast) the static cache and the compiled step
    decode the tokens that recomputing every step gives."""
    import contextlib
    import copy

    subject = copy.deepcopy(model).to(torch.bfloat16) if where == "bf16 weights" else model
    context = (
        torch.autocast("cpu", dtype=torch.bfloat16) if where == "bf16 autocast" else contextlib.nullcontext()
    )
    prompts = left_padded_prompts(3, model.config.vocab_size)

    def run(**options):
        config = GenerationConfig(max_new_tokens=N_STEPS, temperature=0.0, **options)
        with context:
            return list(generate_ids(subject, prompts, config))

    recomputed = run(use_cache=False)
    assert run() == recomputed
    assert run(use_compile=True) == recomputed
