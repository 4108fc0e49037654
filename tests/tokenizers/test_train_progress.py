"""`lmforge tokenizer train` and `lmforge prepare` report progress on stderr (training a Unigram tokenizer
on the built-in corpus takes minutes), and nothing with --no-progress."""

import os
import pty
import re
import subprocess
import sys

import pytest
from lmforge_cli import run_lmforge

TEXT = "the quick brown fox jumps over the lazy dog\nshe sells sea shells by the sea shore\n" * 200


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "a.txt"
    path.write_text(TEXT)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["unigram", "bpe"])
def test_tokenizer_train_reports_progress_unless_told_not_to(corpus, tmp_path, kind):
    args = ("tokenizer", "train", "--data", corpus, "--vocab-size", 300, "--kind", kind)
    shown = run_lmforge(*args, "--out", tmp_path / "shown")
    assert shown.returncode == 0, shown.stderr
    assert "reading" in shown.stderr and "100%" in shown.stderr  # the bytes read, of the file's size
    assert "learning the vocabulary" in shown.stderr
    quiet = run_lmforge(*args, "--out", tmp_path / "quiet", "--no-progress")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""
    assert quiet.stdout == shown.stdout.replace(str(tmp_path / "shown"), str(tmp_path / "quiet"))


@pytest.mark.slow
def test_prepare_reports_tokenizer_training_unless_told_not_to(corpus, tmp_path):
    args = ("prepare", "--data", corpus, "--vocab-size", 300, "--tokenizer-kind", "unigram")
    shown = run_lmforge(*args, "--out", tmp_path / "shown")
    assert shown.returncode == 0, shown.stderr
    assert "learning the vocabulary" in shown.stderr and "tokenizing" in shown.stderr
    quiet = run_lmforge(*args, "--out", tmp_path / "quiet", "--no-progress")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_on_a_terminal_the_library_bars_count_to_a_known_length(corpus, tmp_path):
    """On a terminal, the `tokenizers` library draws its own bars (our reading bar would fight them), and
    the number of texts is passed to it, so its first bar has an end ("N / N", not "N / 0")."""
    controller, terminal = pty.openpty()
    args = ("tokenizer", "train", "--data", corpus, "--vocab-size", 300, "--kind", "unigram")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmforge", *map(str, args), "--out", str(tmp_path / "tok")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=terminal,
    )
    os.close(terminal)
    written = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # the terminal's other end closed: the process is done
            break
        if not chunk:
            break
        written += chunk
    os.close(controller)
    assert proc.wait(timeout=300) == 0
    shown = written.decode("utf-8", "replace")
    assert "Pre-processing sequences" in shown and "EM training" in shown
    # One file under 1 MiB is one text: the bar counts to 1 (without the length it would count to 0).
    ends = set(re.findall(r"Pre-processing sequences[^/\r\n]*/\s*(\d+)", shown))
    assert ends == {"1"}, shown
    assert "learning the vocabulary" not in shown  # only where the library's bars are not drawn
