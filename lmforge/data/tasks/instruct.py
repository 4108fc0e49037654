"""Instruction tuning data: JSON Lines in the Alpaca shape or the chat shape, rendered with a chat template.

Two shapes, told apart per line:
- Alpaca (Taori et al. 2023): {"instruction": ..., "input": ... (optional), "output": ...}; it becomes the
  conversation [user: instruction + "\n\n" + input (or the instruction alone), assistant: output].
- chat: {"messages": [{"role": "system" | "user" | "assistant", "content": ...}, ...]}, as OpenAI's and
  Hugging Face's chat formats.

A conversation is rendered and encoded by the tokenizer's chat template (lmforge/tokenizers/chat.py, whose
names DEFAULT_CHAT_TEMPLATE, ensure_chat_template and render_chat this module re-exports). A tokenizer with
no template gets the default one, stored on it, so that the fine-tuned model is saved with the template it
was trained on and `lmforge chat` renders prompts the same way. Only the template writes special tokens:
a row whose text spells "<|im_end|>" or the eos token trains on that text, never on the control token.

Labels: the loss covers the assistant's replies only (Ouyang et al. 2022): every prompt token (system, user,
the template's role markers) is labelled IGNORE_INDEX. Each reply is the text the template adds between
the prompt with its generation prompt and the conversation with the reply; it ends with the eos token
(appended when the template does not write it), so that the model learns to stop.

Length: a conversation longer than max_length keeps its first reply whole (up to half of max_length) by
cutting its prompt in the middle (`fit_prompt`: the instruction and the input's start stay, and so do the
input's last tokens with the reply header); generation at evaluation cuts prompts the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmforge.data.objectives import IGNORE_INDEX
from lmforge.data.readers import jsonl_objects
from lmforge.errors import LmforgeError
from lmforge.tokenizers import Tokenizer
from lmforge.tokenizers.chat import DEFAULT_CHAT_TEMPLATE as DEFAULT_CHAT_TEMPLATE
from lmforge.tokenizers.chat import encode_chat_turns
from lmforge.tokenizers.chat import ensure_chat_template as ensure_chat_template
from lmforge.tokenizers.chat import render_chat as render_chat

ROLES = ("system", "user", "assistant")
# Tokens kept from the end of a prompt cut to fit (`fit_prompt`): the input's last words and the reply header.
PROMPT_TAIL = 16


@dataclass(frozen=True)
class Conversation:
    messages: tuple[dict[str, str], ...]  # {"role": ..., "content": ...}
    where: str = ""  # "file:line", for error messages


def read_instructions(path: str | Path) -> list[Conversation]:
    """The conversations of a JSON Lines file of Alpaca or chat rows (see the module docstring)."""
    path = Path(path)
    conversations = [_conversation(row, where) for where, row in jsonl_objects(path)]
    if not conversations:
        raise LmforgeError(f"{path} has no examples; an instruction file needs at least one line")
    return conversations


def _conversation(row: dict, where: str) -> Conversation:
    if "messages" in row:
        return Conversation(tuple(_message(m, where) for m in _list(row["messages"], where)), where)
    if "instruction" in row and "output" in row:
        fields = {k: row.get(k, "") for k in ("instruction", "input", "output")}
        bad = [k for k, v in fields.items() if not isinstance(v, str)]
        if bad:
            raise LmforgeError(f"{where}: {', '.join(bad)} should be text")
        prompt = fields["instruction"] + ("\n\n" + fields["input"] if fields["input"] else "")
        messages = ({"role": "user", "content": prompt}, {"role": "assistant", "content": fields["output"]})
        return Conversation(messages, where)
    raise LmforgeError(
        f"{where} is neither an Alpaca row (instruction, input, output) nor a chat row (messages); "
        "give one of the two shapes"
    )


def _list(value: Any, where: str) -> list:
    if not isinstance(value, list) or not value:
        raise LmforgeError(f"{where}: 'messages' should be a non-empty list of {{role, content}} objects")
    return value


def _message(message: Any, where: str) -> dict[str, str]:
    if not isinstance(message, dict) or not isinstance(message.get("content"), str):
        raise LmforgeError(f"{where}: every message needs a text 'content' and a 'role', got {message!r}")
    if message.get("role") not in ROLES:
        raise LmforgeError(f"{where}: message role {message.get('role')!r} is not one of {', '.join(ROLES)}")
    return {"role": message["role"], "content": message["content"]}


def encode_instructions(
    tokenizer: Tokenizer, conversations: Sequence[Conversation], *, max_length: int | None = None
) -> list[dict[str, list[int]]]:
    """One feature per conversation: input_ids, attention_mask and labels (IGNORE_INDEX on prompt tokens).

    Rows are cut to max_length; a conversation with no reply token left is dropped, so the result may be
    shorter than the input (it is an error when nothing is left).
    """
    if not conversations:
        raise LmforgeError("no instruction examples to encode; the dataset is empty")
    if tokenizer.eos_token_id is None:
        raise LmforgeError("the tokenizer has no eos token, so replies cannot end; use one that has")
    features = []
    for conversation in conversations:
        input_ids, labels = encode_conversation(tokenizer, conversation)
        if max_length is not None:
            input_ids, labels = _fit(input_ids, labels, max_length)
        if any(label != IGNORE_INDEX for label in labels):
            features.append(
                {"input_ids": input_ids, "attention_mask": [1] * len(input_ids), "labels": labels}
            )
    if not features:
        raise LmforgeError(
            f"every example's prompt fills max_length {max_length}; pass a larger --max-length"
        )
    return features


def fit_prompt(ids: list[int], room: int) -> list[int]:
    """Prompt ids cut to `room` tokens by removing their middle: the start (system prompt, instruction, the
    input's beginning) and the last PROMPT_TAIL tokens (the input's end and the template's reply header)
    stay, so a long input never costs the model its instruction or the cue to answer. A room too small
    to hold both keeps the last `room` tokens."""
    if len(ids) <= room:
        return list(ids)
    if room < 2 * PROMPT_TAIL:
        return list(ids[len(ids) - room :])
    return list(ids[: room - PROMPT_TAIL]) + list(ids[len(ids) - PROMPT_TAIL :])


def _fit(input_ids: list[int], labels: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """A conversation's tokens cut to max_length. When its first reply does not fit after its prompt,
    the prompt is cut in the middle (`fit_prompt`) to leave the reply at least half of max_length;
    whatever still does not fit is cut from the end."""
    start = next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), len(labels))
    reply = next((i for i in range(start, len(labels)) if labels[i] == IGNORE_INDEX), len(labels)) - start
    room = max_length - min(reply, max_length // 2)
    if len(input_ids) > max_length and start > room and room >= 2 * PROMPT_TAIL:
        kept = fit_prompt(list(range(start)), room)  # positions of the prompt tokens that stay
        input_ids = [input_ids[i] for i in kept] + input_ids[start:]
        labels = [IGNORE_INDEX] * len(kept) + labels[start:]
    return input_ids[:max_length], labels[:max_length]


def encode_conversation(tokenizer: Tokenizer, conversation: Conversation) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one conversation: prompt segments labelled IGNORE_INDEX, replies by their ids."""
    if not any(m["role"] == "assistant" for m in conversation.messages):
        raise LmforgeError(
            f"{conversation.where} has no assistant message; there is nothing to learn from it"
        )
    try:  # messages after the last reply carry no loss, and are left out
        turns = encode_chat_turns(tokenizer, conversation.messages)
    except LmforgeError as e:
        raise LmforgeError(f"{conversation.where}: {e}" if conversation.where else str(e)) from None
    input_ids: list[int] = []
    labels: list[int] = []
    for prompt_ids, reply_ids in turns:
        if tokenizer.eos_token_id not in reply_ids:
            reply_ids = [*reply_ids, tokenizer.eos_token_id]
        input_ids += prompt_ids + reply_ids
        labels += [IGNORE_INDEX] * len(prompt_ids) + reply_ids
    return input_ids, labels
