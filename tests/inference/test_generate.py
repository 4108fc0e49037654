"""The generation engine on token ids: parity with transformers, KV cache equals recompute, batched
equals single, the context limit and the settings' validation; then on text: stream equals full,
stop strings, EOS."""

import itertools

import pytest
import torch
import torch.nn.functional as F
import transformers
from hypothesis import given
from hypothesis import strategies as st

from lmforge.errors import LmforgeError
from lmforge.hf.checkpoint import load_model
from lmforge.inference import (
    GenerationConfig,
    StopChecker,
    TokenBuffer,
    generate,
    generate_ids,
    next_token_logits,
)
from lmforge.models import GPT2, GPT2Config
from lmforge.tokenizers import train_tokenizer

VOCAB, MAX_SEQ_LEN = 101, 64


def hf_config(family: str):
    """Odd sizes on purpose; Llama with grouped-query attention (4 query heads, 2 key/value heads)."""
    special = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0, initializer_range=0.2)
    if family == "gpt2":
        return transformers.GPT2Config(
            vocab_size=VOCAB, n_embd=48, n_layer=2, n_head=4, n_positions=MAX_SEQ_LEN, **special
        )
    return transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=48,
        intermediate_size=72,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=MAX_SEQ_LEN,
        tie_word_embeddings=family == "llama-tied",
        **special,
    )


@pytest.fixture(scope="module", params=["gpt2", "llama", "llama-tied"])
def models(request, tmp_path_factory):
    """(transformers model, the same checkpoint loaded by lmforge)."""
    torch.manual_seed(0)
    config = hf_config(request.param)
    hf = (transformers.GPT2LMHeadModel if request.param == "gpt2" else transformers.LlamaForCausalLM)(config)
    path = tmp_path_factory.mktemp(request.param)
    hf.eval().save_pretrained(path)
    return hf, load_model(path)


def greedy(max_new_tokens=32, **kwargs) -> GenerationConfig:
    return GenerationConfig(temperature=0, max_new_tokens=max_new_tokens, **kwargs)


def rows_of(steps, n_rows: int) -> list[list[int]]:
    """Each row's generated tokens, from generate_ids' per-step lists."""
    rows = [[] for _ in range(n_rows)]
    for step in steps:
        assert len(step) == n_rows
        for row, token in enumerate(step):
            if token is not None:
                rows[row].append(token)
    return rows


def run(model, prompts, config, eos=frozenset()) -> list[list[int]]:
    return rows_of(generate_ids(model, prompts, config, eos_token_ids=eos, pad_token_id=0), len(prompts))


def hf_generate(hf, prompt: list[int], **kwargs) -> list[int]:
    ids = torch.tensor([prompt])
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=0, **kwargs)
    return out[0, len(prompt) :].tolist()


PROMPT = [5, 17, 33, 2, 64, 99]


def test_greedy_equals_transformers(models):
    hf, model = models
    expected = hf_generate(hf, PROMPT, max_new_tokens=32, eos_token_id=None)
    assert run(model, [PROMPT], greedy(32)) == [expected]


def test_greedy_stops_at_eos_like_transformers(models):
    hf, model = models
    eos = hf_generate(hf, PROMPT, max_new_tokens=32, eos_token_id=None)[5]
    expected = hf_generate(hf, PROMPT, max_new_tokens=32, eos_token_id=eos)
    assert expected[-1] == eos and len(expected) < 32
    assert run(model, [PROMPT], greedy(32), eos={eos}) == [expected]


def test_repetition_penalty_equals_transformers(models):
    hf, model = models
    expected = hf_generate(hf, PROMPT, max_new_tokens=24, eos_token_id=None, repetition_penalty=1.5)
    assert run(model, [PROMPT], greedy(24, repetition_penalty=1.5)) == [expected]


def test_kv_cache_equals_recompute(models):
    """Per-step logits of cached decoding (left-padded batch) equal one full forward pass."""
    _, model = models
    prompts, n_new = [[3, 8, 13], [7, 1, 9, 44, 12, 70, 5]], 10
    batch = TokenBuffer(prompts, 7 + n_new, pad_token_id=0, device=model.device)
    cache = model.new_cache(len(prompts), 7 + n_new)
    step_logits = []
    with torch.inference_mode():
        for _ in range(n_new):
            logits = next_token_logits(model, batch, cache)
            step_logits.append(logits)
            batch.append(logits.argmax(-1))
        full = model(batch.ids[:, : batch.length], attention_mask=batch.mask[:, : batch.length])
    for i, logits in enumerate(step_logits):
        torch.testing.assert_close(logits, full[:, 7 - 1 + i], atol=1e-4, rtol=1e-4)
    assert run(model, prompts, greedy(20)) == run(model, prompts, greedy(20, use_cache=False))


