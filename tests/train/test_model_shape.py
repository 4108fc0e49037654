"""A model's shape from flags: `pretrain --preset tiny --n-layers 2 --d-model 96 --n-heads 3` trains and
saves that shape (transformers opens it); a shape that does not fit its family is one line before any
data work; fine-tuning takes --dropout."""

import json

import pytest
import torch
from lmforge_cli import assert_one_line_error, run_lmforge
from test_pretrain_resume import data_dir  # noqa: F401  (a fixture)

import lmforge
from lmforge.errors import LmforgeError
from lmforge.models import get_preset
from lmforge.train.pretrain import PretrainConfig

SHORT = ["--max-steps", 2, "--seq-len", 32, "--eval-every", 2, "--sample-tokens", 0, "--no-progress"]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("preset", "flags", "expected"),
    [
        (
            "tiny",
            ["--n-layers", 2, "--d-model", 96, "--n-heads", 3],
            {"n_embd": 96, "n_layer": 2, "n_head": 3},
        ),
        (
            "llama-tiny",
            ["--d-model", 64, "--n-heads", 4, "--n-kv-heads", 2, "--d-ff", 96, "--rope-theta", 500000.0],
            {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16},
        ),
    ],
)
def test_the_shape_given_is_trained_and_saved(tmp_path, data_dir, preset, flags, expected):  # noqa: F811
    import transformers

    out = tmp_path / "run"
    result = run_lmforge("pretrain", "--data", data_dir, "--preset", preset, *flags, *SHORT, "--out", out)
    assert result.returncode == 0, result.stderr
    saved = json.loads((out / "config.json").read_text())
    assert {k: saved.get(k) for k in expected} == expected
    ours = lmforge.load_model(out)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.tensor([[1, 5, 9, 3]])
    torch.testing.assert_close(ours(ids), theirs(ids).logits, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"n_heads": 5}, "--n-heads 5 does not divide --d-model 64"),
        ({"preset": "llama-tiny", "n_kv_heads": 3}, "--n-kv-heads 3 does not divide"),
        ({"n_kv_heads": 2}, "--n-kv-heads does not apply to preset 'tiny' (a gpt2 model"),
        ({"preset": "t5-tiny", "rope_theta": 1e4}, "--rope-theta does not apply"),
        ({"dropout": 1.0}, "dropout"),
        ({"d_model": 0}, "d_model"),
        ({"max_seq_len": 16, "seq_len": 32}, "--max-seq-len 16 is shorter than --seq-len 32"),
    ],
)
def test_a_shape_that_does_not_fit_its_family_is_one_line(overrides, needle):
    with pytest.raises(LmforgeError, match=needle.replace("(", r"\(").replace("'", ".")) as info:
        PretrainConfig(**{"preset": "tiny", **overrides})
    assert "\n" not in str(info.value)


def test_the_cli_refuses_a_bad_shape_before_any_data_work(tmp_path):
    result = run_lmforge(
        "pretrain", "--preset", "llama-tiny", "--d-model", 66, "--n-heads", 4, "--out", tmp_path
    )
    assert_one_line_error(result, "does not divide --d-model 66")
    assert not (tmp_path / "data").exists()


def test_derived_sizes_follow_the_overridden_ones():
    assert get_preset("tiny", d_model=96).d_ff == 4 * 96
    llama = get_preset("llama-tiny", d_model=64, n_heads=4)
    assert llama.d_head == 16


def test_finetune_dropout_reaches_every_dropout_and_the_saved_config(tmp_path):
    import transformers

    base = tmp_path / "base"
    torch.manual_seed(0)
    transformers.BertModel(
        transformers.BertConfig(
            hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, vocab_size=99
        )
    ).save_pretrained(base)
    model = lmforge.load_model(base)
    model.set_dropout(0.3)
    dropouts = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and set(dropouts) == {0.3} and model.config.dropout == 0.3
    model.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert saved["hidden_dropout_prob"] == saved["attention_probs_dropout_prob"] == 0.3
