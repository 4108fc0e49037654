"""Crash-proof pretraining, tested with real subprocesses and real SIGKILLs.

A run killed after a checkpoint and resumed gives bit-for-bit the losses and weights of a run that
was never interrupted; a run killed while writing a checkpoint leaves the previous one intact.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmforge.data.prepare import PrepareConfig, prepare

pytestmark = pytest.mark.slow  # pretraining runs in real subprocesses, killed and resumed

COMMON = [
    "--preset",
    "tiny",
    "--batch-size",
    "8",
    "--seq-len",
    "64",
    "--eval-every",
    "10",
    "--eval-batches",
    "2",
    "--sample-tokens",
    "0",
    "--no-progress",
    "--precision",
    "float32",
    "--warmup-steps",
    "5",
    "--seed",
    "7",
]


def corpus(directory: Path, n_files: int = 12, seed: int = 0) -> Path:
    import random

    rng = random.Random(seed)
    words = [
        "def",
        "class",
        "return",
        "import",
        "self",
        "value",
        "list",
        "index",
        "print",
        "yield",
        "lambda",
        "for",
        "while",
        "if",
        "else",
    ]
    directory.mkdir(parents=True)
    for i in range(n_files):
        lines = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(200)]
        (directory / f"doc{i}.txt").write_text("\n".join(lines))
    return directory


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain")
    out = root / "data"
    prepare(PrepareConfig(data=[str(corpus(root / "text"))], out=str(out), vocab_size=300), progress=False)
    return out


def spawn(*args, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "lmforge", *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def run(*args) -> subprocess.CompletedProcess:
    p = spawn(*args)
    out, err = p.communicate(timeout=300)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def losses(out: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows}


def wait_for(predicate, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.002)
    return False


def test_sigkill_after_checkpoint_then_resume_is_bitwise_identical(tmp_path, data_dir):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    args = ["pretrain", "--data", data_dir, *COMMON, "--max-steps", 60, "--save-every", 10]
    done = run(*args, "--out", straight)
    assert done.returncode == 0, done.stderr

    proc = spawn(*args, "--out", killed)
    progressed = wait_for(
        lambda: max(losses(killed), default=0) >= 25 if (killed / "metrics.jsonl").exists() else False, proc
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert progressed and proc.returncode == -signal.SIGKILL, "the run must be killed mid-way"
    last_ckpt = max(int(p.name.split("-")[1]) for p in (killed / "checkpoints").glob("step-*"))
    assert 20 <= last_ckpt < 60 and max(losses(killed)) > last_ckpt  # steps after it are replayed

    resumed = run(*args, "--out", killed, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert losses(killed) == losses(straight)  # every step, bit for bit
    a, b = load_file(straight / "model.safetensors"), load_file(killed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_sigkill_during_checkpoint_write_keeps_previous(tmp_path, data_dir):
    out = tmp_path / "run"
    args = [
        "pretrain",
        "--data",
        data_dir,
        *COMMON,
        "--preset",
        "demo",
        "--batch-size",
        "1",
        "--seq-len",
        "16",
        "--max-steps",
        4,
        "--save-every",
        2,
        "--eval-every",
        100,
        "--out",
        out,
    ]
    proc = spawn(*args)
    ckpts = out / "checkpoints"
    # The first checkpoint completes; kill while the second is still a temporary directory.
    caught = wait_for(
        lambda: (ckpts / "step-00000002").is_dir() and any(ckpts.glob(".tmp-step-00000004-*")), proc
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert caught, "did not catch the checkpoint write in progress"
    assert not (ckpts / "step-00000004").exists()
    state = json.loads((ckpts / "step-00000002" / "trainer_state.json").read_text())
    assert state["step"] == 2
    import lmforge

    lmforge.load_model(ckpts / "step-00000002")  # the previous checkpoint is complete and loadable

    resumed = run(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert sorted(losses(out)) == [1, 2, 3, 4]
    assert not list(ckpts.glob(".tmp-*"))


def test_resume_refuses_other_data_unless_forced(tmp_path, data_dir):
    out = tmp_path / "run"
    args = [*COMMON, "--max-steps", 4, "--save-every", 2, "--out", out]
    assert run("pretrain", "--data", data_dir, *args).returncode == 0
    other = tmp_path / "other"
    prepare(
        PrepareConfig(data=[str(corpus(tmp_path / "text2", seed=1))], out=str(other), vocab_size=300),
        progress=False,
    )
    refused = run("pretrain", "--data", other, *args, "--max-steps", 6, "--resume")
    assert refused.returncode == 2 and "--force" in refused.stderr and "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    forced = run("pretrain", "--data", other, *args, "--max-steps", 6, "--resume", "--force")
    assert forced.returncode == 0, forced.stderr
    assert max(losses(out)) == 6


def test_fresh_run_refuses_to_overwrite_checkpoints(tmp_path, data_dir):
    out = tmp_path / "run"
    args = ["pretrain", "--data", data_dir, *COMMON, "--max-steps", 2, "--save-every", 2, "--out", out]
    assert run(*args).returncode == 0
    again = run(*args)
    assert again.returncode == 2 and "--resume" in again.stderr
    assert (out / "checkpoints" / "step-00000002").is_dir()


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, data_dir):
    out = tmp_path / "run"
    good = run("pretrain", "--data", data_dir, *COMMON, "--max-steps", 2, "--save-every", 2, "--out", out)
    assert good.returncode == 0
    before = (out / "checkpoints" / "step-00000002" / "model.safetensors").read_bytes()
    blown = run(
        "pretrain",
        "--data",
        data_dir,
        *COMMON,
        "--max-steps",
        30,
        "--save-every",
        100,
        "--out",
        out,
        "--resume",
        "--force",
        "--lr",
        "1e30",
        "--warmup-steps",
        "1",
    )
    assert blown.returncode == 2 and "non-finite" in blown.stderr and "Traceback" not in blown.stderr
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000002"]
    assert (out / "checkpoints" / "step-00000002" / "model.safetensors").read_bytes() == before


def test_skip_nonfinite_skips_the_step(tmp_path, data_dir):
    out = tmp_path / "run"
    r = run(
        "pretrain",
        "--data",
        data_dir,
        *COMMON,
        "--max-steps",
        6,
        "--save-every",
        100,
        "--out",
        out,
        "--lr",
        "1e30",
        "--warmup-steps",
        "1",
        "--skip-nonfinite",
    )
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(row.get("skipped") for row in rows)
