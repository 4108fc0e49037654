"""The OpenAI API's wire format: request bodies (pydantic), the error shape, response and chunk
builders, and server-sent-event framing.

Requests are validated strictly, as OpenAI's API does: a field of the wrong type ("0.7" for a number, 1
for a boolean), out of its range, NaN or unknown is a 400 naming it, in the shape every OpenAI client
parses: {"error": {"message", "type", "param", "code"}}. Fields that OpenAI has and lmforge does not
implement (penalties, logit_bias, best_of, suffix) are taken at their neutral values only, so a client
that asks for them learns that they do nothing here. `top_k` and `repetition_penalty` are extensions,
as in vLLM.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MAX_LOGPROBS = 20  # alternatives per token at most, as OpenAI
MAX_STOPS = 16  # stop strings per request
# characters per stop string: checking one costs its length squared per token (StopChecker's held-back end)
MAX_STOP_CHARS = 256
MAX_N = 128  # choices per prompt, as OpenAI
MAX_INPUTS = 2048  # prompts (or embedding inputs) per request, as OpenAI's embeddings
INT64 = 2**63
ROLES = ("system", "developer", "user", "assistant")  # developer is OpenAI's newer name for system
# A token's logprob in a response: -inf (a token the model rules out) is not JSON, so it is floored.
LOGPROB_FLOOR = -9999.0


ERROR_TYPES = {
    429: "rate_limit_error",
    500: "server_error",
    503: "server_error",
}  # else invalid_request_error


class ApiError(Exception):
    """An HTTP error in OpenAI's shape. `param` names the request field at fault."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None, headers=None
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        kind = ERROR_TYPES.get(self.status, "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def validation_error(error: ValidationError) -> ApiError:
    """The first problem pydantic found, as one readable 400: "temperature should be less than or
    equal to 2, got 5", "unrecognized request argument: foo", "messages is required"."""
    first = error.errors(include_url=False)[0]
    kind, loc, message = first["type"], first["loc"], first["msg"]
    # Union members add their type to the location ("stop.list[str].0"): leave them out.
    param = (
        ".".join(str(part) for part in loc if str(part) not in _TYPE_TAGS and "[" not in str(part)) or None
    )
    if kind == "json_invalid":
        return ApiError(400, f"the request body is not valid JSON ({message.removeprefix('Invalid JSON: ')})")
    if not loc:
        return ApiError(400, "the request body must be a JSON object")
    if kind == "extra_forbidden":
        return ApiError(400, f"unrecognized request argument: {param}", param=param)
    if kind == "missing":
        return ApiError(400, f"{param} is required", param=param)
    if kind in ("value_error", "assertion_error"):
        return ApiError(
            400, message.removeprefix("Value error, ").removeprefix("Assertion failed, "), param=param
        )
    text = message.replace("Input should be", f"{param} should be", 1)
    text = text if text.startswith(str(param)) else f"{param}: {message}"
    return ApiError(400, f"{text}, got {_short(first.get('input'))}", param=param)


_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none"}


def _short(value: Any) -> str:
    text = json.dumps(value) if value is None or isinstance(value, bool | int | float) else repr(value)
    return text if len(text) <= 60 else f"{text[:50]}... ({len(text)} characters)"


# --- requests ---


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class StreamOptions(_Body):
    include_usage: bool = False


class SamplingFields(_Body):
    """What completions and chat completions share: the model, sampling and streaming."""

    model: str | None = None  # one model is served: any name is taken (the answer names the real one)
    temperature: float | None = Field(None, ge=0, le=2)  # default: the checkpoint's, else 1
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=1)  # an extension
    repetition_penalty: float | None = Field(None, gt=0, le=100)  # an extension
    ignore_eos: bool = False  # an extension (vLLM's): generate max_tokens even past EOS
    n: int = Field(1, ge=1, le=MAX_N)
    seed: int | None = Field(None, ge=-INT64, lt=INT64)
    stop: str | list[str] | None = Field(None, validate_default=True)  # -> a list
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop):
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > MAX_STOPS or not all(0 < len(s) <= MAX_STOP_CHARS for s in stops):
            raise ValueError(
                f"stop must be up to {MAX_STOPS} strings of 1 to {MAX_STOP_CHARS} characters, got {_short(stop)}"
            )
        return stops

    @model_validator(mode="after")
    def _neutral(self):
        if self.stream_options is not None and not self.stream:
            raise ApiError(400, "stream_options is only allowed when stream is true", param="stream_options")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise ApiError(400, f"{name} is not supported (only 0); use repetition_penalty", param=name)
        if self.logit_bias:
            raise ApiError(400, "logit_bias is not supported; leave it out", param="logit_bias")
        return self

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(SamplingFields):
    """POST /v1/completions. `prompt`: a string, a list of strings, a list of token ids, or a list of
    lists of token ids (each list one prompt)."""

    prompt: Any
    max_tokens: int | None = Field(None, ge=0, lt=INT64)  # default: the rest of the context
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    best_of: int | None = Field(None, ge=1)
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, prompt):
        return _prompts(prompt)

    @model_validator(mode="after")
    def _unsupported(self):
        if self.best_of is not None and self.best_of != self.n:
            raise ApiError(400, "best_of is not supported (only equal to n)", param="best_of")
        if self.suffix:
            raise ApiError(400, "suffix (insertion) is not supported; leave it out", param="suffix")
        return self


