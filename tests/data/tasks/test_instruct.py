"""Instruction data: Alpaca and chat rows rendered with a chat template (as transformers renders it), the
default template stored with the tokenizer, and the loss on replies only: prompt positions are all
IGNORE_INDEX, reply positions equal the reply's ids (plus eos)."""

import json

import pytest
import tokenizers

from lmforge.data.tasks import (
    DEFAULT_CHAT_TEMPLATE,
    encode_conversation,
    encode_instructions,
    ensure_chat_template,
    read_instructions,
    render_chat,
)
from lmforge.errors import LmforgeError
from lmforge.tokenizers import Tokenizer, load_tokenizer, train_tokenizer
from lmforge.train.loss import IGNORE_INDEX

CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
ALPACA = [
    {
        "instruction": "Summarize the text.",
        "input": "The sea is blue and wide.",
        "output": "The sea is wide.",
    },
    {"instruction": "Write a short poem about the sea.", "output": "The waves come in with the tide."},
]
CHAT = {
    "messages": [
        {"role": "system", "content": "You are a poet."},
        {"role": "user", "content": "Write a short poem about the sea."},
        {"role": "assistant", "content": "The sea is blue and wide."},
        {"role": "user", "content": "Translate English to German: the house is wonderful."},
        {"role": "assistant", "content": "Das Haus ist wunderbar."},
    ]
}


@pytest.fixture
def fresh_bpe(bpe, tmp_path):
    """A copy of the session tokenizer, free to get a chat template."""
    bpe.save_pretrained(tmp_path / "tok")
    return load_tokenizer(tmp_path / "tok")


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [*ALPACA, CHAT]) + "\n", encoding="utf-8")
    return path


