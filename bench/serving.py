"""Serving: `lmforge serve` under 1, 4 and 8 concurrent streaming clients (continuous batching).

A real server subprocess on 127.0.0.1; each client is a thread streaming one /v1/completions request
(`stream: true`, the prompt as token ids, `ignore_eos` so every request decodes its full budget).
Total tokens/s counts every streamed token of every client over the wall time from the first request
to the last token; time to first token (TTFT) is each client's, the median across clients, so it
includes waiting for prefills of the others. The ratio of 8 clients to 1 is what batching buys: one
decode step serves every running request, reading the weights once.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CLIENTS = (1, 4, 8)
PROMPT_TOKENS = 32


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python -m lmforge serve` on a free port, from start until `stop()`."""

    def __init__(self, model: str, *, max_batch: int, context: int | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, "-m", "lmforge", "serve", "--model", model, "--port", str(self.port)]
        command += ["--max-batch", str(max_batch), "--dtype", "float32"]
        command += ["--context", str(context)] if context else []
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self._wait_ready()

    def _wait_ready(self, timeout: float = 180.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"lmforge serve exited: {self.process.stderr.read()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError("lmforge serve did not answer /health in time")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def stream_one(url: str, prompt: list[int], max_tokens: int) -> dict:
    """One streaming completion: its tokens (the final usage chunk's count), and the seconds to its
    first text and to its end."""
    import httpx

    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0.8, "seed": 0, "stream": True}
    body |= {"ignore_eos": True, "stream_options": {"include_usage": True}}
    start, first, tokens = time.perf_counter(), None, 0
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=600.0) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if first is None and any(c.get("text") for c in chunk.get("choices") or []):
                first = time.perf_counter() - start
    return {"tokens": tokens, "ttft_s": first, "end_s": time.perf_counter() - start}


def load_round(url: str, clients: int, prompts: list[list[int]], max_tokens: int) -> dict:
    """`clients` concurrent streams started together; total tokens/s and the median TTFT."""
    results: list[dict] = []

    def client(i: int) -> None:
        results.append(stream_one(url, prompts[i % len(prompts)], max_tokens))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    tokens = sum(r["tokens"] for r in results)
    return {
        "tokens_per_s": tokens / wall,
        "ttft_ms": 1000 * statistics.median(r["ttft_s"] for r in results),
        "tokens": tokens,
    }


def run_model(model: str, label: str, *, vocab_size: int, max_tokens: int, repeats: int, warmup: int) -> dict:
    """1, 4 and 8 clients against one server of `model`; each the median of `repeats` rounds."""
    import torch

    generator = torch.Generator().manual_seed(0)
    prompts = [
        torch.randint(10, vocab_size, (PROMPT_TOKENS,), generator=generator).tolist() for _ in range(8)
    ]
    server = Server(model, max_batch=max(CLIENTS), context=PROMPT_TOKENS + max_tokens + 8)
    try:
        for _ in range(warmup):
            load_round(server.url, max(CLIENTS), prompts, max_tokens)
        row: dict = {
            "model": label,
            "max_tokens": max_tokens,
            "prompt_tokens": PROMPT_TOKENS,
            "runs": repeats,
        }
        for clients in CLIENTS:
            rounds = [load_round(server.url, clients, prompts, max_tokens) for _ in range(repeats)]
            row[str(clients)] = {
                m: statistics.median(r[m] for r in rounds) for m in ("tokens_per_s", "ttft_ms")
            }
    finally:
        server.stop()
    row["ratio_8_to_1"] = row["8"]["tokens_per_s"] / row["1"]["tokens_per_s"]
    return row


def demo_checkpoint(folder: Path) -> Path:
    """The `demo` preset with random weights and a tokenizer of its vocabulary, saved to `folder`."""
    import torch

    from lmforge.models import build_model, get_preset
    from lmforge.tokenizers import train_tokenizer

    config = get_preset("demo")
    torch.manual_seed(0)
    build_model(config).save_pretrained(folder)
    corpus = Path(os.__file__).read_text(encoding="utf-8")  # any Python source will do
    train_tokenizer(iter([corpus]), vocab_size=config.vocab_size).save_pretrained(folder)
    return folder


def run_case(*, warmup: int, repeats: int, max_tokens: int, smollm2: bool) -> list[dict]:
    """The serving rows: the demo shape, and SmolLM2 where installed."""
    from bench.gguf import smollm2_path
    from lmforge.models import get_preset

    rows = []
    with tempfile.TemporaryDirectory(prefix="lmforge-bench-serve-") as tmp:
        demo = demo_checkpoint(Path(tmp))
        vocab = get_preset("demo").vocab_size
        rows.append(
            run_model(
                str(demo), "demo", vocab_size=vocab, max_tokens=max_tokens, repeats=repeats, warmup=warmup
            )
        )
    if smollm2 and smollm2_path() is not None:
        rows.append(
            run_model(
                "smollm2",
                "SmolLM2-135M",
                vocab_size=49152,
                max_tokens=max_tokens,
                repeats=repeats,
                warmup=warmup,
            )
        )
    return rows
