"""A multi-turn chat with a model, under its chat template: the conversation kept within the context.

`ChatSession` holds the messages (an optional system message, then user and assistant turns). Each
reply is generated from the whole conversation, encoded by `lmforge.tokenizers.chat.encode_chat`, so
the user's text can never become a control token. When the conversation no longer fits the model's
context with room for a reply, the oldest turns are dropped (whole user + assistant pairs; the system
message stays) and `dropped` says how many. `lmforge chat` is the terminal loop around it.
"""

from __future__ import annotations

from collections.abc import Iterator

from lmforge.errors import LmforgeError
from lmforge.inference.generate import GenerationConfig, generate_from_ids
from lmforge.tokenizers.chat import encode_chat

# A chat's defaults, below the model's own generation_config.json: long replies, and the low temperature
# small chat models are published with (a sampled reply reads better than a greedy one's loops).
CHAT_DEFAULTS = {"max_new_tokens": 512, "temperature": 0.2, "top_p": 0.9}
CHAT_HELP = {
    "max_new_tokens": "tokens per reply at most (default: 512)",
    "temperature": "0 means greedy (default: the model's generation_config.json, else 0.2)",
    "top_p": "sample among the most likely tokens holding probability p (default: the model's, else 0.9)",
}


class ChatSession:
    """A conversation with `model`; `reply(text)` streams the answer and records both turns."""

    def __init__(self, model, tok, config: GenerationConfig, *, system: str | None = None):
        if tok.chat_template is None:
            raise LmforgeError(
                "this model's tokenizer has no chat template, so a chat cannot be written; use a chat "
                "(instruction-tuned) model, or fine-tune one with --task instruct (which saves a template)"
            )
        self.model, self.tok, self.config = model, tok, config
        self.system = system
        self.turns: list[dict[str, str]] = []  # user and assistant messages, alternating
        self.dropped = 0  # turns dropped (in total) to fit the context

    def reset(self) -> None:
        """Forget the conversation (the system message stays)."""
        self.turns, self.dropped = [], 0

    def messages(self) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.turns

    def prompt_ids(self) -> list[int]:
        """The conversation's ids with the generation prompt, dropping the oldest turns until it leaves
        room for a reply of max_new_tokens (or half the context, if that is less)."""
        context = self.model.config.max_seq_len
        room = min(self.config.max_new_tokens, context // 2)
        while True:
            ids = encode_chat(self.tok, self.messages(), add_generation_prompt=True)
            if len(ids) + room <= context:
                return ids
            if len(self.turns) <= 1:  # only the new message is left, and it does not fit
                raise LmforgeError(
                    f"the message is {len(ids)} tokens with the chat's scaffolding, too long for this "
                    f"model's context of {context} with room for a reply; send a shorter one"
                )
            del self.turns[:2]  # the oldest user message and its reply
            self.dropped += 2

    def reply(self, text: str) -> Iterator[str]:
        """The reply to the user's `text`, as a stream of text pieces. The conversation is fitted to the
        context now (see `dropped`); when the stream ends, or is closed early (Ctrl-C), the reply so far
        joins the conversation."""
        self.turns.append({"role": "user", "content": text})
        try:
            ids = self.prompt_ids()
        except LmforgeError:
            self.turns.pop()
            raise
        return self._stream(ids)

    def _stream(self, ids: list[int]) -> Iterator[str]:
        pieces: list[str] = []
        try:
            for piece in generate_from_ids(self.model, self.tok, [ids], self.config, stream=True):
                pieces.append(piece)
                yield piece
        finally:
            self.turns.append({"role": "assistant", "content": "".join(pieces)})


COMMANDS = "/reset (forget the conversation), /system TEXT (set the system message), /exit"


def chat_loop(session: ChatSession, read_line, out, err) -> None:
    """The terminal chat: read_line() returns the user's next line (EOFError ends the chat); replies
    stream to `out`, notes to `err`. Ctrl-C stops the current reply, not the chat."""
    context = session.model.config.max_seq_len
    while True:
        try:
            line = read_line()
        except EOFError:
            return
        except KeyboardInterrupt:  # at the prompt: say how to leave, as a shell does
            print(f"\n({COMMANDS.split(', ')[-1]} or Ctrl-D to leave)", file=err, flush=True)
            continue
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            command, _, argument = text.partition(" ")
            if command in ("/exit", "/quit"):
                return
            if command == "/reset":
                session.reset()
                print("(conversation cleared)", file=err, flush=True)
            elif command == "/system":
                session.system = argument.strip() or None
                print(f"(system message {'set' if session.system else 'removed'})", file=err, flush=True)
            else:
                print(f"(unknown command {command}; the commands: {COMMANDS})", file=err, flush=True)
            continue
        dropped = session.dropped
        try:
            pieces = session.reply(line.rstrip("\n"))
        except LmforgeError as e:
            print(f"lmforge: {e}", file=err, flush=True)
            continue
        if session.dropped > dropped:
            print(
                f"(dropped the oldest {session.dropped - dropped} messages to fit the context of {context} tokens)",
                file=err,
                flush=True,
            )
        try:
            for piece in pieces:
                print(piece, end="", file=out, flush=True)
        except KeyboardInterrupt:
            pieces.close()
            print(" [stopped]", end="", file=out, flush=True)
        print(file=out, flush=True)
