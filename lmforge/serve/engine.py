"""The serving engine: one thread owns the model and decodes every running request together, one
token per request per step (continuous batching, Yu et al., 2022, "Orca").

Requests join and leave the running batch between decode steps. Each running request holds a row
(a slot) of one preallocated KV cache (lmforge/nn/cache.py): a new request's prompt is prefilled
on a cache of its own, a chunk at a time between decode steps (so a long prompt never stalls the
running streams for more than one chunk), then admitted into a free row; a request that ends (EOS,
its token budget, a cancel when its client disconnects) releases its row before the next step.
A decode step feeds only the rows up to the last busy one, so one request decodes as a batch of one.

Each request samples with its own settings and its own seeded generator, so its tokens do not depend
on what else runs: greedy results equal the same requests run one by one.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import torch

from lmforge.config import bounded, check_fields
from lmforge.errors import LmforgeError
from lmforge.inference.few_rows import few_rows_linear
from lmforge.inference.generate import (
    GenerationConfig,
    check_can_generate,
    eos_token_ids_of,
    new_generator,
)
from lmforge.inference.sampling import sample_next

PREFILL_CHUNK = 256  # prompt tokens prefilled between two decode steps
MAX_LOGPROBS = 20  # alternatives per position at most (the OpenAI API's own limit)


class EngineBusy(LmforgeError):
    """Every row runs and the queue is full: the client should retry later (HTTP 429)."""


@dataclass
class SamplingParams:
    """How one request generates; the fields and ranges of the OpenAI API's sampling options."""

    max_tokens: int = bounded(16, ge=0)  # new tokens at most; 0 scores the prompt only
    temperature: float = bounded(1.0, ge=0, le=100)  # 0 is greedy
    top_p: float | None = bounded(None, gt=0, le=1)
    top_k: int | None = bounded(None, ge=1)
    seed: int | None = None  # a seeded request samples the same tokens whatever else runs
    repetition_penalty: float = bounded(1.0, gt=0, le=100)
    logprobs: int | None = bounded(None, ge=0, le=MAX_LOGPROBS)  # each token's logprob and k alternatives
    prompt_logprobs: bool = False  # also the prompt's tokens (the completions API's `echo`)
    ignore_eos: bool = False

    def __post_init__(self):
        check_fields(self)

    def sampler(self) -> GenerationConfig:
        return GenerationConfig(
            max_new_tokens=self.max_tokens,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            repetition_penalty=self.repetition_penalty,
            seed=self.seed,
        )


@dataclass
class Token:
    """A token of a request: its id, its log-probability under the model (None for the first prompt
    token, which nothing predicts), and the most likely alternatives at its position."""

    id: int
    logprob: float | None = None
    top: list[tuple[int, float]] = field(default_factory=list)


_END = object()


class Request:
    """A submitted prompt: iterate its new tokens (`stream()` in asyncio, or plainly from a thread),
    then read `finish_reason` ("stop": EOS, "length": max_tokens or the context, "cancelled")."""

    def __init__(self, prompt: list[int], params: SamplingParams, loop: asyncio.AbstractEventLoop | None):
        self.prompt, self.params = prompt, params
        self.prompt_logprobs: list[Token] | None = None
        self.finish_reason: str | None = None
        self.generated: list[int] = []
        self._loop = loop
        self._queue: asyncio.Queue | queue.SimpleQueue = asyncio.Queue() if loop else queue.SimpleQueue()
        self._cancelled = False
        self._engine: Engine | None = None

    def cancel(self) -> None:
        """End the request (from any thread): its row is freed before the next decode step."""
        self._cancelled = True
        if self._engine is not None:
            self._engine._wake()

    @property
    def is_cancelled(self) -> bool:
        return self._cancelled

    async def stream(self) -> AsyncIterator[Token]:
        while (item := await self._queue.get()) is not _END:
            for token in item:
                yield token

    def __iter__(self) -> Iterator[Token]:
        while (item := self._queue.get()) is not _END:
            yield from item

    def _put(self, item) -> None:
        """Hand tokens (or the end) to the client's side, from the engine thread."""
        if self._loop is None:
            self._queue.put(item)
            return
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the client's event loop is gone: nobody reads this request any more
            self._cancelled = True


