"""The serving engine on token ids: requests decoding together (continuous batching) give exactly what
each gives alone; echo logprobs equal the model's own; cancel frees a row; the limits refuse."""

import threading

import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.hf.checkpoint import load_model
from lmforge.inference import GenerationConfig, generate_ids
from lmforge.serve.engine import Engine, EngineBusy, SamplingParams
from tests.conftest import make_hf_gpt2, make_hf_llama, make_hf_t5


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    (make_hf_gpt2 if request.param == "gpt2" else make_hf_llama)(path)
    return load_model(path)


def _prompts(n: int, vocab: int = 101) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(3, vocab, (3 + 5 * i % 23,), generator=g).tolist() for i in range(n)]


def _alone(model, prompt, max_tokens, **sampling) -> list[int]:
    config = GenerationConfig(max_new_tokens=max_tokens, **sampling)
    eos = {model.config.eos_token_id}  # the engine stops there too (with no tokenizer: the model's EOS)
    return [
        step[0] for step in generate_ids(model, [prompt], config, eos_token_ids=eos) if step[0] is not None
    ]


def test_concurrent_requests_equal_each_alone(model):
    """8 prompts of different lengths, different token budgets, greedy and seeded sampling, submitted
    while others run (from 8 threads), each equal to `generate_ids` on that prompt alone."""
    engine = Engine(model, max_batch=4, max_queue=8, prefill_chunk=5).start()
    prompts = _prompts(8)
    settings = [dict(temperature=0.0) if i % 2 else dict(temperature=0.9, top_k=20, seed=i) for i in range(8)]
    budgets = [4 + 3 * i for i in range(8)]
    results: dict[int, list[int]] = {}

    def client(i):
        request = engine.submit(prompts[i], SamplingParams(max_tokens=budgets[i], **settings[i]))
        results[i] = [t.id for t in request]
        ended_at_eos = results[i][-1] == model.config.eos_token_id
        assert request.finish_reason == ("stop" if ended_at_eos else "length")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    engine.close()
    for i in range(8):
        assert results[i] == _alone(model, prompts[i], budgets[i], **settings[i]), i


def test_echo_logprobs_are_the_models_own(model):
    engine = Engine(model, max_batch=2, prefill_chunk=4).start()
    prompt = _prompts(3)[2]
    request = engine.submit(
        prompt, SamplingParams(max_tokens=1, temperature=0, logprobs=3, prompt_logprobs=True)
    )
    (new,) = list(request)
    engine.close()
    with torch.inference_mode():
        logprobs = model(torch.tensor([[*prompt, new.id]])).float().log_softmax(-1)[0]  # (T + 1, V)
    scored = request.prompt_logprobs
    assert [t.id for t in scored] == prompt and scored[0].logprob is None
    expected = [logprobs[i, prompt[i + 1]].item() for i in range(len(prompt) - 1)]
    assert [t.logprob for t in scored[1:]] == pytest.approx(expected, abs=1e-5)
    top = logprobs[len(prompt) - 1].topk(3)
    assert [i for i, _ in new.top] == top.indices.tolist()
    assert new.logprob == pytest.approx(logprobs[len(prompt) - 1, new.id].item(), abs=1e-5)
    assert new.id == top.indices[0].item()  # greedy


def test_scoring_only_and_cancel_free_the_row(model):
    engine = Engine(model, max_batch=1, max_queue=0).start()
    scored = engine.submit([5, 6, 7], SamplingParams(max_tokens=0, prompt_logprobs=True))
    assert list(scored) == [] and scored.finish_reason == "length" and len(scored.prompt_logprobs) == 3
    running = engine.submit([5, 6, 7], SamplingParams(max_tokens=40, temperature=0, ignore_eos=True))
    tokens = iter(running)
    next(tokens)
    assert engine.health() == {"slots": 1, "busy": 1, "queue": 0}
    with pytest.raises(EngineBusy):
        engine.submit([5], SamplingParams(max_tokens=1))
    running.cancel()
    rest = list(tokens)
    assert running.finish_reason == "cancelled" and len(rest) < 39
    assert engine.health() == {"slots": 1, "busy": 0, "queue": 0}
    again = engine.submit([5, 6, 7], SamplingParams(max_tokens=3, temperature=0))
    assert [t.id for t in again] == _alone(model, [5, 6, 7], 3, temperature=0)
    engine.close()


def test_refusals_name_the_numbers(model):
    engine, n = Engine(model, max_batch=1), model.config.max_seq_len
    with pytest.raises(
        LmforgeError, match=rf"{n - 4} tokens plus max_tokens 10 exceed the model's context of {n}"
    ):
        engine.submit([5] * (n - 4), SamplingParams(max_tokens=10))
    with pytest.raises(LmforgeError, match="token id 101 is outside"):
        engine.submit([101], SamplingParams())
    with pytest.raises(LmforgeError, match="empty"):
        engine.submit([], SamplingParams())
    with pytest.raises(LmforgeError, match="temperature"):
        SamplingParams(temperature=-1)


def test_t5_requests_run_one_at_a_time(tmp_path):
    make_hf_t5(tmp_path)
    t5 = load_model(tmp_path)
    engine = Engine(t5, max_batch=2).start()
    requests = [engine.submit(p, SamplingParams(max_tokens=6, temperature=0)) for p in _prompts(3, 71)]
    got = [[t.id for t in r] for r in requests]
    engine.close()
    assert got == [_alone(t5, p, 6, temperature=0) for p in _prompts(3, 71)]
