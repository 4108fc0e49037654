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
