"""A checkpoint write that fails for real (the kernel refuses the bytes) is a clear error, and the
previous checkpoint stays whole and resumable.

The failure is a real one: the training process runs under RLIMIT_FSIZE, so writing the optimizer
state (the largest file of a checkpoint) fails with EFBIG, as a full disk fails with ENOSPC.
"""

import hashlib
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from test_pretrain_resume import COMMON, data_dir, losses, run  # noqa: F401  (data_dir is a fixture)

pytestmark = pytest.mark.slow  # four pretraining runs in real subprocesses


def _digest(directory: Path) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(directory.iterdir())}


def _run_with_file_size_limit(limit: int, *args) -> subprocess.CompletedProcess:
    def limit_writes():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return subprocess.run(
        [sys.executable, "-m", "lmforge", *map(str, args)],
        preexec_fn=limit_writes,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_failed_checkpoint_write_is_one_line_and_keeps_the_previous(tmp_path, data_dir):  # noqa: F811
    out = tmp_path / "run"
    args = ["pretrain", *COMMON, "--data", data_dir, "--out", out, "--save-every", "4"]
    # A constant rate after one warmup step: a run stopped at 4 of 4 steps and extended to 8 follows
    # the schedule of a run of 8 (warmup is capped at a tenth of --max-steps, cosine spans it).
    args += ["--warmup-steps", "1", "--min-lr-ratio", "1"]
    first = run(*args, "--max-steps", "4")
    assert first.returncode == 0, first.stderr
    previous = out / "checkpoints" / "step-00000004"
    before = _digest(previous)

    # Big enough for the weights, too small for the optimizer state (two moments per weight).
    limit = (previous / "model.safetensors").stat().st_size + 4096
    assert (previous / "optimizer.safetensors").stat().st_size > limit
    failed = _run_with_file_size_limit(limit, *args, "--max-steps", "8", "--resume")
    assert failed.returncode == 2, failed.stderr[-2000:]
    lines = failed.stderr.strip().splitlines()
    assert "Traceback" not in failed.stderr
    assert lines[-1].startswith("lmforge: error: could not write checkpoint"), lines[-1]
    assert "File too large" in lines[-1] and f"{previous} is intact" in lines[-1]
    assert _digest(previous) == before
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000004"]  # no half-written one

    resumed = run(*args, "--max-steps", "8", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    straight = run(*[tmp_path / "straight" if a == out else a for a in args], "--max-steps", "8")
    assert straight.returncode == 0, straight.stderr
    assert losses(out) == losses(tmp_path / "straight")
