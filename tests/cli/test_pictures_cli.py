"""The commands that draw, run as users run them (real subprocesses): `lmforge inspect attention`,
`lmforge inspect positions` and `lmforge embed --map` each write a PNG that is not blank and say where;
bad input is one line and exit code 2, with nothing written."""

import pytest
import torch
from pictures import assert_drawn
from test_cli import assert_usage_error, lmforge

from lmforge.models import build_model, get_preset
from lmforge.tokenizers import train_tokenizer

LINES = [
    "The cat sat on the mat.",
    "A kitten sleeps on a rug.",
    "Stock prices fell on Monday.",
    "Markets fell.",
]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A random llama-tiny (a BPE tokenizer) and bert-tiny (WordPiece), saved as checkpoints."""
    root = tmp_path_factory.mktemp("models")
    (root / "lines.txt").write_text("\n".join(LINES * 5) + "\n")
    for name, preset, kind in (("llama", "llama-tiny", "bpe"), ("bert", "bert-tiny", "wordpiece")):
        tok = train_tokenizer([root / "lines.txt"], vocab_size=300 if kind == "bpe" else 120, kind=kind)
        torch.manual_seed(0)
        overrides = {"use_mlm_head": False} if kind == "wordpiece" else {}
        build_model(get_preset(preset, vocab_size=tok.vocab_size, **overrides)).save_pretrained(root / name)
        tok.save_pretrained(root / name)
    return root


def test_inspect_attention_draws_every_layer_and_head(models, tmp_path):
    out = tmp_path / "attn.png"
    r = lmforge("inspect", "attention", "--model", models / "llama", "--text", LINES[0], "--out", out)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("drew 4 layers x 4 heads of attention over ") and str(out) in r.stdout
    assert_drawn(out)


def test_inspect_positions_of_a_preset_needs_no_checkpoint(tmp_path):
    out = tmp_path / "pos.png"
    r = lmforge("inspect", "positions", "--preset", "llama-1b", "--positions", 64, "--out", out)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"drew the position encoding of 64 positions -> {out}\n"
    assert_drawn(out)


def test_embed_map_draws_the_lines(models, tmp_path):
    out = tmp_path / "map.png"
    r = lmforge("embed", "--model", models / "bert", "--input", models / "lines.txt", "--map", out)
    assert r.returncode == 0, r.stderr
    assert f"drew {len(LINES) * 5} texts on the first two principal components" in r.stdout
    assert_drawn(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map.png"]  # no .npy without --out


@pytest.mark.slow
def test_bad_input_is_one_line(models, tmp_path):
    llama, out = models / "llama", tmp_path / "x.png"
    attention = ("inspect", "attention", "--model", llama, "--out", out)
    assert_usage_error(
        lmforge(*attention, "--text", "a cat", "--layer", 4), "--layer 4 is out of range", "4 layers"
    )
    assert_usage_error(lmforge(*attention, "--text", "  "), "empty --text")
    assert_usage_error(lmforge(*attention[:-1], tmp_path / "no" / "x.png", "--text", "a"), "cannot write")
    assert_usage_error(lmforge(*attention, "--text", "a", "--head", -1), "--head")
    positions = ("inspect", "positions", "--out", out)
    assert_usage_error(lmforge(*positions, "--preset", "tiny"), "learns its position embeddings")
    assert_usage_error(lmforge(*positions, "--preset", "tiny", "--model", llama), "not allowed with")
    assert_usage_error(lmforge(*positions, "--preset", "huge"), "unknown preset 'huge'")
    one_line = tmp_path / "one.txt"
    one_line.write_text("just one\n")
    embed = ("embed", "--model", models / "bert")
    assert_usage_error(lmforge(*embed, "--input", models / "lines.txt"), "--out FILE.npy", "--map FILE.png")
    assert_usage_error(lmforge(*embed, "--input", one_line, "--map", out), "at least 2 lines")
    assert not out.exists()
