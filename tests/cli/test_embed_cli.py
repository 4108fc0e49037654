"""`lmforge embed` and `lmforge search`, run as users run them: real subprocesses.

Success writes float32 vectors equal to the library's; every bad input is one line, exit code 2."""

import os

import numpy as np
import pytest
import torch
from test_cli import assert_usage_error, lmforge

import lmforge as lf
from lmforge.device import resolve_dtype
from lmforge.models import build_model, get_preset

CORPUS = [
    "The cat sat on the mat.",
    "Dogs chase cats in the garden.",
    "Stock prices fell sharply on Monday.",
    "A kitten sleeps on a warm mat.",
]


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    """A random bert-tiny (max 128 positions) with a WordPiece tokenizer trained on the corpus."""
    out = tmp_path_factory.mktemp("enc")
    (out / "corpus.txt").write_text("\n".join(CORPUS) + "\n")
    tok = lf.train_tokenizer([out / "corpus.txt"], vocab_size=150, kind="wordpiece")
    torch.manual_seed(0)
    build_model(get_preset("bert-tiny", vocab_size=tok.vocab_size, use_mlm_head=False)).save_pretrained(
        out / "model"
    )
    tok.save_pretrained(out / "model")
    return out / "model", out / "corpus.txt"


def test_embed_writes_the_library_vectors(encoder, tmp_path):
    model_dir, corpus = encoder
    r = lmforge(
        "embed", "--model", model_dir, "--input", corpus, "--out", tmp_path / "v.npy", "--batch-size", 3
    )
    assert r.returncode == 0, r.stderr
    assert "4 texts" in r.stdout and "64 dimensions" in r.stdout
    vectors = np.load(tmp_path / "v.npy")
    assert vectors.shape == (4, 64) and vectors.dtype == np.float32
    expected = lf.embed(
        lf.load_model(model_dir, dtype=resolve_dtype(None)), lf.load_tokenizer(model_dir), CORPUS
    )
    assert np.allclose(vectors, expected.numpy(), atol=1e-5)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def test_embed_pooling_and_no_normalize(encoder, tmp_path):
    model_dir, corpus = encoder
    args = ["embed", "--model", model_dir, "--input", corpus, "--pooling", "cls", "--no-normalize"]
    assert lmforge(*args, "--out", tmp_path / "v.npy").returncode == 0
    expected = lf.embed(
        lf.load_model(model_dir, dtype=resolve_dtype(None)),
        lf.load_tokenizer(model_dir),
        CORPUS,
        pooling="cls",
        normalize=False,
    )
    assert np.allclose(np.load(tmp_path / "v.npy"), expected.numpy(), atol=1e-5)


def test_search_prints_the_top_matches_with_cosine_scores(encoder):
    model_dir, corpus = encoder
    r = lmforge("search", "--model", model_dir, "--corpus", corpus, "--query", CORPUS[2], "--top-k", 2)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2
    score, text = lines[0].split("\t")
    assert text == CORPUS[2] and abs(float(score) - 1.0) < 1e-4  # the query itself is in the corpus
    assert float(lines[1].split("\t")[0]) <= float(score)


@pytest.mark.slow
def test_long_texts_are_truncated_and_counted_unless_no_truncate(encoder, tmp_path):
    model_dir, _ = encoder
    (tmp_path / "long.txt").write_text("short one\n" + "the cat " * 200 + "\n")
    args = ["embed", "--model", model_dir, "--input", tmp_path / "long.txt", "--out", tmp_path / "v.npy"]
    r = lmforge(*args)
    assert r.returncode == 0, r.stderr
    assert "truncated 1 of 2 texts to 128 tokens" in r.stderr
    assert np.load(tmp_path / "v.npy").shape == (2, 64)
    os.remove(tmp_path / "v.npy")
    assert_usage_error(lmforge(*args, "--no-truncate"), "longer than the model's maximum of 128", "line 2")
    assert not (tmp_path / "v.npy").exists()


@pytest.mark.slow
def test_empty_and_missing_input_files(encoder, tmp_path):
    model_dir, _ = encoder
    (tmp_path / "empty.txt").write_text("\n  \n")
    out = tmp_path / "v.npy"
    assert_usage_error(
        lmforge("embed", "--model", model_dir, "--input", tmp_path / "empty.txt", "--out", out), "empty"
    )
    assert_usage_error(
        lmforge("embed", "--model", model_dir, "--input", tmp_path / "none.txt", "--out", out), "none.txt"
    )
    assert_usage_error(
        lmforge("search", "--model", model_dir, "--corpus", tmp_path / "empty.txt", "--query", "cat"), "empty"
    )


@pytest.mark.slow
def test_a_decoder_only_model_is_refused(encoder, tmp_path):
    _, corpus = encoder
    build_model(get_preset("tiny")).save_pretrained(tmp_path / "gpt2")
    line = assert_usage_error(
        lmforge("embed", "--model", tmp_path / "gpt2", "--input", corpus, "--out", tmp_path / "v.npy"),
        "decoder-only",
    )
    assert "gpt2" in line and "encoder such as BERT" in line
    assert_usage_error(
        lmforge("search", "--model", tmp_path / "gpt2", "--corpus", corpus, "--query", "cat"), "decoder-only"
    )


@pytest.mark.slow
def test_unwritable_output(encoder, tmp_path):
    model_dir, corpus = encoder
    (tmp_path / "file.txt").write_text("keep")
    for out in (tmp_path / "no-such-dir" / "v.npy", tmp_path / "file.txt" / "v.npy", tmp_path):
        assert_usage_error(
            lmforge("embed", "--model", model_dir, "--input", corpus, "--out", out), "cannot write"
        )
    assert (tmp_path / "file.txt").read_text() == "keep"


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_read_only_directory(encoder, tmp_path):
    model_dir, corpus = encoder
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert_usage_error(
            lmforge("embed", "--model", model_dir, "--input", corpus, "--out", locked / "v.npy"),
            "cannot write",
        )
    finally:
        locked.chmod(0o700)


@pytest.mark.slow
def test_bad_search_options(encoder):
    model_dir, corpus = encoder
    assert_usage_error(
        lmforge("search", "--model", model_dir, "--corpus", corpus, "--query", "x", "--top-k", 0), "top-k"
    )
    assert_usage_error(
        lmforge("search", "--model", model_dir, "--corpus", corpus, "--query", " "), "empty query"
    )
    assert_usage_error(
        lmforge("embed", "--model", model_dir, "--input", corpus, "--out", "x.npy", "--pooling", "max"), "max"
    )