def _reply_spans(labels):
    """[(start, end)] of the runs of labelled positions."""
    spans, start = [], None
    for i, label in enumerate([*labels, IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = i
        elif label == IGNORE_INDEX and start is not None:
            spans.append((start, i))
            start = None
    return spans


def test_both_shapes_become_conversations(data_file):
    alpaca_with_input, alpaca, chat = read_instructions(data_file)
    assert alpaca_with_input.messages == (
        {"role": "user", "content": "Summarize the text.\n\nThe sea is blue and wide."},
        {"role": "assistant", "content": "The sea is wide."},
    )
    assert alpaca.messages[0]["content"] == "Write a short poem about the sea."
    assert chat.messages == tuple(CHAT["messages"]) and chat.where == f"{data_file}:3"


def test_default_template_is_stored_with_the_tokenizer_and_renders_as_transformers(fresh_bpe, tmp_path):
    from transformers import PreTrainedTokenizerFast

    assert fresh_bpe.chat_template is None
    assert ensure_chat_template(fresh_bpe) == DEFAULT_CHAT_TEMPLATE
    fresh_bpe.save_pretrained(tmp_path / "saved")
    assert load_tokenizer(tmp_path / "saved").chat_template == DEFAULT_CHAT_TEMPLATE
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tokenizers.Tokenizer.from_str(fresh_bpe.backend.to_str()), eos_token="<|endoftext|>"
    )
    for template in (DEFAULT_CHAT_TEMPLATE, CHATML):
        fresh_bpe.chat_template = template
        for n in (1, 2, 3, 5):
            for gen in (False, True):
                ours = render_chat(fresh_bpe, CHAT["messages"][:n], add_generation_prompt=gen)
                theirs = hf.apply_chat_template(
                    CHAT["messages"][:n], chat_template=template, tokenize=False, add_generation_prompt=gen
                )
                assert ours == theirs
    fresh_bpe.chat_template = DEFAULT_CHAT_TEMPLATE
    assert render_chat(fresh_bpe, CHAT["messages"][1:3], add_generation_prompt=False) == (
        "<|user|>\nWrite a short poem about the sea.\n<|assistant|>\nThe sea is blue and wide.<|endoftext|>"
    )


def test_prompt_tokens_are_masked_and_reply_tokens_are_the_reply_ids(fresh_bpe, data_file):
    conversations = read_instructions(data_file)
    features = encode_instructions(fresh_bpe, conversations)
    eos = fresh_bpe.eos_token_id
    for conversation, feature in zip(conversations, features):
        ids, labels = feature["input_ids"], feature["labels"]
        assert len(ids) == len(labels) == len(feature["attention_mask"])
        replies = [m["content"] for m in conversation.messages if m["role"] == "assistant"]
        spans = _reply_spans(labels)
        assert len(spans) == len(replies)
        for (start, end), reply in zip(spans, replies):
            # The prompt before each reply is exactly what generation would be given.
            prompt_messages = conversation.messages[
                : conversation.messages.index({"role": "assistant", "content": reply})
            ]
            prompt = render_chat(fresh_bpe, prompt_messages, add_generation_prompt=True)
            assert fresh_bpe.decode(ids[:start], skip_special_tokens=False) == prompt
            assert (
                labels[start:end]
                == ids[start:end]
                == fresh_bpe.encode(reply, add_special_tokens=False) + [eos]
            )
        masked = [i for i, label in enumerate(labels) if label == IGNORE_INDEX]
        assert len(masked) == len(labels) - sum(end - start for start, end in spans) > 0
        full = render_chat(fresh_bpe, conversation.messages, add_generation_prompt=False)
        assert fresh_bpe.decode(ids, skip_special_tokens=False) == full


def test_chatml_template_with_special_tokens(bpe):
    backend = train_tokenizer(
        iter([DEFAULT_CHAT_TEMPLATE, *(m["content"] for m in CHAT["messages"])] * 3),
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
    ).backend
    tok = Tokenizer(backend, eos_token="<|im_end|>", pad_token="<|endoftext|>", chat_template=CHATML)
    ids, labels = encode_conversation(tok, _conversation_of(CHAT))
    im_start, im_end = tok.token_to_id("<|im_start|>"), tok.token_to_id("<|im_end|>")
    assert ids.count(im_start) == 5 and ids.count(im_end) == 5  # role markers are single special tokens
    (a, b), (c, d) = _reply_spans(labels)
    # A reply is its content, the template's <|im_end|> (the eos here) and newline; the marker before it is prompt.
    newline = tok.encode("\n", add_special_tokens=False)
    first_reply = tok.encode(CHAT["messages"][2]["content"], add_special_tokens=False)
    assert labels[a:b] == ids[a:b] == [*first_reply, im_end, *newline]
    assert tok.decode(ids[c:d], skip_special_tokens=False) == "Das Haus ist wunderbar.<|im_end|>\n"
    assert tok.decode(ids[:a], skip_special_tokens=False).endswith("<|im_start|>assistant\n")


def _conversation_of(row):
    from lmforge.data.tasks.instruct import _conversation

    return _conversation(row, "inline:1")


def test_truncation_drops_conversations_without_reply_tokens(fresh_bpe, data_file):
    conversations = read_instructions(data_file)
    full = encode_instructions(fresh_bpe, conversations)
    prompt_len = min(
        labels.index(next(x for x in labels if x != IGNORE_INDEX)) for labels in (f["labels"] for f in full)
    )
    cut = encode_instructions(fresh_bpe, conversations, max_length=prompt_len + 1)
    assert 1 <= len(cut) <= len(conversations)
    assert all(len(f["input_ids"]) <= prompt_len + 1 for f in cut)
    assert all(any(x != IGNORE_INDEX for x in f["labels"]) for f in cut)
    with pytest.raises(LmforgeError, match="pass a larger --max-length"):
        encode_instructions(fresh_bpe, conversations, max_length=3)


def _one_line(call, match):
    with pytest.raises(LmforgeError, match=match) as info:
        call()
    assert "\n" not in str(info.value)


def test_errors(fresh_bpe, tmp_path):
    def rows(*lines):
        path = tmp_path / "rows.jsonl"
        path.write_text("\n".join(json.dumps(r) for r in lines) + "\n", encoding="utf-8")
        return path

    _one_line(
        lambda: read_instructions(rows({"prompt": "a", "completion": "b"})),
        "neither an Alpaca row .* nor a chat row",
    )
    _one_line(
        lambda: read_instructions(rows({"messages": [{"role": "robot", "content": "x"}]})), "role 'robot'"
    )
    _one_line(lambda: read_instructions(rows({"messages": []})), "non-empty list")
    _one_line(
        lambda: read_instructions(rows({"instruction": 1, "output": "b"})), "instruction should be text"
    )
    path = rows({"messages": [{"role": "user", "content": "hi"}]})
    _one_line(
        lambda: encode_instructions(fresh_bpe, read_instructions(path)), rf"{path}:1 has no assistant message"
    )
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    _one_line(lambda: read_instructions(tmp_path / "empty.jsonl"), "has no examples")
    fresh_bpe.chat_template = "{{ messages[-1]['content'] }}"  # renders the last turn only: no prefixes
    _one_line(
        lambda: encode_instructions(fresh_bpe, read_instructions(rows(CHAT))), "continuation of the previous"
    )
    fresh_bpe.chat_template = "{% if %}"
    _one_line(lambda: render_chat(fresh_bpe, CHAT["messages"], add_generation_prompt=True), "not valid Jinja")
    fresh_bpe.chat_template = "{{ raise_exception('only user turns') }}"
    _one_line(lambda: render_chat(fresh_bpe, CHAT["messages"], add_generation_prompt=True), "only user turns")


def test_long_prompt_is_cut_in_the_middle_and_keeps_its_reply(fresh_bpe):
    from lmforge.data.tasks.instruct import PROMPT_TAIL, _conversation, fit_prompt

    code = "\n".join(f"    value_{i} = compute_{i}(value_{i - 1})" for i in range(1, 60))
    row = {
        "instruction": "Summarize this function.",
        "input": f"def long_one():\n{code}",
        "output": "Chain many steps.",
    }
    conversation = _conversation(row, "inline:1")
    full = encode_instructions(fresh_bpe, [conversation])[0]
    reply = [x for x in full["labels"] if x != IGNORE_INDEX]
    assert len(full["input_ids"]) > 96
    (cut,) = encode_instructions(fresh_bpe, [conversation], max_length=96)
    assert len(cut["input_ids"]) == 96
    assert [x for x in cut["labels"] if x != IGNORE_INDEX] == reply  # the whole reply, eos included
    n_prompt = 96 - len(reply)
    prompt = full["input_ids"][: len(full["input_ids"]) - len(reply)]
    assert cut["input_ids"][:n_prompt] == prompt[: n_prompt - PROMPT_TAIL] + prompt[-PROMPT_TAIL:]
    text = fresh_bpe.decode(cut["input_ids"][:n_prompt], skip_special_tokens=False)
    assert "Summarize this function." in text and "def long_one" in text
    assert fit_prompt(prompt, 10) == prompt[-10:]  # too small a room for both ends: the end alone
    assert fit_prompt(prompt, len(prompt)) == prompt