def test_batched_equals_single(models):
    """Left padding is invisible: each row of a batch gets the tokens of its prompt run alone."""
    _, model = models
    prompts = [[4, 9, 1], [60, 2, 33, 7, 7, 19, 80, 3, 11], [42], [10, 20, 30, 40, 50, 60]]
    batched = run(model, prompts, greedy(16))
    assert batched == [run(model, [p], greedy(16))[0] for p in prompts]


def test_finished_rows_yield_none(models):
    _, model = models
    prompts = [PROMPT, [50, 51]]
    alone = run(model, [PROMPT], greedy(8))[0]
    eos = alone[2]
    end = alone.index(eos)  # the first time it appears
    steps = list(generate_ids(model, prompts, greedy(8), eos_token_ids={eos}, pad_token_id=0))
    assert [step[0] for step in steps[: end + 1]] == alone[: end + 1]
    assert all(step[0] is None for step in steps[end + 1 :])
    assert rows_of(steps, 2)[1] == run(model, [[50, 51]], greedy(8), eos={eos})[0]


def test_same_seed_same_tokens(models):
    _, model = models
    config = GenerationConfig(temperature=1.0, max_new_tokens=20, seed=7)
    assert run(model, [PROMPT], config) == run(model, [PROMPT], config)
    top_k_1 = GenerationConfig(temperature=1.0, top_k=1, max_new_tokens=20, seed=7)
    assert run(model, [PROMPT], top_k_1) == run(model, [PROMPT], greedy(20))
    tiny_top_p = GenerationConfig(temperature=1.0, top_p=1e-6, max_new_tokens=20)
    assert run(model, [PROMPT], tiny_top_p) == run(model, [PROMPT], greedy(20))


def test_context_limit(models):
    _, model = models
    full_context = list(range(3, 3 + MAX_SEQ_LEN))
    assert len(run(model, [full_context], greedy(5))[0]) == 1  # the last token is never fed back
    assert len(run(model, [full_context[:60]], greedy(10))[0]) == 5
    with pytest.raises(LmforgeError, match="max_seq_len"):
        generate_ids(model, [[*full_context, 3]], greedy(5))


def test_bad_prompts_are_errors(models):
    _, model = models
    with pytest.raises(LmforgeError, match="empty prompt"):
        generate_ids(model, [PROMPT, []], greedy())
    with pytest.raises(LmforgeError, match="vocabulary"):
        generate_ids(model, [[1, VOCAB]], greedy())
    with pytest.raises(LmforgeError, match="no prompts"):
        generate_ids(model, [], greedy())


def test_zero_new_tokens(models):
    _, model = models
    assert list(generate_ids(model, [PROMPT], greedy(0))) == []


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_new_tokens", -1),
        ("max_new_tokens", 2.5),
        ("temperature", -0.5),
        ("top_k", 0),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("num_beams", 0),
        ("repetition_penalty", 0.0),
        ("stop", [""]),
    ],
)
def test_bad_settings_name_the_field(field, value):
    with pytest.raises(LmforgeError, match=field):
        GenerationConfig(**{field: value})


def test_good_settings():
    config = GenerationConfig(top_p=1.0, top_k=1, temperature=0, stop="\n")
    assert config.stop == ["\n"]


# --- text: a tiny model overfit on text with multi-byte characters, and its byte-level BPE ---

TEXT = "The café serves 你好世界 with 🙂 and 🚀 to naïve guests. "


