"""`lmforge serve`'s limits, with the real `openai` SDK against a real subprocess: one slot and no queue
(--max-batch 1 --max-queue 0) and an API key. Without the key every route but /health is a 401; a request
past the full server is a 429 with Retry-After at once; a client that leaves, mid-stream or while it waits
for a plain answer, frees its slot (/health shows it) and the next request is taken.

The model has a context of 2**17 tokens and the held requests ask for 10**5 (ignore_eos), so they cannot
end on their own while a test waits: only a cancel frees their slot."""

import threading

import httpx
import openai
import pytest
from conftest import make_hf_llama
from lmforge_server import lmforge_serve

import lmforge

pytestmark = pytest.mark.slow  # a server process per module (about 3 s to start)

KEY = "sk-lmforge-test-key"
CONTEXT = 2**17
ENDLESS = dict(
    model="m", prompt="The sea is", max_tokens=10**5, temperature=0, extra_body={"ignore_eos": True}
)


@pytest.fixture(scope="module")
def server(tmp_path_factory, bpe):
    path = tmp_path_factory.mktemp("serve-limits") / "llama"
    bpe.save_pretrained(path)
    make_hf_llama(path, vocab_size=lmforge.load_tokenizer(path).vocab_size, max_position_embeddings=CONTEXT)
    flags = ("--max-batch", "1", "--max-queue", "0", "--api-key", KEY)
    with lmforge_serve(path, *flags, log=path.parent / "server.log") as running:
        yield running


def test_every_route_but_health_needs_the_key(server):
    for key in ("wrong", KEY[:-1], KEY + "x"):
        with pytest.raises(openai.AuthenticationError) as refused:
            server.client(api_key=key).completions.create(model="m", prompt="x", max_tokens=1)
        assert refused.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        server.client(api_key="wrong").models.list()
    for method, path in [
        ("POST", "/tokenize"),
        ("GET", "/tokenizer_info"),
        ("POST", "/v1/embeddings"),
        ("GET", "/nope"),
    ]:
        response = httpx.request(method, server.url + path, json={})
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key", path
    assert (
        httpx.get(server.url + "/tokenizer_info", headers={"Authorization": "Basic " + KEY}).status_code
        == 401
    )
    assert server.health() == {"status": "ok", "slots": 1, "busy": 0, "queue": 0}
    assert server.client(api_key=KEY).completions.create(model="m", prompt="x", max_tokens=1).choices


def test_a_full_server_refuses_at_once_and_a_client_leaving_a_stream_frees_its_slot(server):
    client = server.client(api_key=KEY)
    stream = client.completions.create(stream=True, **ENDLESS)
    assert next(iter(stream)).choices[0].finish_reason is None  # it runs, and holds the one slot
    assert server.health()["busy"] == 1
    with pytest.raises(openai.RateLimitError) as refused:
        client.completions.create(model="m", prompt="x", max_tokens=1)
    assert refused.value.response.headers["retry-after"] == "1"
    assert refused.value.body["code"] == "rate_limit_exceeded" and "busy" in refused.value.body["message"]
    stream.close()  # the client leaves mid-stream
    server.wait_until(lambda health: health["busy"] == 0, "the slot freed")
    assert client.completions.create(model="m", prompt="x", max_tokens=1).choices


def test_a_client_leaving_a_plain_request_frees_its_slot(server):
    impatient = server.client(api_key=KEY).with_options(timeout=5)
    left = []

    def ask():
        try:
            impatient.completions.create(**ENDLESS)
        except openai.APITimeoutError:
            left.append(True)

    asker = threading.Thread(target=ask)
    asker.start()
    server.wait_until(lambda health: health["busy"] == 1, "the request running")
    asker.join()
    assert left == [True]
    server.wait_until(lambda health: health["busy"] == 0, "the slot freed")
    assert server.client(api_key=KEY).completions.create(model="m", prompt="x", max_tokens=1).choices
