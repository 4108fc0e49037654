"""The OpenAI-compatible HTTP server (FastAPI on uvicorn) on the continuous-batching engine.

Routes: POST /v1/completions, /v1/chat/completions, /v1/embeddings (an encoder's); GET /v1/models,
/health; POST /tokenize, /detokenize and GET /tokenizer_info (vLLM's, which lm-eval's remote tokenizer
calls); GET / the chat page (static/chat.html).

Every refusal is a JSON error in OpenAI's shape (protocol.ApiError), never FastAPI's 422: 400 for a
bad field or a prompt that does not fit, 401 without the API key, 404/405, 413 for a body past
MAX_BODY_BYTES (counted while it is read), 431 for headers past MAX_HEADER_BYTES, 429 with Retry-After when the engine is full, 500 for a bug.
A request never outlives its client: a disconnect cancels its engine requests, freeing their rows.

NOTE: a completions prompt given as text is encoded as text, as `lmforge generate` does: a special
token's spelling in it stays text (send token ids for control tokens). /tokenize matches special tokens,
as Hugging Face tokenizers and vLLM do: lm-eval's remote tokenizer finds the EOS id by tokenizing its text.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import socket
import time
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.background import BackgroundTask
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from lmforge.errors import LmforgeError
from lmforge.serve.answers import Answer, ChatAnswer
from lmforge.serve.choices import Choice, EngineFailed, cancel, merged, pieces, submit
from lmforge.serve.config import ServeConfig
from lmforge.serve.protocol import (
    ApiError,
    ChatRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    TokenizeRequest,
    validation_error,
)
from lmforge.serve.server import Server

MAX_BODY_BYTES = 8 * 2**20  # a request body past this is a 413
MAX_HEADER_BYTES = 32 * 2**10  # request headers at most: a 431 past it
OPEN_PATHS = ("/health", "/")  # no API key: the health check, and the chat page (its calls carry the key)
CHAT_PAGE = Path(__file__).parent / "static" / "chat.html"


router = APIRouter()


def _server(request: Request) -> Server:
    return request.app.state.server


async def read_body(request: Request, model):
    """The request body as `model`: 413 past MAX_BODY_BYTES (by Content-Length, then as it arrives)."""
    too_large = ApiError(
        413, f"the request body is larger than {MAX_BODY_BYTES} bytes", code="request_too_large"
    )
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_BODY_BYTES:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_large
        chunks.append(chunk)
    try:
        return model.model_validate_json(b"".join(chunks))
    except ValidationError as e:
        raise validation_error(e) from None


async def _disconnected(request: Request) -> None:
    """Returns when the client is gone (the body was read: the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def answer(request: Request, body, requests, reply: Answer, stream) -> Response:
    """Stream `reply` as events, or wait for it whole; either way a client that leaves cancels `requests`."""
    if body.stream:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        events = reply.events(stream)
        done = BackgroundTask(cancel, requests)  # runs when the stream ends or its client leaves
        return StreamingResponse(events, media_type="text/event-stream", headers=headers, background=done)
    work = asyncio.ensure_future(reply.full(stream))
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not work.done():  # the client left (or the server stops): free the rows now
            work.cancel()
            cancel(requests)
    if work.cancelled():
        return Response(status_code=499)
    return JSONResponse(work.result())


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    server = _server(request)
    body = await read_body(request, CompletionRequest)
    server.require_engine()
    # NOTE: tokenizing (and rendering a chat template) off the event loop: a long prompt must not stall the streams.
    prompts = await asyncio.to_thread(lambda: [server.prompt_ids(p, i) for i, p in enumerate(body.prompt)])
    wants_logprobs = body.logprobs is not None
    jobs = []
    for ids in prompts:
        max_tokens = server.budget(len(ids), body.max_tokens, "prompt", "prompt")
        for i in range(body.n):
            params = server.sampling(
                body, max_tokens, i, logprobs=body.logprobs, prompt_logprobs=body.echo and wants_logprobs
            )
            jobs.append((ids, params))
    server.check_count(len(jobs))
    requests = submit(server.engine, jobs)
    echoes = [
        p if isinstance(p, str) else server.tok.decode(p, skip_special_tokens=False) for p in body.prompt
    ]
    reply = Answer(
        server.name, sum(map(len, prompts)), len(jobs), token_text=server.token_text, eos_ids=server.eos_ids,
        logprobs=wants_logprobs, include_usage=body.include_usage,
    )  # fmt: skip
    streams = [
        pieces(
            Choice(k, req, echoes[k // body.n] if body.echo else None),
            server.tok, body.stop, server.eos_ids, every_token=wants_logprobs,
        )
        for k, req in enumerate(requests)
    ]  # fmt: skip
    return await answer(request, body, requests, reply, merged(streams))


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    server = _server(request)
    body = await read_body(request, ChatRequest)
    server.require_engine()
    ids = await asyncio.to_thread(server.encode_chat, body.messages)
    max_tokens = server.budget(len(ids), body.token_budget, "conversation", "messages")
    top = body.top_logprobs or 0 if body.logprobs else None
    jobs = [(ids, server.sampling(body, max_tokens, i, logprobs=top)) for i in range(body.n)]
    server.check_count(len(jobs))
    requests = submit(server.engine, jobs)
    reply = ChatAnswer(
        server.name, len(ids), len(jobs), token_text=server.token_text, eos_ids=server.eos_ids,
        logprobs=body.logprobs, include_usage=body.include_usage,
    )  # fmt: skip
    streams = [
        pieces(Choice(k, req), server.tok, body.stop, server.eos_ids, every_token=body.logprobs)
        for k, req in enumerate(requests)
    ]
    return await answer(request, body, requests, reply, merged(streams))


@router.post("/v1/embeddings")
async def embeddings(request: Request) -> dict:
    server = _server(request)
    body = await read_body(request, EmbeddingRequest)
    from lmforge.inference.embed import check_encoder, embed

    try:
        check_encoder(server.model)
    except LmforgeError as e:
        raise ApiError(400, f"{server.name} cannot embed: {e}", param="model") from None
    d_model = server.model.config.d_model
    if body.dimensions not in (None, d_model):
        raise ApiError(400, f"dimensions must be {d_model}, this model's (or left out)", param="dimensions")
    server.embedding += 1
    try:
        # NOTE: one batch at a time, off the event loop: the model is not shared between threads.
        async with request.app.state.embed_lock:
            vectors = await asyncio.to_thread(embed, server.model, server.tok, body.input, truncate=False)
    except LmforgeError as e:
        raise ApiError(400, str(e), param="input") from None
    finally:
        server.embedding -= 1
    n_tokens = sum(len(ids) for ids in server.tok.encode_batch(body.input))
    data = [
        {"object": "embedding", "index": i, "embedding": _encoded(vector, body.encoding_format)}
        for i, vector in enumerate(vectors)
    ]
    use = {"prompt_tokens": n_tokens, "total_tokens": n_tokens}
    return {"object": "list", "data": data, "model": server.name, "usage": use}


def _encoded(vector, encoding_format: str):
    """A float32 vector as a list of numbers, or as base64 of its little-endian bytes (the openai
    SDK asks for base64 by default)."""
    if encoding_format == "float":
        return vector.tolist()
    import base64

    return base64.b64encode(vector.numpy().astype("<f4").tobytes()).decode("ascii")


@router.get("/v1/models")
async def models(request: Request) -> dict:
    server = _server(request)
    card = {
        "id": server.name,
        "object": "model",
        "created": request.app.state.started,
        "owned_by": "lmforge",
        "max_model_len": server.context,
    }
    return {"object": "list", "data": [card]}


@router.get("/health")
async def health(request: Request) -> dict:
    return _server(request).health()


@router.post("/tokenize")
async def tokenize(request: Request) -> dict:
    server = _server(request)
    body = await read_body(request, TokenizeRequest)
    if body.messages is not None:
        ids = await asyncio.to_thread(server.encode_chat, body.messages, body.add_generation_prompt)
    else:
        encode = functools.partial(
            server.tok.encode, add_special_tokens=body.add_special_tokens, allow_special=True
        )
        ids = await asyncio.to_thread(encode, body.prompt)
    out = {"count": len(ids), "max_model_len": server.context, "tokens": ids}
    if body.return_token_strs:
        out["token_strs"] = [server.tok.id_to_token(i) for i in ids]
    return out


@router.post("/detokenize")
async def detokenize(request: Request) -> dict:
    server = _server(request)
    body = await read_body(request, DetokenizeRequest)
    vocab_size = server.tok.vocab_size
    bad = next((t for t in body.tokens if not 0 <= t < vocab_size), None)
    if bad is not None:
        raise ApiError(400, f"token id {bad} is outside the vocabulary of {vocab_size}", param="tokens")
    return {"prompt": server.tok.decode(body.tokens, skip_special_tokens=False)}


@router.get("/tokenizer_info")
async def tokenizer_info(request: Request) -> dict:
    server = _server(request)
    tok = server.tok
    return {
        "tokenizer_class": type(tok).__name__,
        "bos_token": tok.bos_token,
        "eos_token": tok.eos_token,
        "pad_token": tok.pad_token,
        "unk_token": tok.unk_token,
        "chat_template": tok.chat_template,
        "model_max_length": server.context,
        "vocab_size": tok.vocab_size,
    }


@router.get("/")
async def chat_page() -> Response:
    if not CHAT_PAGE.is_file():
        raise ApiError(404, "this install has no chat page (lmforge/serve/static/chat.html)")
    return FileResponse(CHAT_PAGE, media_type="text/html; charset=utf-8")


class RequestGate:
    """ASGI middleware, before any route reads the body: headers past MAX_HEADER_BYTES are a 431; with
    a key, every route but OPEN_PATHS needs `Authorization: Bearer KEY`, compared in constant time."""

    def __init__(self, app, key: str | None):
        self.app, self.key = app, key.encode() if key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        # NOTE: h11's own cap counts only a head that arrives in pieces; this one counts every head.
        if sum(len(name) + len(value) for name, value in scope["headers"]) > MAX_HEADER_BYTES:
            error = ApiError(431, f"the request headers are larger than {MAX_HEADER_BYTES} bytes")
            return await _as_response(error)(scope, receive, send)
        if self.key is None or scope["path"] in OPEN_PATHS or self._has_key(scope):
            return await self.app(scope, receive, send)
        error = ApiError(
            401, "a valid API key is required: Authorization: Bearer KEY", code="invalid_api_key"
        )
        await _as_response(error)(scope, receive, send)

    def _has_key(self, scope) -> bool:
        scheme, _, token = Headers(scope=scope).get("authorization", "").partition(" ")
        # Header values arrive as latin-1 text: back to their bytes, to compare with the key's UTF-8.
        given = token.strip().encode("latin-1", "replace")
        return scheme.lower() == "bearer" and hmac.compare_digest(given, self.key)


def _as_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


def _install_error_handlers(app: FastAPI) -> None:
    """Every error in OpenAI's shape: FastAPI's own (422, 404, 405) and any bug (500) included."""

    async def api_error(request: Request, error: ApiError):
        return _as_response(error)

    async def http_error(request: Request, error: StarletteHTTPException):
        where = f"{request.method} {request.url.path}"
        message = {404: f"no such route: {where}", 405: f"method not allowed: {where}"}
        text = message.get(error.status_code, str(error.detail))
        return _as_response(ApiError(error.status_code, text, headers=getattr(error, "headers", None)))

    async def invalid(request: Request, error: RequestValidationError):
        first = (error.errors() or [{}])[0]
        param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        return _as_response(ApiError(400, f"{param}: {first.get('msg', 'invalid request')}", param=param))

    async def refused(request: Request, error: LmforgeError):
        return _as_response(ApiError(400, str(error)))

    async def failed(request: Request, error: Exception):
        return _as_response(
            ApiError(500, f"internal error ({type(error).__name__}); the server's log says more")
        )

    async def gone(request: Request, error: ClientDisconnect):
        return Response(status_code=499)  # nobody reads it

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(LmforgeError, refused)
    app.add_exception_handler(EngineFailed, failed)
    app.add_exception_handler(ClientDisconnect, gone)
    app.add_exception_handler(Exception, failed)


def create_app(server: Server) -> FastAPI:
    """The ASGI app serving `server` (no OpenAPI pages: the API is OpenAI's)."""
    app = FastAPI(title="lmforge", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server, app.state.embed_lock = server, asyncio.Lock()
    app.state.started = int(time.time())
    app.include_router(router)
    _install_error_handlers(app)
    app.add_middleware(RequestGate, key=server.config.api_key)
    return app


def serve(model, tok, config: ServeConfig, name: str) -> None:
    """Serve `model` until interrupted: bind, start the engine (none for an encoder), print where."""
    import uvicorn

    sock = _listen(config.host, config.port)
    engine = _start_engine(model, tok, config)
    app = create_app(Server(model, tok, config, name, engine))
    settings = uvicorn.Config(
        app,
        http="h11",  # its header cap below (httptools has its own)
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        lifespan="off",
        log_level="warning",
        timeout_graceful_shutdown=5,
    )
    host, port = sock.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    what = "embeddings at /v1/embeddings" if engine is None else "OpenAI API under /v1, chat page at /"
    print(f"lmforge: serving {name} on {url} ({what})", flush=True)
    try:
        uvicorn.Server(settings).run(sockets=[sock])
    finally:
        if engine is not None:
            engine.close()


def _listen(host: str, port: int) -> socket.socket:
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        return socket.create_server((host, port), family=family, backlog=2048)
    except OSError as e:
        raise LmforgeError(
            f"cannot listen on {host}:{port} ({e.strerror or e}); pick another --host or --port"
        ) from None


def _start_engine(model, tok, config: ServeConfig):
    """The engine, started; None for an encoder, which only embeds."""
    from lmforge.inference.embed import check_encoder
    from lmforge.serve.engine import Engine

    try:
        check_encoder(model)
        return None
    except LmforgeError:
        pass
    if config.context is not None and config.context > model.config.max_seq_len:
        raise LmforgeError(
            f"--context {config.context} is more than the model's context of {model.config.max_seq_len} tokens"
        )
    engine = Engine(
        model, tok, max_batch=config.max_batch, max_queue=config.max_queue, context=config.context
    )
    return engine.start()
