"""What the routes share (the model, its tokenizer, the engine, the settings), and the checks a
request passes before the engine sees it: prompts within the vocabulary, prompt plus max_tokens within
the context (a 400 naming both numbers, never a silent cut), the sampling settings, the chat template."""

from __future__ import annotations

import functools

from lmforge.errors import LmforgeError
from lmforge.serve.config import ServeConfig
from lmforge.serve.engine import SamplingParams
from lmforge.serve.protocol import ApiError


class Server:
    """What the routes share: the model, its tokenizer, the engine (None for an encoder) and settings."""

    def __init__(self, model, tok, config: ServeConfig, name: str, engine=None):
        from lmforge.inference.generate import eos_token_ids_of

        self.model, self.tok, self.config, self.name, self.engine = model, tok, config, name, engine
        self.is_seq2seq = bool(getattr(model, "is_encoder_decoder", False))
        self.context = engine.context if engine is not None else model.config.max_seq_len
        self.eos_ids = eos_token_ids_of(model, tok) if engine is not None else frozenset()
        self.defaults = model.sampling_defaults()
        self.token_text = functools.lru_cache(maxsize=None)(
            lambda token_id: tok.decode([token_id], skip_special_tokens=False)
        )
        self.embedding = 0  # embedding requests running or waiting (an encoder's health)

    def require_engine(self) -> None:
        if self.engine is None:
            kind = self.model.config.model_type
            raise ApiError(
                400,
                f"{self.name} is an encoder ({kind}), which cannot generate text; it serves /v1/embeddings",
            )

    def prompt_ids(self, prompt: str | list[int], index: int) -> list[int]:
        ids = self.tok.encode(prompt, add_special_tokens=True) if isinstance(prompt, str) else prompt
        if not ids:
            raise ApiError(
                400, f"prompt {index} is empty: it encodes to no tokens; send some text", param="prompt"
            )
        vocab_size = self.model.config.vocab_size
        bad = next((t for t in ids if not 0 <= t < vocab_size), None)
        if bad is not None:
            raise ApiError(
                400, f"token id {bad} is outside the model's vocabulary of {vocab_size}", param="prompt"
            )
        return ids

    def budget(self, n_prompt: int, asked: int | None, what: str, param: str) -> int:
        """max_tokens for a prompt of n_prompt tokens: as asked if it fits, else a 400 naming both
        numbers; when not asked, the rest of the context (capped by --max-tokens-limit)."""
        limit = self.config.max_tokens_limit
        if asked is not None and limit is not None and asked > limit:
            raise ApiError(
                400, f"max_tokens is {asked}, more than this server's limit of {limit}", param="max_tokens"
            )
        room = self.context if self.is_seq2seq else self.context - n_prompt
        if asked is None and room <= 0:
            raise ApiError(
                400,
                f"the {what} has {n_prompt} tokens, which fill the model's context of {self.context} tokens "
                f"and leave no room for a reply; shorten it",
                param=param,
            )
        if asked is not None and asked > room:
            raise ApiError(
                400,
                f"the {what}'s {n_prompt} tokens plus max_tokens {asked} make {n_prompt + asked}, more than "
                f"the model's context of {self.context} tokens; shorten the {what} or lower max_tokens",
                param="max_tokens",
            )
        return asked if asked is not None else min(room, limit or room)

    def sampling(self, body, max_tokens: int, index: int, **logprobs) -> SamplingParams:
        """The engine settings of choice `index` (seed + index): the request's, else the checkpoint's."""

        def pick(name: str, fallback):
            value = getattr(body, name)
            return value if value is not None else self.defaults.get(name, fallback)

        seed = None if body.seed is None else body.seed + index
        try:
            return SamplingParams(
                max_tokens=max_tokens,
                temperature=pick("temperature", 1.0),
                top_p=pick("top_p", None),
                top_k=pick("top_k", None) or None,  # a checkpoint's top_k 0 means none
                repetition_penalty=pick("repetition_penalty", 1.0),
                seed=seed,
                ignore_eos=body.ignore_eos,
                **logprobs,
            )
        except LmforgeError as e:
            raise ApiError(400, str(e)) from None

    def check_count(self, n_choices: int) -> None:
        most = self.config.max_batch + self.config.max_queue
        if n_choices > most:
            raise ApiError(
                400,
                f"the request asks for {n_choices} completions (prompts x n); this server takes at most "
                f"{most} at once ({self.config.max_batch} running, {self.config.max_queue} waiting)",
                param="n",
            )

    def encode_chat(self, messages, add_generation_prompt: bool = True) -> list[int]:
        from lmforge.tokenizers.chat import encode_chat

        if self.tok.chat_template is None:
            raise ApiError(
                400,
                "this model's tokenizer has no chat template, so it cannot chat; use /v1/completions",
                param="messages",
            )
        try:
            return encode_chat(
                self.tok,
                [m.as_template_message() for m in messages],
                add_generation_prompt=add_generation_prompt,
            )
        except LmforgeError as e:
            raise ApiError(400, str(e), param="messages") from None

    def health(self) -> dict:
        if self.engine is not None:
            return {"status": "ok", **self.engine.health()}
        return {
            "status": "ok",
            "slots": 1,
            "busy": min(self.embedding, 1),
            "queue": max(self.embedding - 1, 0),
        }
