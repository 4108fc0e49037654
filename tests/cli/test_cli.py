"""The `lmforge` command, run as users run it: a real subprocess.

Every bad input a user can give ends in one line that names the problem, exit code 2, no traceback,
and nothing already written is lost.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from lmforge.models import build_model
from lmforge.models.presets import get_preset
from lmforge.tokenizers import train_tokenizer

TEXT = "def add(a, b):\n    return a + b\n\nclass Point:\n    x = 1\n    y = 2\n" * 20


def lmforge(*args, stdin=None, cwd=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [sys.executable, "-m", "lmforge", *map(str, args)],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


def assert_usage_error(result, *needles):
    """Exit code 2 and one line on stderr, `lmforge: error: ...`, mentioning every needle."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("lmforge: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny lmforge GPT-2 checkpoint with a character tokenizer trained on Python-like text."""
    out = tmp_path_factory.mktemp("ckpt")
    (out / "corpus.txt").write_text(TEXT)
    tok = train_tokenizer([out / "corpus.txt"], vocab_size=64, kind="char")
    torch.manual_seed(0)
    model = build_model(get_preset("tiny", vocab_size=tok.vocab_size, max_seq_len=128))
    model.save_pretrained(out / "model")
    tok.save_pretrained(out / "model")
    return out / "model"


# --- generate ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_generate_prints_the_continuation_and_stream_prints_the_same(checkpoint):
    args = [
        "generate",
        "--model",
        checkpoint,
        "--prompt",
        "def ",
        "--max-new-tokens",
        "20",
        "--temperature",
        "0",
    ]
    full, streamed = lmforge(*args), lmforge(*args, "--stream")
    assert full.returncode == 0 and streamed.returncode == 0, full.stderr + streamed.stderr
    assert full.stdout == streamed.stdout
    assert len(full.stdout) > 1


@pytest.mark.slow
def test_generate_echo_prints_the_prompt_then_the_same_continuation(checkpoint):
    args = ["generate", "--model", checkpoint, "--prompt", "def ", "--max-new-tokens", 20, "--temperature", 0]
    plain, echoed, streamed = lmforge(*args), lmforge(*args, "--echo"), lmforge(*args, "--echo", "--stream")
    for result in (plain, echoed, streamed):
        assert result.returncode == 0, result.stderr
    assert echoed.stdout == "def " + plain.stdout
    assert streamed.stdout == echoed.stdout


@pytest.mark.slow
def test_generate_with_a_seed_is_reproducible_and_reads_the_prompt_from_stdin(checkpoint):
    args = [
        "generate",
        "--model",
        checkpoint,
        "--max-new-tokens",
        "16",
        "--temperature",
        "1.0",
        "--seed",
        "5",
    ]
    a, b = lmforge(*args, "--prompt", "x = "), lmforge(*args, "--prompt", "-", stdin="x = ")
    assert a.returncode == 0 and a.stdout == b.stdout


def test_generate_bench_reports_speed(checkpoint):
    r = lmforge("generate", "--model", checkpoint, "--prompt", "a", "--max-new-tokens", "8", "--bench")
    assert r.returncode == 0 and "tokens/s" in r.stderr and "time to first token" in r.stderr


def test_missing_checkpoint(tmp_path):
    assert_usage_error(lmforge("generate", "--model", tmp_path / "nope", "--prompt", "hi"), "nope")


def test_corrupt_checkpoint(tmp_path, checkpoint):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in checkpoint.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "model.safetensors").write_bytes(b"\x00garbage" * 50)
    assert_usage_error(lmforge("generate", "--model", bad, "--prompt", "hi"), "model.safetensors")


def test_corrupt_config(tmp_path, checkpoint):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{oops")
    assert_usage_error(lmforge("generate", "--model", bad, "--prompt", "hi"), "config.json")


def test_unsupported_architecture_names_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba", "vocab_size": 10}))
    line = assert_usage_error(lmforge("generate", "--model", tmp_path, "--prompt", "hi"), "mamba")
    assert "gpt2" in line and "llama" in line


class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['LMFORGE_PWNED']}",))


def test_pickle_only_checkpoint_never_runs_code(tmp_path, checkpoint, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("LMFORGE_PWNED", str(marker))
    ckpt = tmp_path / "pickled"
    ckpt.mkdir()
    (ckpt / "config.json").write_text((checkpoint / "config.json").read_text())
    torch.save({"weights": Payload()}, ckpt / "pytorch_model.bin")
    line = assert_usage_error(lmforge("generate", "--model", ckpt, "--prompt", "hi"), "pytorch_model.bin")
    assert "safetensors" in line
    assert not marker.exists()


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--prompt", ""], "empty prompt"),
        (["--prompt", "hi", "--max-new-tokens", "-3"], "max_new_tokens"),
        (["--prompt", "hi", "--top-p", "0"], "top_p"),
        (["--prompt", "hi", "--top-p", "1.5"], "top_p"),
        (["--prompt", "hi", "--temperature", "-1"], "temperature"),
        (["--prompt", "hi", "--top-k", "ten"], "--top-k"),
        (["--prompt", "hi", "--no-such-flag"], "--no-such-flag"),
        (["--prompt", "hi", "--dtype", "int3"], "int3"),
    ],
    ids=[
        "empty-prompt",
        "negative-max-tokens",
        "top-p-zero",
        "top-p-above-one",
        "negative-temperature",
        "non-integer-top-k",
        "unknown-flag",
        "unknown-dtype",
    ],
)
def test_bad_generation_options(checkpoint, flags, needle):
    assert_usage_error(lmforge("generate", "--model", checkpoint, *flags), needle)


@pytest.mark.slow
def test_missing_verb_and_missing_required_flag():
    assert_usage_error(lmforge(), "VERB")
    assert_usage_error(lmforge("generate", "--prompt", "hi"), "--model")


# --- tokenizer train --------------------------------------------------------------------------------


def test_tokenizer_train_writes_a_loadable_tokenizer(tmp_path):
    (tmp_path / "corpus.txt").write_text(TEXT)
    r = lmforge(
        "tokenizer",
        "train",
        "--data",
        tmp_path / "corpus.txt",
        "--vocab-size",
        "300",
        "--out",
        tmp_path / "tok",
    )
    assert r.returncode == 0, r.stderr
    from lmforge import load_tokenizer

    tok = load_tokenizer(tmp_path / "tok")
    assert tok.decode(tok.encode(TEXT[:60], add_special_tokens=False)) == TEXT[:60]


@pytest.mark.slow
def test_tokenizer_train_bad_input(tmp_path):
    (tmp_path / "corpus.txt").write_text(TEXT)
    assert_usage_error(
        lmforge(
            "tokenizer",
            "train",
            "--data",
            tmp_path / "none.txt",
            "--vocab-size",
            "300",
            "--out",
            tmp_path / "t",
        ),
        "none.txt",
    )
    assert_usage_error(
        lmforge(
            "tokenizer",
            "train",
            "--data",
            tmp_path / "corpus.txt",
            "--vocab-size",
            "2",
            "--out",
            tmp_path / "t",
        ),
        "vocab",
    )


# --- prepare and pretrain ---------------------------------------------------------------------------

PRETRAIN = [
    "pretrain",
    "--preset",
    "tiny",
    "--max-steps",
    "2",
    "--batch-size",
    "2",
    "--seq-len",
    "16",
    "--eval-every",
    "2",
    "--eval-batches",
    "1",
    "--sample-tokens",
    "0",
    "--no-progress",
    "--vocab-size",
    "300",
]


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    for i in range(3):
        (root / f"f{i}.txt").write_text(TEXT * (i + 1))
    return root


@pytest.mark.slow
def test_pretrain_then_generate_from_the_result(tmp_path, corpus):
    r = lmforge(*PRETRAIN, "--data", corpus, "--out", tmp_path / "run")
    assert r.returncode == 0, r.stderr
    assert "finished at step 2" in r.stdout
    g = lmforge("generate", "--model", tmp_path / "run", "--prompt", "def", "--max-new-tokens", "5")
    assert g.returncode == 0, g.stderr


def test_a_few_invalid_utf8_bytes_are_replaced_and_reported(tmp_path, corpus):
    (corpus / "latin.txt").write_bytes(TEXT.encode() + b"caf\xe9 cr\xe8me\n")
    r = lmforge("prepare", "--data", corpus, "--out", tmp_path / "data", "--vocab-size", "300")
    assert r.returncode == 0, r.stderr
    assert "replaced 2 invalid UTF-8 byte sequences" in r.stderr and "latin.txt" in r.stderr
    assert json.loads((tmp_path / "data" / "manifest.json").read_text())["replaced_bytes"] == 2


def test_binary_files_are_refused(tmp_path, corpus):
    (corpus / "image.txt").write_bytes(bytes(range(256)) * 8)
    assert_usage_error(
        lmforge(*PRETRAIN, "--data", corpus, "--out", tmp_path / "run"), "image.txt", "not UTF-8"
    )
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_empty_corpus(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    assert_usage_error(
        lmforge(*PRETRAIN, "--data", tmp_path / "empty.txt", "--out", tmp_path / "run"), "empty"
    )


def test_directory_without_matching_files(tmp_path, corpus):
    assert_usage_error(
        lmforge(*PRETRAIN, "--data", corpus, "--glob", "*.md", "--out", tmp_path / "run"), "*.md"
    )


def test_vocabulary_too_small_for_the_special_tokens(tmp_path, corpus):
    args = [a if a != "300" else "2" for a in PRETRAIN]
    assert_usage_error(lmforge(*args, "--data", corpus, "--out", tmp_path / "run"), "vocab")


def test_unknown_preset_names_the_known_ones(tmp_path, corpus):
    line = assert_usage_error(
        lmforge(*PRETRAIN, "--preset", "huge", "--data", corpus, "--out", tmp_path / "r"), "huge"
    )
    assert "tiny" in line and "demo" in line


def test_unwritable_output_directory(tmp_path, corpus):
    if os.geteuid() == 0:  # root writes through permission bits; /proc refuses everyone
        assert_usage_error(
            lmforge(*PRETRAIN, "--data", corpus, "--out", "/proc/lmforge-run"), "/proc/lmforge-run"
        )
        return
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert_usage_error(lmforge(*PRETRAIN, "--data", corpus, "--out", locked / "run"), str(locked))
    finally:
        locked.chmod(0o700)


def test_output_path_that_is_a_file(tmp_path, corpus):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    assert_usage_error(lmforge(*PRETRAIN, "--data", corpus, "--out", target), "notes.txt")
    assert target.read_text() == "keep me"


@pytest.mark.slow
def test_bad_recipe_file(tmp_path, corpus):
    (tmp_path / "recipe.toml").write_text("max_steps = [oops")
    assert_usage_error(
        lmforge("pretrain", "--config", tmp_path / "recipe.toml", "--out", tmp_path / "r"), "recipe.toml"
    )
    (tmp_path / "recipe.toml").write_text("max_stepz = 3\n")
    assert_usage_error(
        lmforge("pretrain", "--config", tmp_path / "recipe.toml", "--out", tmp_path / "r"), "max_stepz"
    )


@pytest.mark.slow
def test_a_second_run_into_the_same_directory_refuses_and_keeps_the_first(tmp_path, corpus):
    assert lmforge(*PRETRAIN, "--data", corpus, "--out", tmp_path / "run").returncode == 0
    weights = (tmp_path / "run" / "model.safetensors").read_bytes()
    assert_usage_error(lmforge(*PRETRAIN, "--data", corpus, "--out", tmp_path / "run"), "--resume")
    assert (tmp_path / "run" / "model.safetensors").read_bytes() == weights
