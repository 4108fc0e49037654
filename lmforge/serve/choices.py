"""From engine tokens to the text of a choice, for completions and chat alike, streamed or not.

A request's choices (prompts x n) are submitted to the engine together, all or none. Each choice's
tokens become text pieces: detokenized incrementally (a piece never ends inside a UTF-8 character) and
cut at the first stop string, whose start is held back until it cannot match and which is never
emitted; the engine request is then cancelled, so its row frees before the next step. EOS ends the
text and is not part of it. A streamed answer sends these pieces as they come and a plain one joins
them, so the two are the same text with the same logprobs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

from lmforge.errors import LmforgeError
from lmforge.inference.stop import StopChecker
from lmforge.serve.engine import EngineBusy, Request, SamplingParams, Token
from lmforge.serve.protocol import ApiError
from lmforge.tokenizers import IncrementalDecoder

RETRY_AFTER_S = 1  # what a refused client is told to wait (Retry-After), in seconds
# The engine's reasons, as the API says them; "cancelled" reaches a client only when the server stops.
FINISH_REASONS = {"stop": "stop", "length": "length", "cancelled": "abort"}


class EngineFailed(Exception):
    """The engine ended a request with an error (its log has the traceback)."""


@dataclass
class Choice:
    """One choice of an answer: its index, its engine request, and the prompt's text when it is echoed."""

    index: int
    request: Request
    echo: str | None = None


@dataclass
class Piece:
    """A piece of a choice's text and the tokens behind it (for logprobs); the last carries the
    finish_reason. An echo piece is the prompt: its tokens are the prompt's, the first unscored."""

    index: int
    text: str
    tokens: list[Token] = field(default_factory=list)
    finish_reason: str | None = None
    is_echo: bool = False


def submit(engine, jobs: list[tuple[list[int], SamplingParams]]) -> list[Request]:
    """Submit every (prompt ids, params) of an answer, or none: 429 when the engine is full, 400 when
    it refuses a prompt (the ones already submitted are cancelled)."""
    loop = asyncio.get_running_loop()
    requests: list[Request] = []
    try:
        for prompt, params in jobs:
            requests.append(engine.submit(prompt, params, loop=loop))
    except EngineBusy as e:
        cancel(requests)
        headers = {"Retry-After": str(RETRY_AFTER_S)}
        raise ApiError(429, f"the server is busy: {e}", code="rate_limit_exceeded", headers=headers) from None
    except LmforgeError as e:
        cancel(requests)
        raise ApiError(400, str(e)) from None
    return requests


def cancel(requests: Iterable[Request]) -> None:
    """Free the rows of requests (a no-op for those already finished)."""
    for request in requests:
        request.cancel()


async def pieces(
    choice: Choice, tok, stops: list[str], eos_ids: frozenset[int], every_token: bool
) -> AsyncIterator[Piece]:
    """The pieces of one choice. every_token: a piece per token (for its logprobs), even with no text."""
    request, echo = choice.request, choice.echo
    decoder, checker = IncrementalDecoder(tok), StopChecker(stops)
    pending: list[Token] = []
    try:
        async for token in request.stream():
            if echo is not None:  # the prompt's logprobs are known once its first token is
                yield Piece(choice.index, echo, request.prompt_logprobs or [], is_echo=True)
                echo = None
            pending.append(token)
            if token.id in eos_ids:
                continue  # not text; the engine ends the request after it
            text = checker.push(decoder.push(token.id))
            if checker.is_stopped:
                request.cancel()
                yield Piece(choice.index, text, pending, "stop")
                return
            if text or every_token:
                yield Piece(choice.index, text, pending)
                pending = []
        if echo is not None:  # max_tokens 0: the prompt alone
            yield Piece(choice.index, echo, request.prompt_logprobs or [], is_echo=True)
        if request.finish_reason == "error":
            raise EngineFailed("the engine failed on this request; the server's log says why")
        tail = checker.push(decoder.flush()) + checker.flush()
        reason = "stop" if checker.is_stopped else FINISH_REASONS.get(request.finish_reason, "stop")
        yield Piece(choice.index, tail, pending, reason)
    finally:
        request.cancel()  # the client left (or the answer is done): free the row now


async def merged(streams: list[AsyncIterator[Piece]]) -> AsyncIterator[Piece]:
    """The pieces of several choices, in the order they come."""
    if len(streams) == 1:
        async for piece in streams[0]:
            yield piece
        return
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(stream: AsyncIterator[Piece]) -> None:
        try:
            async for piece in stream:
                queue.put_nowait(piece)
        except Exception as error:
            queue.put_nowait(error)
        finally:
            queue.put_nowait(done)

    tasks = [asyncio.create_task(pump(stream)) for stream in streams]
    try:
        left = len(tasks)
        while left:
            item = await queue.get()
            if item is done:
                left -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