def _prompts(prompt) -> list[str | list[int]]:
    """A request's prompts: each a string or a list of token ids."""
    what = "prompt must be a string, a list of strings, a list of token ids or a list of lists of token ids"
    if isinstance(prompt, str):
        return [prompt]
    if not isinstance(prompt, list) or not prompt:
        raise ValueError(f"{what}, got {_short(prompt)}")
    if all(_is_id(t) for t in prompt):
        return [prompt]
    if len(prompt) > MAX_INPUTS:
        raise ValueError(f"prompt holds {len(prompt)} prompts; send at most {MAX_INPUTS} per request")
    if all(isinstance(p, str) for p in prompt):
        return list(prompt)
    if all(isinstance(p, list) and p and all(_is_id(t) for t in p) for p in prompt):
        return list(prompt)
    raise ValueError(f"{what} (none of them empty), got {_short(prompt)}")


def _is_id(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class ChatMessage(BaseModel):
    """A message: its role and its content (a string or a list of text parts). Other keys a client
    sends back with an assistant message (refusal, annotations...) are left out, as the template
    reads only role and content."""

    model_config = ConfigDict(extra="ignore", strict=True)
    role: str
    content: Any = None

    @field_validator("content")
    @classmethod
    def _content(cls, content):
        if content is None or isinstance(content, str):
            return content
        is_parts = isinstance(content, list) and all(isinstance(p, dict) for p in content)
        if not is_parts or any(
            p.get("type") != "text" or not isinstance(p.get("text"), str) for p in content
        ):
            raise ValueError(
                'content must be a string or a list of text parts ({"type": "text", "text": ...}; '
                f"images and audio are not supported), got {_short(content)}"
            )
        return [p["text"] for p in content]

    @field_validator("role")
    @classmethod
    def _role(cls, role):
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {_short(role)}")
        return role

    def as_template_message(self) -> dict[str, str]:
        """{role, content} for the chat template: text parts joined by newlines, developer as system."""
        if self.content is None and self.role != "assistant":
            raise ApiError(400, f"a {self.role} message needs content", param="messages")
        content = self.content or ""
        text = content if isinstance(content, str) else "\n".join(content)
        return {"role": "system" if self.role == "developer" else self.role, "content": text}


class ChatRequest(SamplingFields):
    """POST /v1/chat/completions."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, lt=INT64)
    max_completion_tokens: int | None = Field(None, ge=1, lt=INT64)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)

    @model_validator(mode="after")
    def _limits(self):
        if self.top_logprobs is not None and not self.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs set to true", param="top_logprobs")
        both = self.max_tokens is not None and self.max_completion_tokens is not None
        if both and self.max_tokens != self.max_completion_tokens:
            raise ApiError(
                400, "max_tokens and max_completion_tokens differ; send one of them", param="max_tokens"
            )
        return self

    @property
    def token_budget(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class EmbeddingRequest(_Body):
    """POST /v1/embeddings: one text or a list of texts."""

    input: Any
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _texts(cls, texts):
        texts = [texts] if isinstance(texts, str) else texts
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"input must be a string or a non-empty list of strings, got {_short(texts)}")
        if len(texts) > MAX_INPUTS:
            raise ValueError(f"input holds {len(texts)} texts; send at most {MAX_INPUTS} per request")
        return texts


class TokenizeRequest(_Body):
    """POST /tokenize (vLLM's, which lm-eval's remote tokenizer calls): a text, or chat messages."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    return_token_strs: bool = False

    @model_validator(mode="after")
    def _one_input(self):
        if (self.prompt is None) == (self.messages is None):
            raise ApiError(400, "send either prompt or messages", param="prompt")
        return self


class DetokenizeRequest(_Body):
    model: str | None = None
    tokens: list[int]


# --- responses ---


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _logprob(value: float) -> float:
    return value if value >= LOGPROB_FLOOR else LOGPROB_FLOOR  # -inf and NaN alike


class CompletionLogprobs:
    """The completions API's logprobs of one choice, built a piece at a time: tokens, token_logprobs,
    top_logprobs ({token text: logprob}, the chosen token's included) and text_offset (where each token's
    text starts, counting the texts of the tokens before it)."""

    def __init__(self, token_text):
        self.token_text, self.offset = token_text, 0

    def add(self, tokens) -> dict:
        """The logprobs object of `tokens` (engine Tokens; a prompt's first has no logprob)."""
        out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for t in tokens:
            text = self.token_text(t.id)
            out["tokens"].append(text)
            out["text_offset"].append(self.offset)
            self.offset += len(text)
            if t.logprob is None:
                out["token_logprobs"].append(None)
                out["top_logprobs"].append(None)
                continue
            out["token_logprobs"].append(_logprob(t.logprob))
            # NOTE: keyed by text, and two ids may share one (a partial UTF-8 character decodes to
            # U+FFFD): a text keeps its largest logprob, so max(top.values()) is the position's largest and
            # `token_logprob == max(top.values())` (lm-eval's is_greedy) holds just when the token is greedy.
            top: dict[str, float] = {}
            for token_id, value in [(t.id, t.logprob), *t.top]:
                key, value = self.token_text(token_id), _logprob(value)
                top[key] = max(value, top.get(key, value))
            out["top_logprobs"].append(top)
        return out


def chat_logprobs(tokens, token_text) -> list[dict]:
    """The chat API's logprobs.content entries of `tokens`."""

    def entry(token_id: int, value: float) -> dict:
        text = token_text(token_id)
        return {"token": text, "logprob": _logprob(value), "bytes": list(text.encode())}

    return [{**entry(t.id, t.logprob), "top_logprobs": [entry(i, lp) for i, lp in t.top]} for t in tokens]


def completion_body(rid: str, created: int, model: str, choices: list[dict], use: dict | None, chunk=False):
    """A completion (or, chunk=True, one streamed piece of it)."""
    body = {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": choices}
    if not chunk or use is not None:
        body["usage"] = use
    return body


def chat_body(rid: str, created: int, model: str, choices: list[dict], use: dict | None, chunk=False):
    """A chat completion (or, chunk=True, a chat.completion.chunk)."""
    kind = "chat.completion.chunk" if chunk else "chat.completion"
    body = {"id": rid, "object": kind, "created": created, "model": model, "choices": choices}
    if not chunk or use is not None:
        body["usage"] = use
    return body


def sse(data: dict) -> bytes:
    """One server-sent event: a `data:` line and a blank line."""
    return b"data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"
