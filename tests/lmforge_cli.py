"""Running `python -m lmforge` as a user does, for the end-to-end tests (tests/ is on sys.path through
conftest.py), and the check every bad-input case shares: one `lmforge: error:` line, exit code 2."""

import subprocess
import sys


def run_lmforge(*args, cwd=None, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lmforge", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lmforge: error:"), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def finetune_under_bf16(task: str, base, data, out, method: str, *flags) -> dict:
    """`lmforge finetune` for 4 steps under bf16 autocast (on any CPU), scored at steps 2 and 4;
    checks that it says which precision it used, and returns OUT/metrics.json."""
    import json

    result = run_lmforge(
        "finetune", "--task", task, "--model", base, "--data", data, "--out", out, "--method", method,
        "--max-steps", 4, "--eval-every", 2, "--batch-size", 8, "--lr", 1e-3, "--warmup-steps", 1,
        *flags, "--precision", "bfloat16", "--no-progress", "--device", "cpu",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "precision: bfloat16 (asked for)" in result.stdout
    return json.loads((out / "metrics.json").read_text())
