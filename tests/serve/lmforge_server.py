"""`lmforge serve` as a real subprocess, for the server tests: started on a free port (--port 0, read
from the line it prints), ready once /health answers, stopped (SIGTERM) at the end; its log is kept in a
file, so that a failure shows it. Imported by the tests in tests/serve (not a conftest.py: a second one
would shadow tests/conftest.py for `from conftest import ...`)."""

from __future__ import annotations

import re
import select
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

START_TIMEOUT_S = 120  # importing torch and loading the model on a busy 2-core machine


@dataclass
class RunningServer:
    url: str
    proc: subprocess.Popen
    log: Path

    def client(self, api_key: str = "none", **kw) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=120, **kw)

    def async_client(self, api_key: str = "none") -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key=api_key, max_retries=0, timeout=120)

    def health(self) -> dict:
        response = httpx.get(f"{self.url}/health", timeout=30)
        assert response.status_code == 200, response.text
        return response.json()

    def wait_until(self, is_done, what: str, timeout_s: float = 30) -> dict:
        """Poll /health until is_done(health); fail (with the log) after timeout_s."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            health = self.health()
            if is_done(health):
                return health
            time.sleep(0.05)
        pytest.fail(f"/health never showed {what} (last: {health}):\n{self.log.read_text()}")


def _first_line(proc: subprocess.Popen, log: Path) -> str:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            line = proc.stdout.readline()
            if line:
                return line
            break  # stdout closed: the server exited
    proc.kill()
    pytest.fail(f"lmforge serve did not start (exit code {proc.poll()}):\n{log.read_text()}")


@contextmanager
def lmforge_serve(model_dir: Path, *flags: str, log: Path):
    """A running `lmforge serve --model model_dir *flags` on 127.0.0.1 and a free port."""
    command = [
        sys.executable,
        "-m",
        "lmforge",
        "serve",
        "--model",
        str(model_dir),
        "--port",
        "0",
        "--device",
        "cpu",
    ]
    with open(log, "w") as err:
        proc = subprocess.Popen([*command, *flags], stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        line = _first_line(proc, log)
        match = re.search(r" on (http://127\.0\.0\.1:\d+) ", line)
        assert match, line
        server = RunningServer(match.group(1), proc, log)
        server.health()
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
