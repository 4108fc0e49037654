"""Chat templates: a conversation rendered to text, and encoded so that only the template writes control tokens.

A chat template is Jinja, as in `transformers`' `apply_chat_template` (variables messages,
add_generation_prompt, bos_token, eos_token). A tokenizer with no template gets DEFAULT_CHAT_TEMPLATE
(`ensure_chat_template`), stored on it and saved with it:

    <|system|>\\n{content}\\n<|user|>\\n{content}\\n<|assistant|>\\n{content}{eos_token}<|user|>\\n...

Special-token safety: a template writes role markers and ends of turns as special-token text
("<|im_start|>", "</s>"), so its output must be encoded with special tokens matched. Encoding the whole
text that way would also turn a user's literal "<|im_end|>" into the control token, so that any message
could end its own turn and forge the next. `encode_chat` gives the template's text its special tokens and
encodes every message's content as plain text:

1. The conversation is rendered twice: as it is, and with each content replaced by a sentinel (its index
   between two private-use characters that occur nowhere in the input), the content's leading and
   trailing whitespace kept around it so that `trim` and `.strip()` act on it the same way.
2. Putting the (stripped) contents back in place of the sentinels must give the first rendering exactly;
   the sentinels' places are then where user text lies, and the rest is text the template wrote.
3. The text is encoded whole, as `transformers` would. Only when a special token overlaps user text is it
   encoded in pieces instead: the template's pieces with special tokens, the contents as plain text.
   So an ordinary conversation gets exactly the ids of its rendered text.

A template that changes content in other ways (cuts it, say) fails step 2: its conversations are encoded
whole when no content holds special-token text, and refused with an error when one does.

Rendering is bounded (template_sandbox.py): at most RENDER_CHARS characters plus 4 per content character
and 1,000 per message, RENDER_STEPS steps plus 1,000 per message, and RENDER_SECONDS seconds; a template
past them fails with one line naming it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from lmforge.errors import LmforgeError
from lmforge.tokenizers.template_sandbox import (
    RenderBudget,
    TemplateLimitError,
    compile_template,
    render_bounded,
)
from lmforge.tokenizers.tokenizer import Tokenizer

DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] }}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% else %}{{ '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
# Render bounds: far above what real templates need (they write their input plus some markup per
# message, in a few steps per message), far below what hurts a process.
RENDER_CHARS = 1_000_000
RENDER_STEPS = 200_000
RENDER_SECONDS = 5.0
# Sentinel marks are taken from Unicode's supplementary private use area A (U+F0000...).
_MARKS = range(0xF0000, 0xF0100)


def ensure_chat_template(tokenizer: Tokenizer) -> str:
    """The tokenizer's chat template; one without gets DEFAULT_CHAT_TEMPLATE, stored on it."""
    if tokenizer.chat_template is None:
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return tokenizer.chat_template


def render_chat(
    tokenizer: Tokenizer, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool
) -> str:
    """The text of a conversation under the tokenizer's chat template (the default when it has none)."""
    template = _compile(ensure_chat_template(tokenizer))
    variables = {
        "messages": list(messages),
        "add_generation_prompt": add_generation_prompt,
        "bos_token": tokenizer.bos_token or "",
        "eos_token": tokenizer.eos_token or "",
    }
    try:
        return render_bounded(template, variables, _budget(messages))
    except TemplateLimitError as e:
        raise LmforgeError(
            f"the chat template is too costly: it {e} for this conversation; fix the tokenizer's chat_template"
        ) from None
    except Exception as e:  # a template's raise_exception(), or any Jinja runtime error
        raise LmforgeError(f"the chat template cannot render this conversation: {_one_line(e)}") from None


def encode_chat(
    tokenizer: Tokenizer, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool
) -> list[int]:
    """Token ids of a conversation under the tokenizer's chat template (the default when it has none).

    Special tokens come from the template alone: a message's content (user, system or assistant) that
    spells one ("<|im_end|>", the eos text) is encoded as plain text. No post-processor: a template that
    wants a bos writes it. Messages are {"role", "content"} (other keys are left out).
    """
    rendering = _locate(tokenizer, _checked(tokenizer, messages), add_generation_prompt)
    return _encode(tokenizer, rendering, 0, len(rendering.text))


def encode_chat_turns(
    tokenizer: Tokenizer, messages: Sequence[Mapping[str, Any]]
) -> list[tuple[list[int], list[int]]]:
    """`encode_chat` cut at the replies, for a loss on replies only: for each assistant message,
    (the ids of the prompt before it, from the end of the previous reply and with the generation prompt;
    the ids of the reply as the template writes it, e.g. with its eos). Joined, they are the conversation
    up to its last reply. Each turn must render as a continuation of the previous ones."""
    messages = _checked(tokenizer, messages)
    turns: list[tuple[list[int], list[int]]] = []
    done = ""  # the text encoded so far
    for i in (i for i, m in enumerate(messages) if m["role"] == "assistant"):
        prompt = _locate(tokenizer, messages[:i], add_generation_prompt=True)
        full = _locate(tokenizer, messages[: i + 1], add_generation_prompt=False)
        if not (prompt.text.startswith(done) and full.text.startswith(prompt.text)):
            raise LmforgeError(
                "the chat template does not render each turn as a continuation of the previous ones, so "
                "prompt and reply tokens cannot be told apart; use a template that does"
            )
        prompt_ids = _encode(tokenizer, prompt, len(done), len(prompt.text))
        turns.append((prompt_ids, _encode(tokenizer, full, len(prompt.text), len(full.text))))
        done = full.text
    return turns


@dataclass(frozen=True)
class _Rendering:
    text: str
    spans: tuple[tuple[int, int], ...] | None  # [start, end) of each content in text; None: not known


