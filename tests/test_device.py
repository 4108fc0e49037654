"""Precision by measurement: what `auto` chooses on each kind of machine, tested on any machine by
standing in for the CPU's flags and the probe's measurement; the probe itself, run for real at a tiny size."""

import json
import math

import pytest
import torch

from lmforge import device
from lmforge.device import Precision, choose_precision, resolve_dtype
from lmforge.errors import LmforgeError


@pytest.fixture
def cpu(monkeypatch, tmp_path):
    """A CPU whose bf16 flag and measured bf16 speed-up the test sets; the cache in tmp_path."""
    monkeypatch.delenv(device.PRECISION_ENV, raising=False)
    monkeypatch.setenv("LMFORGE_CACHE", str(tmp_path))
    measured = []

    def machine(*, has_bf16: bool, speedup: float | None = None):
        monkeypatch.setattr(device, "cpu_has_native_bf16", lambda: has_bf16)

        def measure(d_model, d_ff):
            measured.append((d_model, d_ff))
            return speedup

        monkeypatch.setattr(device, "measure_bf16_speedup", measure)
        return measured

    return machine


def test_no_bf16_instructions_means_float32_without_measuring(cpu):
    measured = cpu(has_bf16=False)
    assert choose_precision("auto", "cpu") == Precision(torch.float32, "no bf16 instructions on this CPU")
    assert measured == []


def test_slow_bf16_is_measured_and_float32_chosen(cpu):
    """The Intel Xeon case: AVX512-BF16 present, bf16 matmuls at half the float32 speed."""
    cpu(has_bf16=True, speedup=0.54)
    chosen = choose_precision("auto", "cpu", sizes=(256, 1024))
    assert chosen.dtype == torch.float32
    assert str(chosen) == "float32 (bf16 measured 0.54x float32 on this CPU)"


def test_fast_bf16_is_measured_and_chosen(cpu):
    """The AMD Zen 4 case: bf16 matmuls 2.4x faster."""
    cpu(has_bf16=True, speedup=2.4)
    assert str(choose_precision("auto", "cpu")) == "bfloat16 (bf16 measured 2.40x float32 on this CPU)"


def test_inaccurate_bf16_means_float32(cpu):
    cpu(has_bf16=True, speedup=None)
    assert choose_precision("auto", "cpu").dtype == torch.float32


def test_the_measurement_is_cached_per_machine_and_size(cpu, tmp_path):
    measured = cpu(has_bf16=True, speedup=1.9)
    for _ in range(3):
        assert choose_precision("auto", "cpu", sizes=(64, 256)).dtype == torch.bfloat16
    choose_precision("auto", "cpu", sizes=(128, 512))
    assert measured == [(64, 256), (128, 512)]
    cached = json.loads((tmp_path / "precision.json").read_text())
    assert len(cached) == 2 and all(torch.__version__ in key for key in cached)


def test_an_unreadable_cache_is_measured_again(cpu, tmp_path):
    measured = cpu(has_bf16=True, speedup=1.9)
    (tmp_path / "precision.json").write_text("not json")
    assert choose_precision("auto", "cpu").dtype == torch.bfloat16
    assert len(measured) == 1


def test_forced_precisions_and_the_environment_variable(cpu, monkeypatch):
    measured = cpu(has_bf16=False)
    assert choose_precision("bfloat16", "cpu") == Precision(torch.bfloat16, "asked for")
    assert choose_precision("float32", "cpu").dtype == torch.float32
    monkeypatch.setenv(device.PRECISION_ENV, "bfloat16")
    assert choose_precision("auto", "cpu") == Precision(torch.bfloat16, f"set by {device.PRECISION_ENV}")
    assert choose_precision("float32", "cpu").dtype == torch.float32  # a flag still wins
    assert resolve_dtype(None) == torch.bfloat16  # the inference commands' default follows it too
    monkeypatch.setenv(device.PRECISION_ENV, "float32")
    assert resolve_dtype(None) == torch.float32
    monkeypatch.setenv(device.PRECISION_ENV, "half-ish")
    with pytest.raises(LmforgeError, match="LMFORGE_PRECISION"):
        choose_precision("auto", "cpu")
    assert measured == []


def test_float16_training_is_refused_on_a_cpu(cpu):
    cpu(has_bf16=False)
    with pytest.raises(LmforgeError, match="float16 training needs a CUDA GPU"):
        choose_precision("float16", "cpu")
    assert choose_precision("float16", "cpu", training=False).dtype == torch.float16
    with pytest.raises(LmforgeError, match="unknown precision"):
        choose_precision("float8", "cpu")


def test_the_probe_measures_a_real_ratio():
    """On any CPU (bf16 emulated or not) the probe runs at a tiny size and returns a positive ratio."""
    speedup = device.measure_bf16_speedup(32, 64, budget_s=0.05)
    assert speedup is not None and math.isfinite(speedup) and speedup > 0


def test_pretrain_refuses_float16_on_a_cpu_before_reading_any_data(tmp_path):
    from lmforge_cli import assert_one_line_error, run_lmforge

    result = run_lmforge("pretrain", "--preset", "tiny", "--precision", "float16", "--out", tmp_path / "run")
    assert_one_line_error(result, "float16 training needs a CUDA GPU", "bfloat16 or float32")
    assert not (tmp_path / "run" / "data").exists()
