"""An answer of the completions or chat completions API assembled from its choices' pieces: one JSON
body, or a stream of server-sent events (`data: {chunk}` frames, then `data: [DONE]`).

Both are built from the same pieces by the same code, so a streamed answer's text and logprobs are
the plain answer's, cut into chunks.
"""

from __future__ import annotations

import time
import traceback
import uuid
from collections.abc import AsyncIterator, Callable

from lmforge.serve.choices import EngineFailed, Piece
from lmforge.serve.protocol import (
    SSE_DONE,
    ApiError,
    CompletionLogprobs,
    chat_body,
    chat_logprobs,
    completion_body,
    sse,
    usage,
)


class Answer:
    """The choices of one request; `full` joins their pieces, `events` streams them."""

    PREFIX = "cmpl"

    def __init__(
        self,
        model: str,
        prompt_tokens: int,
        n_choices: int,
        *,
        token_text: Callable[[int], str],
        eos_ids: frozenset[int],
        logprobs: bool = False,
        include_usage: bool = False,
    ):
        self.id, self.created = f"{self.PREFIX}-{uuid.uuid4().hex}", int(time.time())
        self.model, self.prompt_tokens, self.n_choices = model, prompt_tokens, n_choices
        self.token_text, self.eos_ids = token_text, eos_ids
        self.logprobs, self.include_usage = logprobs, include_usage
        self.completion_tokens = 0
        self._builders = [CompletionLogprobs(token_text) for _ in range(n_choices)]  # a stream's, per choice

    def usage(self) -> dict:
        return usage(self.prompt_tokens, self.completion_tokens)

    def _count(self, piece: Piece) -> None:
        self.completion_tokens += 0 if piece.is_echo else len(piece.tokens)

    async def full(self, pieces: AsyncIterator[Piece]) -> dict:
        """The whole answer as one body (an EngineFailed is a 500)."""
        texts: list[list[str]] = [[] for _ in range(self.n_choices)]
        tokens: list[list] = [[] for _ in range(self.n_choices)]
        reasons: list[str | None] = [None] * self.n_choices
        try:
            async for piece in pieces:
                self._count(piece)
                texts[piece.index].append(piece.text)
                tokens[piece.index] += piece.tokens
                reasons[piece.index] = piece.finish_reason or reasons[piece.index]
        except EngineFailed as e:
            raise ApiError(500, str(e)) from None
        choices = [self.choice(i, "".join(texts[i]), tokens[i], reasons[i]) for i in range(self.n_choices)]
        return self.body(choices, self.usage())

    async def events(self, pieces: AsyncIterator[Piece]) -> AsyncIterator[bytes]:
        """The answer as server-sent events; an engine failure midway is an error event."""
        try:
            for opening in self.openings():
                yield sse(self.body([opening], None, chunk=True))
            async for piece in pieces:
                self._count(piece)
                yield sse(self.body([self.chunk(piece)], None, chunk=True))
            if self.include_usage:
                yield sse(self.body([], self.usage(), chunk=True))
        except EngineFailed as e:
            yield sse(ApiError(500, str(e)).body())
        except Exception as e:  # a bug: the headers are sent, so the stream says it before it ends
            traceback.print_exception(e)
            yield sse(
                ApiError(500, f"internal error ({type(e).__name__}); the server's log says more").body()
            )
        yield SSE_DONE

    def openings(self) -> list[dict]:
        return []

    def body(self, choices: list[dict], use: dict | None, chunk: bool = False) -> dict:
        return completion_body(self.id, self.created, self.model, choices, use, chunk)

    def choice(self, index: int, text: str, tokens: list, reason: str | None) -> dict:
        lp = CompletionLogprobs(self.token_text).add(tokens) if self.logprobs else None
        return {"index": index, "text": text, "logprobs": lp, "finish_reason": reason}

    def chunk(self, piece: Piece) -> dict:
        lp = self._builders[piece.index].add(piece.tokens) if self.logprobs else None
        return {
            "index": piece.index,
            "text": piece.text,
            "logprobs": lp,
            "finish_reason": piece.finish_reason,
        }


class ChatAnswer(Answer):
    """A chat completion: a message per choice, `delta` chunks when streamed (the role first)."""

    PREFIX = "chatcmpl"

    def body(self, choices: list[dict], use: dict | None, chunk: bool = False) -> dict:
        return chat_body(self.id, self.created, self.model, choices, use, chunk)

    def _logprobs(self, tokens: list) -> dict | None:
        if not self.logprobs:
            return None
        content = [t for t in tokens if t.id not in self.eos_ids]  # EOS ends the message, it is not in it
        return {"content": chat_logprobs(content, self.token_text)}

    def choice(self, index: int, text: str, tokens: list, reason: str | None) -> dict:
        message = {"role": "assistant", "content": text}
        return {
            "index": index,
            "message": message,
            "logprobs": self._logprobs(tokens),
            "finish_reason": reason,
        }

    def openings(self) -> list[dict]:
        delta = {"role": "assistant", "content": ""}
        return [
            {"index": i, "delta": delta, "logprobs": None, "finish_reason": None}
            for i in range(self.n_choices)
        ]

    def chunk(self, piece: Piece) -> dict:
        delta = {"content": piece.text} if piece.text or not piece.finish_reason else {}
        logprobs = self._logprobs(piece.tokens)
        return {
            "index": piece.index,
            "delta": delta,
            "logprobs": logprobs,
            "finish_reason": piece.finish_reason,
        }
