"""The chat page (lmforge/serve/static/chat.html) in headless Chromium against a real `lmforge serve`
subprocess on a tiny random chat model: a streamed reply grows frame by frame and equals the server's
non-streamed reply; Stop ends a reply (no more text arrives, /health shows the slot freed) and the partial
reply stays in the conversation; a refused request (401 wrong key, 400 prompt past the context) shows the
server's own message. The browser is Debian's chromium driven by Playwright, never a downloaded one
(.ci/run installs it). A screenshot is written to $LMFORGE_TEST_ARTIFACTS (build/test-artifacts)."""

import base64
import itertools
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
from conftest import make_hf_llama
from playwright.sync_api import sync_playwright

import lmforge
from lmforge.tokenizers.chat import ensure_chat_template

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
KEY = "chat-page-test-key"
CONTEXT = 8192  # room for a reply far longer than the test waits for, so Stop always has a stream to stop
VIEWPORT = {"width": 1000, "height": 720}
REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.access(CHROMIUM, os.X_OK),
        reason=f"no {CHROMIUM}: the chat page test drives Debian's chromium (apt-get install chromium)",
    ),
]


def endless_chat_model(path: Path, tok) -> Path:
    """A tiny random Llama with a copy of `tok` and its chat template, whose EOS and special tokens are
    never the greedy choice: their output rows are zero, so their logit 0 is below the largest of ~400
    random logits at every step. A greedy reply then runs to max_tokens and has text in every token."""
    tok.save_pretrained(path)
    copy = lmforge.load_tokenizer(path)
    ensure_chat_template(copy)
    copy.save_pretrained(path)
    model = make_hf_llama(path, vocab_size=copy.vocab_size, max_position_embeddings=CONTEXT)
    never = {*copy.all_special_ids, model.config.eos_token_id, model.config.bos_token_id}
    with torch.no_grad():
        model.lm_head.weight[sorted(never)] = 0.0
    model.save_pretrained(path)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_healthy(proc: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"lmforge serve exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(url + "/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    pytest.fail(f"lmforge serve did not answer /health:\n{log.read_text()}")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, bpe):
    return endless_chat_model(tmp_path_factory.mktemp("chat-page-model"), bpe)


