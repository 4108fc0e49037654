"""Generation with T5: the input is encoded once and the decoder generates from its start token.
Greedy and beam search give transformers' `generate` tokens (v1.0 and v1.1 checkpoints); the KV cache
equals recomputation; batched inputs of different lengths equal each input alone; and the text layer
(Unigram tokenizer, stop strings, streaming, seeded sampling) works on encoder-decoders as on decoders."""

import pytest
import torch
from conftest import make_hf_t5

import lmforge
from lmforge.hf import load_model
from lmforge.inference import GenerationConfig, generate_ids
from lmforge.tokenizers import train_tokenizer

VOCAB, EOS, MAX_NEW = 71, 1, 12


@pytest.fixture(scope="module", params=["v1.0", "v1.1"])
def models(request, tmp_path_factory):
    """(transformers model, the same checkpoint in lmforge); larger initial weights make sharp
    distributions, so EOS is often among the best candidates."""
    path = tmp_path_factory.mktemp(request.param)
    hf = make_hf_t5(path, gated=request.param == "v1.1", n_decoder_layers=2, initializer_factor=3.0)
    return hf, load_model(path)


def prompt(seed: int, length: int = 7) -> list[int]:
    return torch.randint(2, VOCAB, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def hf_generate(hf, ids: list[int], eos: int | None, **kwargs) -> list[int]:
    """transformers' output without the start token and without padding after EOS."""
    out = hf.generate(
        torch.tensor([ids]),
        max_new_tokens=MAX_NEW,
        do_sample=False,
        eos_token_id=eos,
        pad_token_id=0,
        **kwargs,
    )[0, 1:].tolist()
    return out[: out.index(eos) + 1] if eos in out else out


def ours(model, prompts: list[list[int]], eos: int | None, **kwargs) -> list[list[int]]:
    config = GenerationConfig(max_new_tokens=MAX_NEW, temperature=0, **kwargs)
    rows = [[] for _ in prompts]
    for step in generate_ids(model, prompts, config, eos_token_ids=set() if eos is None else {eos}):
        for row, token in enumerate(step):
            if token is not None:
                rows[row].append(token)
    return rows


def cases(hf, **kwargs) -> list[tuple[list[int], int]]:
    """Prompts of different lengths, each with an EOS taken from its own output, so rows do finish."""
    result = []
    for seed in range(5):
        ids = prompt(seed, 4 + 2 * seed)
        no_eos = hf_generate(hf, ids, eos=None, **kwargs)
        result.append((ids, no_eos[seed % 4 + 2]))
    return result


@pytest.mark.parametrize("kwargs", [{}, {"repetition_penalty": 1.5}], ids=["plain", "repetition-penalty"])
def test_greedy_equals_transformers(models, kwargs):
    hf, model = models
    for ids, eos in cases(hf, **kwargs):
        expected = hf_generate(hf, ids, eos, **kwargs)
        assert ours(model, [ids], eos, **kwargs) == [expected]
        assert expected[-1] == eos or len(expected) == MAX_NEW


@pytest.mark.parametrize("length_penalty", [1.0, 2.0, -0.5])
def test_beam_search_equals_transformers(models, length_penalty):
    hf, model = models
    kwargs = {"num_beams": 3, "length_penalty": length_penalty}
    for ids, eos in cases(hf):
        expected = hf_generate(hf, ids, eos, early_stopping=False, **kwargs)
        assert ours(model, [ids], eos, **kwargs) == [expected]


@pytest.mark.parametrize("num_beams", [1, 3])
def test_batched_inputs_equal_each_alone(models, num_beams):
    _, model = models
    prompts = [prompt(10 + i, 3 + 4 * i) for i in range(4)]  # 3, 7, 11, 15 tokens: right-padded
    alone = [ours(model, [p], EOS, num_beams=num_beams)[0] for p in prompts]
    assert ours(model, prompts, EOS, num_beams=num_beams) == alone


@pytest.mark.parametrize("num_beams", [1, 3])
def test_cache_equals_recompute_tokens(models, num_beams):
    _, model = models
    prompts = [prompt(20 + i, 5 + 3 * i) for i in range(3)]
    assert ours(model, prompts, None, num_beams=num_beams) == ours(
        model, prompts, None, num_beams=num_beams, use_cache=False
    )


@pytest.mark.parametrize("gated", [False, True], ids=["v1.0", "v1.1"])
def test_cache_equals_recompute_logits(tmp_path, gated):
    make_hf_t5(tmp_path, gated=gated)  # default initialisation: logits of unit scale
    model = load_model(tmp_path)
    ids = torch.tensor([prompt(30, 9), prompt(31, 9)])
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    decoder_ids = torch.tensor([[0, *prompt(32, 10)], [0, *prompt(33, 10)]])
    with torch.no_grad():
        full = model(ids, mask, decoder_input_ids=decoder_ids)  # every position at once
        encoded = model.encode(ids, mask)
        cache = model.new_cache(2, decoder_ids.shape[1])
        steps = [
            model.logits(model.decode(decoder_ids[:, t : t + 1], encoded, attention_mask=mask, cache=cache))
            for t in range(decoder_ids.shape[1])
        ]
    assert cache.length == decoder_ids.shape[1]
    assert (torch.cat(steps, dim=1) - full).abs().max() < 1e-4


CORPUS = [
    "translate English to German: the house is wonderful.",
    "translate English to German: the cat sits on the mat.",
    "summarize: studies have shown that owning a dog is good for you.",
    "the quick brown fox jumps over the lazy dog near the river bank.",
] * 30


@pytest.fixture(scope="module")
def text_model(tmp_path_factory):
    """A T5 checkpoint with a Unigram tokenizer trained here, both saved the Hugging Face way."""
    path = tmp_path_factory.mktemp("t5-text")
    tok = train_tokenizer(iter(CORPUS), vocab_size=120, kind="unigram", n_sentinels=10)
    tok.save_pretrained(path)
    hf = make_hf_t5(path, vocab_size=tok.vocab_size, n_decoder_layers=2, initializer_factor=3.0)
    return hf, lmforge.load_model(path), lmforge.load_tokenizer(path)


def test_text_equals_transformers_greedy_text(text_model):
    hf, model, tok = text_model
    texts = ["translate English to German: the house is wonderful.", "summarize: the dog"]
    outputs = lmforge.generate(model, tok, texts, max_new_tokens=10, temperature=0)
    for text, output in zip(texts, outputs):
        ids = tok.encode(text)
        assert ids[-1] == tok.eos_token_id  # T5 inputs end with </s>
        expected = hf.generate(torch.tensor([ids]), max_new_tokens=10, do_sample=False)[0]
        assert expected[0] == model.config.decoder_start_token_id
        assert output == tok.decode(expected.tolist())
        assert output == lmforge.generate(model, tok, text, max_new_tokens=10, temperature=0)


def test_stream_equals_full_and_stop_strings_cut(text_model):
    _, model, tok = text_model
    text = "translate English to German: the cat sits on the mat."
    options = {"max_new_tokens": 16, "temperature": 0}
    full = lmforge.generate(model, tok, text, **options)
    assert len(full) > 4
    assert "".join(lmforge.generate(model, tok, text, stream=True, **options)) == full
    stop = full[3:5]
    cut = lmforge.generate(model, tok, text, stop=[stop], **options)
    assert cut == full[: full.index(stop)]
    assert "".join(lmforge.generate(model, tok, text, stream=True, stop=[stop], **options)) == cut


def test_seeded_sampling_is_reproducible(text_model):
    _, model, tok = text_model
    text = "summarize: studies have shown that owning a dog is good for you."
    options = {
        "max_new_tokens": 12,
        "temperature": 1.5,
        "top_k": 20,
        "top_p": 0.95,
        "repetition_penalty": 1.2,
    }
    first = lmforge.generate(model, tok, [text, text], seed=7, **options)
    assert lmforge.generate(model, tok, [text, text], seed=7, **options) == first
    others = {lmforge.generate(model, tok, text, seed=seed, **options) for seed in range(8)}
    assert len(others) > 1  # sampling, not greedy
