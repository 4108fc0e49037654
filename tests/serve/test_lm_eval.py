"""lm-eval through `lmforge serve`: its `local-completions` model scores as its own `hf` model does.

EleutherAI's lm-evaluation-harness scores a multiple-choice item by the log-likelihood of each choice
after the question. `local-completions` gets them from the server: it tokenizes through /tokenize
(tokenizer_backend=remote) and sums the echoed prompt logprobs of /v1/completions (echo, logprobs=1,
max_tokens=1); `hf` runs the same checkpoint in transformers. The task is read from local files
(tests/serve/lm_eval_task), everything offline.
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from conftest import TASK_TEXT, make_hf_llama

lm_eval = pytest.importorskip("lm_eval")

TASK_DIR = Path(__file__).parent / "lm_eval_task"
CONTEXT = 128  # the checkpoint's max_position_embeddings; lm-eval's max_length, else it assumes 2048
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, bpe):
    """A tiny random Llama and a trained BPE tokenizer in one folder both lmforge and transformers load.

    NOTE: not GPT-2: a tiny random model with its head tied to the embedding predicts its last input
    token again, and no greedy answer could start with the space lm-eval puts before every choice.
    """
    folder = tmp_path_factory.mktemp("lm_eval") / "llama"
    hf_model = make_hf_llama(folder, vocab_size=bpe.vocab_size, max_position_embeddings=CONTEXT)
    bpe.save_pretrained(folder)
    return folder, hf_model


def _greedy_item(hf_model, tokenizer) -> dict:
    """An item whose first choice is the model's own greedy continuation, so is_greedy is True once.

    NOTE: the choice must tokenize back to the very tokens the model chose (lm-eval encodes
    question + " " + choice as one text), so questions whose greedy text re-tokenizes differently are skipped.
    """
    words = TASK_TEXT.split()
    for question in (" ".join(words[i : i + 3]) for i in range(len(words) - 2)):
        context = f"Question: {question}\nAnswer:"
        ids = tokenizer.encode(context)
        with torch.no_grad():
            for _ in range(2):
                ids.append(int(hf_model(torch.tensor([ids])).logits[0, -1].argmax()))
        text = tokenizer.decode(ids[-2:])
        if text.startswith(" ") and text.strip() and tokenizer.encode(context + text) == ids:
            return {"question": question, "choices": [text[1:], "the sea", "Rollo"], "answer": 0}
    raise AssertionError("no question whose greedy answer re-tokenizes to itself")


@pytest.fixture(scope="module")
def task_dir(checkpoint, bpe, tmp_path_factory):
    """The committed task on its items plus one greedy item, from a folder of its own (no cwd needed)."""
    folder = tmp_path_factory.mktemp("task")
    items = (TASK_DIR / "items.jsonl").read_text().splitlines()
    items.append(json.dumps(_greedy_item(checkpoint[1], bpe)))
    (folder / "items.jsonl").write_text("\n".join(items) + "\n")
    (folder / "lmforge_tiny_mc_plus.yaml").write_text(
        f"include: {TASK_DIR / 'lmforge_tiny_mc.yaml'}\n"
        "task: lmforge_tiny_mc_plus\n"
        f"dataset_kwargs:\n  data_files:\n    test: {folder / 'items.jsonl'}\n"
    )
    return folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_up(server: subprocess.Popen, port: int, log: Path, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"lmforge serve exited with {server.returncode}: {log.read_text()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"lmforge serve did not answer /health on port {port} within {timeout} s")


@pytest.fixture(scope="module")
def server(checkpoint, tmp_path_factory):
    """`python -m lmforge serve` on the checkpoint, float32 on the CPU as lm-eval's hf model runs here."""
    port, log = _free_port(), tmp_path_factory.mktemp("serve") / "stderr.txt"
    env = {k: v for k, v in os.environ.items() if k != "LMFORGE_API_KEY"} | OFFLINE
    command = [
        sys.executable, "-m", "lmforge", "serve", "--model", str(checkpoint[0]), "--port", str(port),
        "--dtype", "float32", "--device", "cpu",
    ]  # fmt: skip
    # NOTE: stderr to a file, not a pipe: nobody reads a pipe while lm-eval runs, and a full one blocks the server.
    with log.open("w") as stderr:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        _wait_until_up(process, port, log)
        yield f"http://127.0.0.1:{port}", log
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _scores(samples) -> dict[int, list[tuple[float, bool]]]:
    """doc_id -> each choice's (log-likelihood, is_greedy); the samples file writes both as strings."""
    return {
        s["doc_id"]: [(float(ll), str(greedy) == "True") for ll, greedy in s["filtered_resps"]]
        for s in samples
    }


