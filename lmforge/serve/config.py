"""`lmforge serve`'s settings: one dataclass whose fields are the command's flags (lmforge/config.py).

Kept apart from the server so that building the command line never imports FastAPI or uvicorn.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmforge.config import check_fields, option
from lmforge.errors import LmforgeError


@dataclass
class ServeConfig:
    """Where the server listens, who may call it, and how much it takes on at once."""

    host: str = option("127.0.0.1", "the address to listen on (0.0.0.0: every interface)")
    port: int = option(8000, "the TCP port to listen on (0: any free one, printed at start)", ge=0, le=65535)
    api_key: str | None = option(
        None,
        "require `Authorization: Bearer KEY` on every route but /health and the chat page (default: "
        "$LMFORGE_API_KEY, else no key)",
    )
    max_batch: int = option(8, "requests decoded together (rows of the KV cache)", ge=1, le=1024)
    max_queue: int = option(64, "requests waiting for a row at most; past it a request gets 429", ge=0)
    max_tokens_limit: int | None = option(
        None, "max_tokens of one request at most (default: the context left after the prompt)", ge=1
    )
    context: int | None = option(
        None, "tokens of one request, prompt and reply together (default: the model's max_seq_len)", ge=1
    )

    def __post_init__(self):
        check_fields(self)
        key = self.api_key
        if key is not None and not key:
            raise LmforgeError("--api-key is empty; pass a key, or leave the flag out to serve without one")
        # Clients send the key in an HTTP header, which holds ASCII only (the openai SDK refuses more).
        if key is not None and not (key.isascii() and key.isprintable() and " " not in key):
            raise LmforgeError(
                "--api-key must be printable ASCII without spaces: clients send it in an HTTP header"
            )