@pytest.fixture(scope="module")
def server(tmp_path_factory, model_dir):
    """The URL of `lmforge serve --api-key KEY` on the endless model, a real subprocess."""
    folder = tmp_path_factory.mktemp("chat-page-server")
    url, log = f"http://127.0.0.1:{free_port()}", folder / "server.log"
    command = [sys.executable, "-m", "lmforge", "serve", "--model", str(model_dir)]
    command += ["--port", url.rsplit(":", 1)[1], "--api-key", KEY, "--max-batch", "2"]
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until_healthy(proc, url, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    """A fresh page (its own localStorage); fails the test on any uncaught error in the page's script."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(120_000)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield page
    context.close()
    assert not errors, errors


def auth(key=KEY) -> dict:
    return {"Authorization": f"Bearer {key}"}


def model_id(url: str) -> str:
    return httpx.get(url + "/v1/models", headers=auth(), timeout=30).json()["data"][0]["id"]


def open_chat(page, url: str, key: str = KEY) -> None:
    """The page at GET /, the key typed into its field (Enter applies it), the model's name loaded."""
    page.goto(url + "/")
    page.fill("#api-key", key)
    page.press("#api-key", "Enter")
    if key == KEY:
        page.wait_for_function(
            "t => document.querySelector('#model').textContent === t", arg=f"model: {model_id(url)}"
        )


def settings(page, temperature: str, max_tokens: str) -> None:
    page.fill("#temperature", temperature)
    page.fill("#max-tokens", max_tokens)


def send(page, text: str) -> dict:
    """Types `text`, presses Enter; returns the JSON body the page posted."""
    page.fill("#prompt", text)
    with page.expect_request("**/v1/chat/completions") as request:
        page.press("#prompt", "Enter")
    assert request.value.headers["authorization"] == f"Bearer {page.input_value('#api-key')}"
    return request.value.post_data_json


LAST_REPLY = "[...document.querySelectorAll('#messages .message.assistant')].pop()"
RECORD_RENDERS = f"""() => {{
    window.renders = [];
    new MutationObserver(() => window.renders.push({LAST_REPLY}.querySelector('.content').textContent))
        .observe(document.querySelector('#messages'), {{subtree: true, childList: true, characterData: true}});
}}"""


def last_reply(page) -> tuple[str, str]:
    """The newest reply's state (waiting, streaming, done, stopped, failed) and text."""
    return tuple(
        page.evaluate(
            f"() => {{ const r = {LAST_REPLY}; return [r.dataset.state, r.querySelector('.content').textContent]; }}"
        )
    )


def test_a_streamed_reply_grows_and_equals_the_servers_reply(page, server):
    open_chat(page, server)
    # NOTE: long enough to span many displayed frames: the page draws at most once a frame, and a tiny
    # model's 200 tokens can all arrive within two of them.
    settings(page, "0", "1500")
    page.evaluate(RECORD_RENDERS)
    body = send(page, "What is the capital of France?")
    assert body["stream"] is True and body["temperature"] == 0 and body["max_tokens"] == 1500
    assert body["model"] == model_id(server)
    assert body["messages"] == [{"role": "user", "content": "What is the capital of France?"}]
    page.wait_for_selector("#messages .assistant[data-state=done]")
    _, reply = last_reply(page)
    renders = [r for r in page.evaluate("window.renders") if r]
    # The text arrived over several frames, each render a longer prefix of the next, ending at the reply.
    assert len(set(renders)) >= 10 and renders[-1] == reply
    assert all(b.startswith(a) for a, b in itertools.pairwise(renders))
    whole = httpx.post(
        server + "/v1/chat/completions", json={**body, "stream": False}, headers=auth(), timeout=120
    )
    assert reply == whole.json()["choices"][0]["message"]["content"] != ""
    assert "finish_reason: length" in page.text_content("#status")
    assert page.is_hidden("#error")


def health(url: str) -> dict:
    return httpx.get(url + "/health", timeout=30).json()


def test_stop_ends_the_reply_and_frees_the_slot(page, server):
    open_chat(page, server)
    settings(page, "0", str(CONTEXT - 100))
    send(page, "Tell me everything")
    page.wait_for_function(
        f"() => {LAST_REPLY}.dataset.state === 'streaming' && {LAST_REPLY}.querySelector('.content').textContent.length > 40"
    )
    assert health(server)["busy"] == 1
    text_at_stop = page.evaluate(
        f"() => {{ document.querySelector('#stop').click(); return {LAST_REPLY}.querySelector('.content').textContent; }}"
    )
    deadline = time.monotonic() + 60
    while health(server)["busy"] and time.monotonic() < deadline:
        time.sleep(0.05)
    freed = health(server)
    assert freed["busy"] == 0 and freed["queue"] == 0
    page.wait_for_timeout(500)  # any frame still on its way would land here, and must not be shown
    assert last_reply(page) == ("stopped", text_at_stop)
    assert page.text_content("#messages .assistant .note") == "stopped"
    assert page.is_enabled("#send") and page.is_disabled("#stop") and page.is_hidden("#error")
    # The partial reply stays in the conversation the next request sends.
    settings(page, "0", "8")
    body = send(page, "go on")
    assert body["messages"] == [
        {"role": "user", "content": "Tell me everything"},
        {"role": "assistant", "content": text_at_stop},
        {"role": "user", "content": "go on"},
    ]
    page.wait_for_selector("#messages .assistant[data-state=done]")
    write_screenshot(page)


def write_screenshot(page) -> None:
    """The page as it is, to the artifacts folder: a PNG of the viewport's size, not one flat colour."""
    folder = Path(os.environ.get("LMFORGE_TEST_ARTIFACTS", REPO / "build" / "test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "chat-page.png"
    path.unlink(missing_ok=True)
    page.screenshot(path=str(path))
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == (VIEWPORT["width"], VIEWPORT["height"])
    # Chromium decodes the file again and counts its colours: text, buttons and bubbles, not a blank page.
    width, height, colours, commonest = page.evaluate(
        """async (b64) => {
            const img = new Image(); img.src = 'data:image/png;base64,' + b64; await img.decode();
            const canvas = document.createElement('canvas');
            canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
            const g = canvas.getContext('2d'); g.drawImage(img, 0, 0);
            const px = g.getImageData(0, 0, canvas.width, canvas.height).data, counts = new Map();
            for (let i = 0; i < px.length; i += 4) {
                const rgb = (px[i] << 16) | (px[i + 1] << 8) | px[i + 2];
                counts.set(rgb, (counts.get(rgb) || 0) + 1);
            }
            let most = 0; for (const n of counts.values()) most = Math.max(most, n);
            return [canvas.width, canvas.height, counts.size, most / (px.length / 4)];
        }""",
        base64.b64encode(data).decode(),
    )
    assert (width, height) == (VIEWPORT["width"], VIEWPORT["height"])
    assert colours > 20 and commonest < 0.95


def test_a_wrong_key_shows_the_servers_401_message(page, server):
    open_chat(page, server, key="not-the-key")
    refused = httpx.get(server + "/v1/models", headers=auth("not-the-key"), timeout=30)
    assert refused.status_code == 401
    page.wait_for_function("() => !document.querySelector('#error').hidden")
    assert page.text_content("#model") == "model: unavailable"
    assert f"Error 401: {refused.json()['error']['message']}" in page.text_content("#error")
    body = send(page, "hello")
    page.wait_for_function("() => document.querySelector('#send').disabled === false")
    refused = httpx.post(server + "/v1/chat/completions", json=body, headers=auth("not-the-key"), timeout=30)
    assert refused.status_code == 401
    assert f"Error 401: {refused.json()['error']['message']}" in page.text_content("#error")
    # Nothing came back: the message is taken back into the field, the conversation is unchanged.
    assert page.input_value("#prompt") == "hello"
    assert page.locator("#messages .message").count() == 0


def test_a_prompt_past_the_context_shows_the_servers_400_message(page, server, model_dir):
    long_prompt = "the house is wonderful " * 1000
    assert len(lmforge.load_tokenizer(model_dir).encode(long_prompt)) > CONTEXT
    open_chat(page, server)
    settings(page, "0", "16")
    body = send(page, long_prompt)
    page.wait_for_selector("#error:not([hidden])")
    refused = httpx.post(server + "/v1/chat/completions", json=body, headers=auth(), timeout=60)
    assert refused.status_code == 400
    message = refused.json()["error"]["message"]
    assert page.text_content("#error") == f"Error 400: {message}"
    assert page.locator("#messages .message").count() == 0 and page.input_value("#prompt") == long_prompt
    # The server is still there, and the page still talks to it.
    send(page, "hello")
    page.wait_for_selector("#messages .assistant[data-state=done]")
    assert page.is_hidden("#error")


def test_the_api_key_is_remembered_in_the_browser(page, server):
    open_chat(page, server)
    page.reload()
    assert page.input_value("#api-key") == KEY
    page.wait_for_function(
        "t => document.querySelector('#model').textContent === t", arg=f"model: {model_id(server)}"
    )
    assert page.is_hidden("#error")
