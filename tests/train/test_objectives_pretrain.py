"""`lmforge pretrain --objective mlm|span`, run as users run it: real subprocesses on a small corpus.

The validation loss falls, checkpoints open with `lmforge.load_model`, a resumed run repeats an
uninterrupted one bit for bit (its masks come from (seed, step, micro-batch)), and an objective
given a model family it cannot train is one line and exit code 2.
"""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import lmforge

COMMON = [
    "--batch-size",
    "8",
    "--seq-len",
    "32",
    "--eval-batches",
    "2",
    "--no-progress",
    "--precision",
    "float32",
    "--warmup-steps",
    "5",
    "--lr",
    "3e-3",
    "--seed",
    "7",
    "--vocab-size",
    "200",
]


def write_corpus(directory: Path, n_files: int = 12, seed: int = 0) -> Path:
    """Sentences from a tiny grammar: enough structure that a masked word can be guessed."""
    rng = random.Random(seed)
    nouns = ["cat", "dog", "bird", "fish", "horse", "mouse"]
    verbs = ["sees", "likes", "chases", "follows"]
    adjectives = ["small", "big", "red", "old", "quick"]
    directory.mkdir(parents=True)
    for i in range(n_files):
        lines = [
            f"the {rng.choice(adjectives)} {rng.choice(nouns)} {rng.choice(verbs)} the {rng.choice(nouns)} ."
            for _ in range(150)
        ]
        (directory / f"doc{i}.txt").write_text("\n".join(lines))
    return directory


def run(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, "-m", "lmforge", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("objectives") / "text")


@pytest.fixture(scope="module")
def mlm_run(tmp_path_factory, text_dir):
    out = tmp_path_factory.mktemp("mlm") / "run"
    args = ["--objective", "mlm", "--preset", "bert-tiny", "--max-steps", 40, "--eval-every", 5]
    return out, run("pretrain", "--data", text_dir, *COMMON, *args, "--save-every", 20, "--out", out)


@pytest.fixture(scope="module")
def span_run(tmp_path_factory, text_dir):
    out = tmp_path_factory.mktemp("span") / "run"
    args = ["--objective", "span", "--preset", "t5-tiny", "--max-steps", 40, "--eval-every", 5]
    return out, run("pretrain", "--data", text_dir, *COMMON, *args, "--save-every", 20, "--out", out)


def _check_learned(out: Path, result: subprocess.CompletedProcess) -> list[float]:
    assert result.returncode == 0, result.stderr
    val = [r["val_loss"] for r in rows(out) if "val_loss" in r]
    assert len(val) == 8 and val[-1] < val[0] - 0.5, val  # the validation loss falls
    assert [r["step"] for r in rows(out)] == list(range(1, 41))
    return val


@pytest.mark.slow
def test_mlm_pretraining_learns_and_saves_a_loadable_bert(mlm_run):
    out, result = mlm_run
    val = _check_learned(out, result)
    print(f"mlm validation loss: {val}")
    tok = lmforge.load_tokenizer(out)
    assert tok.mask_token_id is not None and tok.cls_token_id is not None  # a WordPiece tokenizer
    assert "masked: [CLS]" in result.stdout and "[MASK]" in result.stdout and "filled: " in result.stdout
    for path in (out, out / "checkpoints" / "step-00000020"):
        model = lmforge.load_model(path)
        assert model.config.model_type == "bert"
        ids = torch.tensor([tok.encode("the big cat sees the dog .")])
        assert model(ids).shape == (1, ids.shape[1], model.config.vocab_size)  # MLM logits


@pytest.mark.slow
def test_span_pretraining_learns_and_saves_a_loadable_t5(span_run):
    out, result = span_run
    val = _check_learned(out, result)
    print(f"span validation loss: {val}")
    tok = lmforge.load_tokenizer(out)
    assert tok.token_to_id("<extra_id_0>") is not None
    assert (
        "input: " in result.stdout and "target: <extra_id_0>" in result.stdout and "model: " in result.stdout
    )
    for path in (out, out / "checkpoints" / "step-00000020"):
        model = lmforge.load_model(path)
        assert model.config.model_type == "t5"
        ids = torch.tensor([tok.encode("the big cat sees the dog .")])
        start = torch.tensor([[model.config.decoder_start_token_id]])
        assert model(ids, decoder_input_ids=start).shape == (1, 1, model.config.vocab_size)


@pytest.mark.slow
def test_resumed_mlm_run_repeats_the_uninterrupted_one_bit_for_bit(tmp_path, mlm_run):
    data = mlm_run[0] / "data"  # prepared once, by the fixture's run
    args = ["pretrain", "--data", data, *COMMON, "--objective", "mlm", "--preset", "bert-tiny"]
    args += ["--eval-every", 5, "--save-every", 10, "--sample-tokens", 0]
    # A constant rate after one warmup step (warmup is capped at a tenth of --max-steps, the cosine
    # decays to lr * 1.0): the schedule does not depend on --max-steps, so 10 steps then 10 more
    # follow the schedule of 20 straight ones.
    args += ["--warmup-steps", 1, "--min-lr-ratio", 1.0]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run(*args, "--max-steps", 20, "--out", straight).returncode == 0
    assert run(*args, "--max-steps", 10, "--out", resumed).returncode == 0
    again = run(*args, "--max-steps", 20, "--out", resumed, "--resume")
    assert again.returncode == 0, again.stderr
    assert _without_timings(rows(resumed)) == _without_timings(rows(straight))  # losses, val losses, norms
    assert len(rows(straight)) == 20
    a, b = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _without_timings(table: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in ("tokens_per_s", "elapsed_s")} for row in table]


@pytest.mark.parametrize(
    "objective, preset, needle",
    [
        ("mlm", "tiny", "--preset bert-tiny"),
        ("span", "bert-tiny", "--preset t5-tiny"),
        ("clm", "bert-tiny", "--objective mlm"),
        ("bogus", "tiny", "clm, mlm, span"),
    ],
)
def test_objective_that_does_not_fit_the_preset_is_one_line(tmp_path, objective, preset, needle):
    result = run("pretrain", "--objective", objective, "--preset", preset, "--out", tmp_path / "run")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lmforge: error: ") and needle in lines[0], lines
    assert not (tmp_path / "run" / "data").exists()  # refused before any data work