def _checked(tokenizer: Tokenizer, messages: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    checked = []
    for message in messages:
        role = message.get("role") if isinstance(message, Mapping) else None
        content = message.get("content") if isinstance(message, Mapping) else None
        if not (isinstance(role, str) and isinstance(content, str)):
            raise LmforgeError(
                f"a chat message is a {{role, content}} object of two strings, got {message!r:.80}"
            )
        forged = _special_text_in(tokenizer, role)
        if forged:
            # The template writes roles as its own text: a role must not spell a control token.
            raise LmforgeError(
                f"the message role {role!r:.40} holds the special token {forged}; use a plain role"
            )
        checked.append({"role": role, "content": content})
    return checked


def _locate(tokenizer: Tokenizer, messages: list[dict[str, str]], add_generation_prompt: bool) -> _Rendering:
    """The rendered conversation and where each content lies in it (steps 1 and 2 of the docstring)."""
    text = render_chat(tokenizer, messages, add_generation_prompt=add_generation_prompt)
    mark = _free_mark(tokenizer, messages)
    cores = [m["content"].strip() or m["content"] for m in messages]  # what each sentinel stands for
    stand_ins = [
        {"role": m["role"], "content": _stand_in(tokenizer, m["content"], core, i, mark)}
        for i, (m, core) in enumerate(zip(messages, cores))
    ]
    marked = render_chat(tokenizer, stand_ins, add_generation_prompt=add_generation_prompt)
    pieces = re.split(f"{mark}([0-9]+){mark}", marked)  # template text and content indexes, alternately
    rebuilt, spans, at = [], [], 0
    for k, piece in enumerate(pieces):
        if k % 2 == 1:
            index = int(piece)
            if index >= len(messages):
                break
            content, piece = messages[index]["content"], cores[index]
            lead = content[: content.index(piece)]
            trail = content[len(lead) + len(piece) :]
            # The content's own whitespace, where the template kept it, is encoded with the content.
            start = max(at - len(lead) if pieces[k - 1].endswith(lead) else at, spans[-1][1] if spans else 0)
            end = at + len(piece) + (len(trail) if pieces[k + 1].startswith(trail) else 0)
            spans.append((start, end))
        rebuilt.append(piece)
        at += len(piece)
    if "".join(rebuilt) == text and len(rebuilt) == len(pieces):
        return _Rendering(text, tuple(spans))
    for message in messages:
        forged = _special_text_in(tokenizer, message["content"])
        if forged:
            raise LmforgeError(
                f"the chat template changes message content (it writes neither the content nor the content "
                f"trimmed), so a message holding the special token {forged} cannot be kept apart from the "
                "template's own tokens; remove that text from the message or use a template that writes content as is"
            )
    return _Rendering(text, None)  # no content spells a special token: the whole text is safe to encode


def _stand_in(tokenizer: Tokenizer, content: str, core: str, index: int, mark: str) -> str:
    """The content with its core (all but its leading and trailing whitespace) replaced by its sentinel.
    A blank content stays as it is, so that `.strip()` around it acts as on the real one; it holds no
    special token (else it is replaced whole)."""
    if not content.strip() and not _special_text_in(tokenizer, content):
        return content
    start = content.index(core)
    return f"{content[:start]}{mark}{index}{mark}{content[start + len(core) :]}"


def _free_mark(tokenizer: Tokenizer, messages: list[dict[str, str]]) -> str:
    """A private-use character found nowhere in the template or the conversation."""
    seen = "".join([tokenizer.chat_template or "", *(m["role"] + m["content"] for m in messages)])
    for code in _MARKS:
        if chr(code) not in seen:
            return chr(code)
    raise LmforgeError("the conversation uses every sentinel character lmforge could mark content with")


def _special_text_in(tokenizer: Tokenizer, text: str) -> str | None:
    """The first special token whose text occurs in `text`, quoted, or None."""
    for token_id in tokenizer.all_special_ids:
        token = tokenizer.id_to_token(token_id)
        if token and token in text:
            return repr(token)
    return None


def _encode(tokenizer: Tokenizer, rendering: _Rendering, start: int, end: int) -> list[int]:
    """Ids of rendering.text[start:end]: whole, unless a special token overlaps content (step 3)."""
    text = rendering.text[start:end]
    spans = [
        (max(a, start) - start, min(b, end) - start)
        for a, b in rendering.spans or ()
        if a < end and b > start
    ]
    whole = tokenizer.backend.encode(text, add_special_tokens=False)
    is_forged = any(
        tokenizer.is_special_id(token_id) and any(a < b_token and a_token < b for a, b in spans)
        for token_id, (a_token, b_token) in zip(whole.ids, whole.offsets)
    )
    if not is_forged:
        return list(whole.ids)
    ids: list[int] = []
    at = 0
    for a, b in spans:
        ids += tokenizer.encode(text[at:a], add_special_tokens=False, allow_special=True)
        ids += tokenizer.encode(text[a:b], add_special_tokens=False, allow_special=False)
        at = b
    return ids + tokenizer.encode(text[at:], add_special_tokens=False, allow_special=True)


def _budget(messages: Sequence[Any]) -> RenderBudget:
    chars = sum(len(m.get("content") or "") for m in messages if isinstance(m, Mapping))
    return RenderBudget(
        max_chars=RENDER_CHARS + 4 * chars + 1_000 * len(messages),
        max_steps=RENDER_STEPS + 1_000 * len(messages),
        max_seconds=RENDER_SECONDS,
    )


def _compile(source: str):
    from jinja2 import TemplateError

    try:
        return compile_template(source)
    except TemplateError as e:
        raise LmforgeError(
            f"the tokenizer's chat template is not valid Jinja ({_one_line(e)}); fix chat_template"
        ) from None


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())