@dataclass
class _Running:
    """A request that holds a row of the cache, and what its next step needs."""

    request: Request
    row: int
    sampler: GenerationConfig
    generator: torch.Generator
    seen: torch.Tensor | None = None  # (1, V) the tokens it holds, for a repetition penalty
    last: int = 0  # the token fed at the next step
    n_new: int = 0


@dataclass
class _Prefill:
    """A request whose prompt is being prefilled, a chunk per engine step, on a cache of its own."""

    request: Request
    row: int  # the row it will take (reserved)
    cache: object
    done: int = 0  # prompt tokens prefilled so far
    logprobs: list[Token] = field(default_factory=list)


class Engine:
    """Continuous batching over `max_batch` rows of one KV cache of `context` tokens each (the
    model's max_seq_len by default); at most `max_queue` requests wait for a row."""

    def __init__(
        self,
        model,
        tok=None,
        *,
        max_batch: int = 8,
        max_queue: int = 64,
        context: int | None = None,
        prefill_chunk: int = PREFILL_CHUNK,
    ):
        check_can_generate(model)
        if max_batch < 1 or max_queue < 0 or prefill_chunk < 1:
            raise LmforgeError(
                f"max_batch must be at least 1 and max_queue at least 0, got {max_batch} and {max_queue}"
            )
        self.model, self.max_batch, self.max_queue = model, max_batch, max_queue
        self.context = min(context or model.config.max_seq_len, model.config.max_seq_len)
        self.prefill_chunk = prefill_chunk
        self.eos_token_ids = eos_token_ids_of(model, tok) if tok is not None else _model_eos(model)
        self.is_seq2seq = bool(getattr(model, "is_encoder_decoder", False))
        self._rows: list[_Running | None] = [None] * max_batch
        self._prefill: _Prefill | None = None
        self._waiting: deque[Request] = deque()
        self._lock, self._wakeup = threading.Lock(), threading.Event()
        self._cache = self._view = None
        self._thread: threading.Thread | None = None
        self._is_closed = False

    # --- the client side (any thread) ---

    def start(self) -> Engine:
        self._thread = threading.Thread(target=self._run, name="lmforge-engine", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the engine thread; requests still running or waiting end as "cancelled"."""
        self._is_closed = True
        self._wake()
        if self._thread is not None:
            self._thread.join()

    def submit(
        self, prompt: list[int], params: SamplingParams, loop: asyncio.AbstractEventLoop | None = None
    ) -> Request:
        """Queue a prompt (token ids). With `loop`, its tokens are read with `async for` in that
        event loop; without, by iterating the request from any thread."""
        self._check(prompt, params)
        request = Request(list(prompt), params, loop)
        request._engine = self
        with self._lock:
            if self._is_closed:
                raise LmforgeError("the engine is closed")
            if self._load() >= self.max_batch + self.max_queue:
                raise EngineBusy(
                    f"all {self.max_batch} slots are busy and {len(self._waiting)} requests wait "
                    f"(the queue holds {self.max_queue}); retry shortly"
                )
            self._waiting.append(request)
        self._wake()
        return request

    def health(self) -> dict:
        """The rows (slots) there are, how many run (prefilling included), how many wait."""
        return {
            "slots": self.max_batch,
            "busy": self._load() - len(self._waiting),
            "queue": len(self._waiting),
        }

    def _load(self) -> int:
        running = sum(r is not None for r in self._rows) + (self._prefill is not None)
        return running + len(self._waiting)

    def _wake(self) -> None:
        self._wakeup.set()

    def _check(self, prompt: list[int], params: SamplingParams) -> None:
        if not prompt:
            raise LmforgeError("the prompt is empty: it encodes to no tokens; send some text")
        vocab_size = self.model.config.vocab_size
        bad = next((t for t in prompt if not 0 <= t < vocab_size), None)
        if bad is not None:
            raise LmforgeError(f"token id {bad} is outside the model's vocabulary of {vocab_size}")
        if self.is_seq2seq:
            _check_seq2seq(params, len(prompt), self.context)
        elif len(prompt) + params.max_tokens > self.context:
            raise LmforgeError(
                f"the prompt's {len(prompt)} tokens plus max_tokens {params.max_tokens} exceed the "
                f"model's context of {self.context} tokens; shorten the prompt or lower max_tokens"
            )

    # --- the engine thread ---

    def _run(self) -> None:
        with torch.inference_mode():
            if not self.is_seq2seq:
                self._cache = self.model.new_cache(self.max_batch, self.context)
            while not self._is_closed:
                self._wakeup.clear()  # before looking: a wake after this is not lost
                try:
                    did_work = self._step()
                except Exception as error:  # a bug must not take the server down: fail what runs
                    self._fail_all(error)
                    did_work = True
                if not did_work:
                    self._wakeup.wait()
            self._cancel_all()

    def _step(self) -> bool:
        """One round: drop cancelled requests, a prompt chunk, then one decode step; False if idle."""
        if self.is_seq2seq:
            return self._seq2seq_request()
        self._drop_cancelled()
        did_prefill = self._prefill_chunk()
        return self._decode() or did_prefill

    def _drop_cancelled(self) -> None:
        for running in self._rows:
            if running is not None and running.request.is_cancelled:
                self._finish(running, "cancelled")
        if self._prefill is not None and self._prefill.request.is_cancelled:
            self._end(self._prefill.request, "cancelled")
            self._prefill = None
        with self._lock:
            for request in [r for r in self._waiting if r.is_cancelled]:
                self._waiting.remove(request)
                self._end(request, "cancelled")

    def _prefill_chunk(self) -> bool:
        if self._prefill is None and not self._start_prefill():
            return False
        p = self._prefill
        prompt, start = p.request.prompt, p.done
        ids = torch.tensor([prompt[start : start + self.prefill_chunk]], device=self.model.device)
        x = self.model.hidden(ids, cache=p.cache)  # (1, T, d_model)
        p.done += ids.shape[1]
        if p.request.params.prompt_logprobs:
            k = p.request.params.logprobs or 0
            logits = self.model.lm_head(x[0]).float()  # (T, V): predicts prompt[start + 1 :]
            p.logprobs += _prompt_tokens(logits, prompt, start, k)
        if p.done < len(prompt):
            return True
        self._prefill = None
        p.request.prompt_logprobs = p.logprobs or None
        self._admit(p, self.model.lm_head(x[0, -1:]).float())
        return True

    def _start_prefill(self) -> bool:
        busy = {r.row for r in self._rows if r is not None}
        row = next((i for i in range(self.max_batch) if i not in busy), None)
        with self._lock:
            if row is None or not self._waiting:
                return False
            request = self._waiting.popleft()
        cache = self.model.new_cache(1, len(request.prompt))
        first = [Token(request.prompt[0])] if request.params.prompt_logprobs else []
        self._prefill = _Prefill(request, row, cache, logprobs=first)
        return True

    def _admit(self, p: _Prefill, logits: torch.Tensor) -> None:
        """Put a prefilled prompt in its row and take its first token from `logits` (1, V)."""
        request = p.request
        if request.params.max_tokens == 0:
            self._end(request, "length")
            return
        sampler = request.params.sampler()
        running = _Running(request, p.row, sampler, new_generator(sampler.seed, self.model.device))
        if sampler.repetition_penalty != 1.0:
            running.seen = torch.zeros(
                1, self.model.config.vocab_size, dtype=torch.bool, device=logits.device
            )
            running.seen[0, torch.tensor(request.prompt, device=logits.device)] = True
        self._cache.admit(p.row, p.cache)
        self._rows[p.row], self._view = running, None
        self._advance(running, logits)

    def _decode(self) -> bool:
        """One token for every running request, as one batch of the rows up to the last busy one."""
        busy = [r for r in self._rows if r is not None]
        if not busy:
            return False
        n = busy[-1].row + 1
        if self._view is None:
            self._view = self._cache.head_rows(n)
        tokens = torch.zeros(n, 1, dtype=torch.long)
        for running in busy:
            tokens[running.row, 0] = running.last
        with few_rows_linear(n, self.model.device, self.model):
            x = self.model.hidden(tokens.to(self.model.device), cache=self._view)
            logits = self.model.lm_head(x[:, -1]).float()  # (n, V)
        for running in busy:
            self._advance(running, logits[running.row : running.row + 1])
        return True

    def _advance(self, running: _Running, logits: torch.Tensor) -> None:
        """Choose a running request's next token from its logits (1, V), hand it over, and end the
        request at EOS or its token budget."""
        params = running.request.params
        token = int(sample_next(logits, running.sampler, running.generator, seen=running.seen)[0])
        running.request._put([_scored(logits, token, params.logprobs)])
        running.request.generated.append(token)
        running.n_new += 1
        if running.seen is not None:
            running.seen[0, token] = True
        if token in self.eos_token_ids and not params.ignore_eos:
            self._finish(running, "stop")
        elif running.n_new >= params.max_tokens:
            self._finish(running, "length")
        else:
            running.last = token

    def _finish(self, running: _Running, reason: str) -> None:
        self._cache.release(running.row)
        self._rows[running.row], self._view = None, None
        self._end(running.request, reason)

    def _end(self, request: Request, reason: str) -> None:
        if request.finish_reason is None:
            request.finish_reason = reason
        request._put(_END)

    def _fail_all(self, error: Exception) -> None:
        import traceback

        traceback.print_exception(error)
        for running in self._rows:
            if running is not None:
                self._finish(running, "error")
        if self._prefill is not None:
            self._end(self._prefill.request, "error")
            self._prefill = None

    def _cancel_all(self) -> None:
        for running in self._rows:
            if running is not None:
                self._end(running.request, "cancelled")
        if self._prefill is not None:
            self._end(self._prefill.request, "cancelled")
        with self._lock:
            while self._waiting:
                self._end(self._waiting.popleft(), "cancelled")

    def _seq2seq_request(self) -> bool:
        """An encoder-decoder (T5) runs one request at a time: its cross-attention cache has no rows
        to admit into (see KVCache.admit)."""
        from lmforge.inference.generate import generate_ids

        with self._lock:
            if not self._waiting:
                return False
            request = self._waiting.popleft()
        self._prefill = _Prefill(request, 0, None)  # counts as running for health()
        sampler = request.params.sampler()
        ended: set[int] = set()
        steps = generate_ids(
            self.model, [request.prompt], sampler, eos_token_ids=self.eos_token_ids, ended_rows=ended
        )
        reason = "length"
        for step in steps:
            if request.is_cancelled:
                reason = "cancelled"
                break
            if step[0] is not None:
                request._put([Token(step[0])])
                request.generated.append(step[0])
                if step[0] in self.eos_token_ids and not request.params.ignore_eos:
                    reason = "stop"
                    break
        self._prefill = None
        self._end(request, reason)
        return True


def _scored(logits: torch.Tensor, token: int, k: int | None) -> Token:
    """The chosen token with its log-probability and the k likeliest alternatives (k None: none)."""
    if k is None:
        return Token(token)
    logprobs = logits[0].log_softmax(-1)
    top = logprobs.topk(k) if k else None
    alternatives = list(zip(top.indices.tolist(), top.values.tolist())) if k else []
    return Token(token, float(logprobs[token]), alternatives)


def _prompt_tokens(logits: torch.Tensor, prompt: list[int], start: int, k: int) -> list[Token]:
    """Tokens prompt[start + 1 : start + T + 1] scored by the logits (T, V) of the positions before."""
    targets = prompt[start + 1 : start + logits.shape[0] + 1]
    if not targets:
        return []
    logprobs = logits[: len(targets)].log_softmax(-1)  # (n, V)
    chosen = logprobs.gather(1, torch.tensor(targets, device=logits.device)[:, None])[:, 0].tolist()
    tops = logprobs.topk(k) if k else None
    return [
        Token(t, lp, list(zip(tops.indices[i].tolist(), tops.values[i].tolist())) if k else [])
        for i, (t, lp) in enumerate(zip(targets, chosen))
    ]


def _model_eos(model) -> frozenset[int]:
    eos = model.config.eos_token_id
    return frozenset() if eos is None else frozenset([eos] if isinstance(eos, int) else eos)


def _check_seq2seq(params: SamplingParams, n_prompt: int, context: int) -> None:
    if n_prompt > context or params.max_tokens > context:
        raise LmforgeError(
            f"the prompt's {n_prompt} tokens and max_tokens {params.max_tokens} must each fit the "
            f"model's context of {context} tokens; shorten the prompt or lower max_tokens"
        )
    if params.logprobs is not None or params.prompt_logprobs:
        raise LmforgeError("logprobs are not served for an encoder-decoder (t5) model yet; leave them out")