@pytest.fixture(scope="module")
def text_model():
    """(model, tokenizer) that greedily continue TEXT; its tokens split some characters' bytes."""
    tok = train_tokenizer(iter([TEXT * 20, "日本語 🎉"]), vocab_size=280, kind="bpe")
    torch.manual_seed(0)
    model = GPT2(GPT2Config(vocab_size=tok.vocab_size, max_seq_len=128, d_model=48, n_layers=1, n_heads=4))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    ids = torch.tensor([tok.encode(TEXT * 3)])
    for _ in range(60):
        loss = F.cross_entropy(model(ids[:, :-1])[0], ids[0, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), tok


def test_text_model_splits_characters(text_model):
    """The premise of the streaming tests: some tokens hold only part of a character."""
    model, tok = text_model
    out = generate(model, tok, "The café", max_new_tokens=40, temperature=0)
    assert out.startswith(" serves 你好世界 with 🙂")
    assert any("\ufffd" in tok.decode([t]) for t in tok.encode(out))


@pytest.mark.parametrize(
    "settings", [dict(temperature=0), dict(temperature=1.0, seed=3), dict(top_p=0.9, seed=1)]
)
def test_stream_equals_full_text(text_model, settings):
    model, tok = text_model
    full = generate(model, tok, "The café", max_new_tokens=40, **settings)
    pieces = list(generate(model, tok, "The café", max_new_tokens=40, stream=True, **settings))
    assert "".join(pieces) == full
    assert all(pieces)
    if "\ufffd" not in full:
        assert not any("\ufffd" in piece for piece in pieces)


def test_batched_text_equals_single(text_model):
    model, tok = text_model
    prompts = ["The café", "你好", "with 🙂 and"]
    for stop in [[], ["世界", "and"]]:
        batched = generate(model, tok, prompts, max_new_tokens=20, temperature=0, stop=stop)
        assert batched == [
            generate(model, tok, p, max_new_tokens=20, temperature=0, stop=stop) for p in prompts
        ]


def stop_across_boundary(pieces: list[str]) -> str:
    """A stop string made of the end of one streamed piece and the start of the next."""
    full = "".join(pieces)
    for k in range(3, len(pieces) - 1):
        stop = pieces[k][-1:] + pieces[k + 1][:2]
        boundary = len("".join(pieces[: k + 1]))
        if len(pieces[k + 1]) >= 2 and full.find(stop) == boundary - 1:
            return stop
    raise AssertionError("no token boundary to put a stop string on")


@pytest.mark.parametrize("stop", ["ïv", "世界 wi", "🚀", "BOUNDARY"])
def test_stop_string_is_never_emitted(text_model, stop):
    model, tok = text_model
    kwargs = dict(max_new_tokens=60, temperature=0)
    full = generate(model, tok, "The café", **kwargs)
    if stop == "BOUNDARY":
        stop = stop_across_boundary(list(generate(model, tok, "The café", stream=True, **kwargs)))
    expected = full[: full.index(stop)]
    assert generate(model, tok, "The café", stop=[stop, "never appears"], **kwargs) == expected
    pieces = list(generate(model, tok, "The café", stop=[stop], stream=True, **kwargs))
    assert "".join(pieces) == expected


def test_stop_string_ends_generation(text_model):
    model, tok = text_model
    n_forward = []
    hook = model.norm.register_forward_hook(lambda *_: n_forward.append(1))
    try:
        out = generate(model, tok, "The café", max_new_tokens=60, temperature=0, stop=["with"])
    finally:
        hook.remove()
    assert out == " serves 你好世界 "
    assert len(n_forward) <= len(tok.encode(out + "with"))


def test_eos_ends_text_and_is_not_emitted(text_model):
    model, tok = text_model
    tokens = run(model, [tok.encode("The café")], greedy(6))[0]
    model.config.eos_token_id = tokens[3]
    try:
        out = generate(model, tok, "The café", max_new_tokens=40, temperature=0)
    finally:
        model.config.eos_token_id = None
    assert out == tok.decode(tokens[: tokens.index(tokens[3])])


def test_beam_search_text_with_stop(text_model):
    model, tok = text_model
    full = generate(model, tok, "The café", num_beams=3, max_new_tokens=30)
    assert full.startswith(" serves 你好世界")  # the memorized text is also the most probable one
    cut = generate(model, tok, ["The café", "The"], num_beams=3, max_new_tokens=30, stop=["世界"])
    assert cut[0] == full[: full.index("世界")]


def test_text_errors(text_model):
    model, tok = text_model
    with pytest.raises(LmforgeError, match="empty prompt"):
        generate(model, tok, "")
    with pytest.raises(LmforgeError, match="single prompt"):
        generate(model, tok, ["a", "b"], stream=True)
    with pytest.raises(LmforgeError, match="beam"):
        generate(model, tok, "a", num_beams=2, stream=True)
    with pytest.raises(LmforgeError, match="unknown generation option 'max_tokens'"):
        generate(model, tok, "a", max_tokens=3)
    with pytest.raises(LmforgeError, match="top_p"):
        generate(model, tok, "a", top_p=2.0)


def test_same_seed_same_text(text_model):
    model, tok = text_model
    runs = [generate(model, tok, "The", max_new_tokens=30, temperature=1.5, seed=11) for _ in range(2)]
    assert runs[0] == runs[1]


# --- stop strings on their own ---


def test_stop_checker_holds_back_a_possible_start():
    checker = StopChecker(["STOP"])
    assert checker.push("abc ST") == "abc "  # "ST" may begin "STOP"
    assert checker.push("A") == "STA"  # it did not
    assert checker.push("xS") == "x"
    assert checker.push("TO") == ""
    assert checker.push("P and more") == ""
    assert checker.is_stopped and checker.flush() == ""


def test_stop_checker_flushes_held_text_at_the_end():
    checker = StopChecker(["</s>", "\n\n"])
    assert checker.push("line\n") == "line"
    assert checker.push("</") == "\n"
    assert checker.flush() == "</"


@given(
    text=st.text(alphabet="ab\n", max_size=30),
    stop=st.text(alphabet="ab\n", min_size=1, max_size=4),
    cuts=st.lists(st.integers(0, 30), max_size=10),
)
def test_stop_checker_cuts_before_the_first_stop(text, stop, cuts):
    """However the text is split into pieces, the output is the text before the first stop string."""
    bounds = sorted({0, len(text), *(c for c in cuts if c < len(text))})
    checker = StopChecker([stop])
    out = "".join(checker.push(text[a:b]) for a, b in itertools.pairwise(bounds)) + checker.flush()
    assert out == (text[: text.index(stop)] if stop in text else text)