def _run_hf(checkpoint: Path, task_dir: Path) -> tuple[dict, float]:
    from lm_eval.tasks import TaskManager

    results = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={checkpoint},dtype=float32,device=cpu",
        tasks=["lmforge_tiny_mc_plus"],
        task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
        batch_size=8,
        log_samples=True,
    )
    accuracy = results["results"]["lmforge_tiny_mc_plus"]["acc,none"]
    return _scores(results["samples"]["lmforge_tiny_mc_plus"]), accuracy


def _log_lines(log: str, *levels: str) -> list[str]:
    return [line[:1000] for line in log.splitlines() if any(f" {level} " in line for level in levels)]


def _run_local_completions(server: tuple[str, Path], task_dir: Path, out: Path) -> tuple[dict, float]:
    """The command a user runs (README), as a real `lm_eval` process against the real server."""
    base_url, server_log = server
    model_args = (
        f"base_url={base_url}/v1/completions,tokenizer_backend=remote,"
        f"max_length={CONTEXT},num_concurrent=4,max_retries=1"
    )
    command = [
        sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args", model_args,
        "--batch_size", "3", "--tasks", "lmforge_tiny_mc_plus", "--include_path", str(task_dir),
        "--log_samples", "--output_path", str(out),
    ]  # fmt: skip
    env = {**os.environ, **OFFLINE, "HF_DATASETS_CACHE": str(out / "datasets")}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    # lm-eval logs each refused request (status and body) as a WARNING; the traceback's end is often
    # only the aftermath ("Session is closed" of the other requests in flight).
    lm_eval_log = "\n".join(_log_lines(result.stderr, "WARNING", "ERROR")) + result.stderr[-2000:]
    assert result.returncode == 0, f"{lm_eval_log}\n--- the server's log:\n{server_log.read_text()[-3000:]}"
    (samples_file,) = out.glob("*/samples_lmforge_tiny_mc_plus_*.jsonl")
    (results_file,) = out.glob("*/results_*.json")
    samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
    accuracy = json.loads(results_file.read_text())["results"]["lmforge_tiny_mc_plus"]["acc,none"]
    return _scores(samples), accuracy


@pytest.mark.slow
def test_local_completions_through_the_server_matches_the_hf_model(checkpoint, task_dir, server, tmp_path):
    expected, expected_acc = _run_hf(checkpoint[0], task_dir)
    got, got_acc = _run_local_completions(server, task_dir, tmp_path / "out")
    n_items = len((task_dir / "items.jsonl").read_text().splitlines())
    assert sorted(got) == sorted(expected) == list(range(n_items))
    for doc_id, choices in expected.items():
        assert len(got[doc_id]) == len(choices), doc_id
        for (ll, greedy), (ll_served, greedy_served) in zip(choices, got[doc_id]):
            assert ll_served == pytest.approx(ll, abs=1e-4, rel=0), (doc_id, ll_served, ll)
            assert greedy_served == greedy, (doc_id, greedy_served, greedy)
    # The greedy item really is greedy (else the is_greedy comparison above proved nothing).
    assert expected[n_items - 1][0][1] is True
    assert got_acc == expected_acc
