"""The resume contract: a checkpoint records what fixes the data order (processes, per-process batch,
accumulation, sequence length, seed), and a resume that changes any of it is refused with one line
naming each change, --force or not: it would silently skip or repeat samples."""

import os
import subprocess
import sys

import pytest
from lmforge_cli import assert_one_line_error
from test_pretrain_resume import COMMON, data_dir, losses, run  # noqa: F401  (data_dir is a fixture)


@pytest.fixture(scope="module")
def stopped(tmp_path_factory, data_dir):  # noqa: F811
    """A run stopped after 2 of its steps (batch 8, seq 64, seed 7, one process)."""
    out = tmp_path_factory.mktemp("contract") / "run"
    result = run("pretrain", "--data", data_dir, *COMMON, "--max-steps", 2, "--save-every", 2, "--out", out)
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (("--batch-size", 4), "--batch-size 8 -> 4"),
        (("--seq-len", 32), "--seq-len 64 -> 32"),
        (("--grad-accum", 2), "--grad-accum 1 -> 2"),
        (("--seed", 8), "--seed 7 -> 8"),
        (("--seed", 8, "--batch-size", 4, "--force"), "--batch-size 8 -> 4, --seed 7 -> 8"),
    ],
)
def test_a_changed_data_order_is_refused_naming_each_change(stopped, data_dir, flags, named):  # noqa: F811
    before = losses(stopped)
    result = run(
        "pretrain", "--data", data_dir, *COMMON, "--max-steps", 4, "--out", stopped, "--resume", *flags
    )
    assert_one_line_error(result, "data order changed", named, "resume with that run's values")
    assert losses(stopped) == before  # nothing trained, nothing lost


def test_the_same_values_resume(stopped, data_dir):  # noqa: F811
    result = run("pretrain", "--data", data_dir, *COMMON, "--max-steps", 3, "--out", stopped, "--resume")
    assert result.returncode == 0, result.stderr
    assert max(losses(stopped)) == 3


def test_two_processes_cannot_resume_a_one_process_run(tmp_path, data_dir):  # noqa: F811
    """Under torchrun each process would take its own share from step 2 on: refused, never a silent skip."""
    out = tmp_path / "run"
    first = run("pretrain", "--data", data_dir, *COMMON, "--max-steps", 2, "--save-every", 2, "--out", out)
    assert first.returncode == 0, first.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m"]
    cmd += ["lmforge", "pretrain", "--data", str(data_dir), *map(str, COMMON), "--max-steps", "4"]
    result = subprocess.run(
        [*cmd, "--out", str(out), "--resume", "--force"], env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode != 0
    assert "data order changed (processes 1 -> 2)" in result.stderr
    assert max(losses(out)) == 2
