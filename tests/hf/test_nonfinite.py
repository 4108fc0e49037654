"""Weights holding NaN or Inf are refused by name when a checkpoint is loaded (--allow-nonfinite loads
them with a warning, for inspection), and a training checkpoint holding them counts as damaged."""

import pytest
import torch
from conftest import make_hf_gpt2
from lmforge_cli import assert_one_line_error, run_lmforge
from safetensors.torch import load_file, save_file

from lmforge.errors import LmforgeError
from lmforge.hf import load_model
from lmforge.hf.checkpoint import nonfinite_tensors

Q_KV = "transformer.h.1.attn.c_attn.weight"  # GPT-2's stored names: the message names what the file holds
MLP = "transformer.h.0.mlp.c_fc.bias"


def damage(path, values: dict[str, tuple[float, int]]) -> None:
    """Write `count` copies of `value` into each named tensor of a safetensors file."""
    state = load_file(path)
    for name, (value, count) in values.items():
        state[name] = state[name].clone()
        state[name].view(-1)[:count] = value
    save_file(state, path, metadata={"format": "pt"})


@pytest.fixture
def checkpoint(tmp_path, bpe):
    """A tiny GPT-2 with a tokenizer, so that `lmforge generate` runs on it."""
    make_hf_gpt2(tmp_path / "gpt2", vocab_size=bpe.vocab_size)
    bpe.save_pretrained(tmp_path / "gpt2")
    return tmp_path / "gpt2"


def test_nan_and_inf_are_named_with_their_counts(checkpoint):
    damage(checkpoint / "model.safetensors", {Q_KV: (float("nan"), 12), MLP: (float("-inf"), 3)})
    with pytest.raises(LmforgeError) as e:
        load_model(checkpoint)
    message = str(e.value)
    assert "\n" not in message
    assert f"{checkpoint / 'model.safetensors'} has non-finite values in" in message
    assert f"{Q_KV} (12 NaN)" in message and f"{MLP} (3 Inf)" in message
    assert "--allow-nonfinite" in message


def test_allow_nonfinite_loads_with_one_warning(checkpoint, capsys):
    damage(checkpoint / "model.safetensors", {Q_KV: (float("inf"), 5)})
    model = load_model(checkpoint, allow_nonfinite=True)
    assert not torch.isfinite(model.state_dict()["blocks.1.attn.q_proj.weight"]).all()  # c_attn holds q first
    warning = capsys.readouterr().err.strip().splitlines()
    assert (
        len(warning) == 1 and warning[0].startswith("lmforge: warning:") and f"{Q_KV} (5 Inf)" in warning[0]
    )


def test_many_damaged_tensors_are_counted_past_the_first_few(checkpoint):
    state = load_file(checkpoint / "model.safetensors")
    damage(checkpoint / "model.safetensors", {k: (float("nan"), 1) for k in state if k.endswith("weight")})
    with pytest.raises(LmforgeError, match=r"\(1 NaN\).* and \d+ more tensors;"):
        load_model(checkpoint)


def test_each_shard_is_checked(tmp_path):
    hf = make_hf_gpt2(tmp_path / "src")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    shards = sorted((tmp_path / "sharded").glob("model-*.safetensors"))
    assert len(shards) > 1
    name = next(iter(load_file(shards[-1])))
    damage(shards[-1], {name: (float("nan"), 2)})
    with pytest.raises(LmforgeError, match=rf"{shards[-1].name} has non-finite values in {name} \(2 NaN\)"):
        load_model(tmp_path / "sharded")


def test_integer_and_finite_tensors_pass_and_overflowing_sums_are_not_reported():
    big = torch.full((4,), 3e38)  # finite, but its sum overflows to inf: counted exactly, then cleared
    half = torch.full((8,), 60000.0, dtype=torch.float16)
    tensors = {"ids": torch.arange(5), "big": big, "half": half, "ok": torch.randn(3)}
    assert nonfinite_tensors(tensors) == []
    tensors["half"][1] = float("nan")
    bf16 = torch.tensor([1.0, float("inf"), float("-inf")], dtype=torch.bfloat16)
    assert nonfinite_tensors({**tensors, "bf16": bf16}) == [("half", 1, 0), ("bf16", 0, 2)]


def test_generate_refuses_a_nonfinite_checkpoint_in_one_line(checkpoint):
    damage(checkpoint / "model.safetensors", {Q_KV: (float("nan"), 12)})
    result = run_lmforge("generate", "--model", checkpoint, "--prompt", "hi", "--max-new-tokens", 4)
    assert_one_line_error(result, f"{Q_KV} (12 NaN)", "model.safetensors", "--allow-nonfinite")
    assert result.stdout == ""


@pytest.mark.slow
def test_generate_with_allow_nonfinite_loads_and_warns(checkpoint):
    damage(checkpoint / "model.safetensors", {Q_KV: (float("nan"), 12)})
    args = ("generate", "--model", checkpoint, "--prompt", "hi", "--max-new-tokens", 4)
    result = run_lmforge(*args, "--allow-nonfinite", "--temperature", 0)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("lmforge: warning:")]
    assert len(warnings) == 1 and f"{Q_KV} (12 NaN)" in warnings[0]
    sampled = run_lmforge(*args, "--allow-nonfinite", "--temperature", 1, "--seed", 0)
    assert sampled.returncode == 0 and "Traceback" not in sampled.stderr, sampled.stderr


@pytest.mark.slow
def test_adapter_weights_are_checked_too(checkpoint, tmp_path, capsys):
    from lmforge.hf.peft import load_adapter, save_adapter
    from lmforge.nn.lora import apply_lora

    model = load_model(checkpoint)
    apply_lora(model, targets=("o_proj",), r=2, alpha=4)
    save_adapter(model, tmp_path / "adapter")
    name = next(iter(load_file(tmp_path / "adapter" / "adapter_model.safetensors")))
    damage(tmp_path / "adapter" / "adapter_model.safetensors", {name: (float("nan"), 1)})
    with pytest.raises(
        LmforgeError, match=rf"adapter_model\.safetensors has non-finite values in {name} \(1 NaN\)"
    ):
        load_adapter(load_model(checkpoint), tmp_path / "adapter")
    load_adapter(load_model(checkpoint), tmp_path / "adapter", allow_nonfinite=True)
    assert f"{name} (1 NaN); loaded anyway" in capsys.readouterr().err

    args = (
        "merge-lora",
        "--model",
        checkpoint,
        "--adapter",
        tmp_path / "adapter",
        "--out",
        tmp_path / "merged",
    )
    assert_one_line_error(run_lmforge(*args), f"{name} (1 NaN)")
    assert not (tmp_path / "merged").exists()
    merged = run_lmforge(*args, "--allow-nonfinite")
    assert merged.returncode == 0 and "Traceback" not in merged.stderr, merged.stderr
    assert merged.stderr.count("lmforge: warning:") == 1
