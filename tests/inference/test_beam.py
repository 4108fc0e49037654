"""Beam search gives the tokens of transformers' `generate(num_beams=3, do_sample=False)`, with
hypotheses that end in EOS, batched prompts of different lengths, and without a KV cache."""

import pytest
import torch
import transformers

from lmforge.hf.checkpoint import load_model
from lmforge.inference import GenerationConfig, generate_ids

VOCAB, PROMPT_LEN, MAX_NEW = 50, 5, 12


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def models(request, tmp_path_factory):
    """(transformers model, the same checkpoint loaded by lmforge); a small vocabulary and larger
    initial weights make sharp distributions, so EOS is often among the best candidates."""
    torch.manual_seed(0)
    special = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0, initializer_range=0.3)
    if request.param == "gpt2":
        config = transformers.GPT2Config(
            vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, **special
        )
        hf = transformers.GPT2LMHeadModel(config)
    else:
        config = transformers.LlamaConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=56,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            **special,
        )
        hf = transformers.LlamaForCausalLM(config)
    path = tmp_path_factory.mktemp(request.param)
    hf.eval().save_pretrained(path)
    return hf, load_model(path)


def hf_beam(hf, prompt: list[int], eos: int | None, **kwargs) -> list[int]:
    """transformers' best beam, without the prompt and without padding after EOS."""
    ids = torch.tensor([prompt])
    out = hf.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        num_beams=3,
        do_sample=False,
        early_stopping=False,
        max_new_tokens=MAX_NEW,
        eos_token_id=eos,
        pad_token_id=0,
        **kwargs,
    )[0, len(prompt) :].tolist()
    return out[: out.index(eos) + 1] if eos in out else out


def beam(model, prompts: list[list[int]], eos: int | None, **kwargs) -> list[list[int]]:
    config = GenerationConfig(num_beams=3, max_new_tokens=MAX_NEW, **kwargs)
    eos_ids = set() if eos is None else {eos}
    rows = [[] for _ in prompts]
    for step in generate_ids(model, prompts, config, eos_token_ids=eos_ids, pad_token_id=0):
        for row, token in enumerate(step):
            if token is not None:
                rows[row].append(token)
    return rows


def prompts_and_eos(hf) -> list[tuple[list[int], int]]:
    """Random prompts, each with an EOS taken from its own beam output, so hypotheses do finish."""
    cases = []
    for seed in range(6):
        prompt = torch.randint(
            3, VOCAB, (PROMPT_LEN,), generator=torch.Generator().manual_seed(seed)
        ).tolist()
        no_eos = hf_beam(hf, prompt, eos=None)
        cases.append((prompt, no_eos[seed % 4 + 1]))
    return cases


def test_beam_search_equals_transformers(models):
    hf, model = models
    n_ended_early = 0
    for prompt, eos in prompts_and_eos(hf):
        expected = hf_beam(hf, prompt, eos)
        n_ended_early += expected[-1] == eos
        assert beam(model, [prompt], eos) == [expected], (prompt, eos)
    assert n_ended_early >= 2  # the parity covers finished hypotheses, not only the token limit


def test_beam_search_without_eos_equals_transformers(models):
    hf, model = models
    prompt = [7, 3, 30, 12, 9]
    assert beam(model, [prompt], None) == [hf_beam(hf, prompt, None)]


@pytest.mark.parametrize("length_penalty", [0.0, 2.0])
def test_length_penalty_equals_transformers(models, length_penalty):
    hf, model = models
    for prompt, eos in prompts_and_eos(hf)[:3]:
        expected = hf_beam(hf, prompt, eos, length_penalty=length_penalty)
        assert beam(model, [prompt], eos, length_penalty=length_penalty) == [expected]


def test_repetition_penalty_equals_transformers(models):
    hf, model = models
    prompt, eos = prompts_and_eos(hf)[0]
    expected = hf_beam(hf, prompt, eos, repetition_penalty=1.4)
    assert beam(model, [prompt], eos, repetition_penalty=1.4) == [expected]


def test_batched_beams_equal_single(models):
    """Prompts of different lengths share one left-padded batch; each gets its own answer."""
    hf, model = models
    prompts = [[4, 9, 11], [20, 21, 22, 23, 24, 25, 26], [33]]
    eos = hf_beam(hf, prompts[1], None)[3]
    batched = beam(model, prompts, eos)
    assert batched == [hf_beam(hf, p, eos) for p in prompts]


def test_beam_search_without_cache(models):
    hf, model = models
    for prompt, eos in prompts_and_eos(hf)[:3]:
        assert beam(model, [prompt], eos, use_cache=False) == beam(model, [prompt], eos)
