"""Broken, foreign and unsafe checkpoints are refused with one clear message."""

import json
import os

import pytest
import torch
from conftest import make_hf_gpt2

from lmforge.errors import LmforgeError
from lmforge.hf import load_model


class Payload:
    """An object whose unpickling would run code (os.system); weights_only must refuse it."""

    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/lmforge-pwned",))


def test_missing_directory(tmp_path):
    with pytest.raises(LmforgeError, match="no checkpoint directory"):
        load_model(tmp_path / "nope")


def test_missing_config(tmp_path):
    with pytest.raises(LmforgeError, match=r"config\.json"):
        load_model(tmp_path)


def test_corrupt_config(tmp_path):
    make_hf_gpt2(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(LmforgeError, match="not valid JSON"):
        load_model(tmp_path)


def test_corrupt_weights(tmp_path):
    make_hf_gpt2(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(LmforgeError, match="corrupt"):
        load_model(tmp_path)


def test_truncated_weights(tmp_path):
    make_hf_gpt2(tmp_path)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(LmforgeError):
        load_model(tmp_path)


def test_unsupported_model_type_names_the_supported_ones(tmp_path):
    make_hf_gpt2(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["model_type"] = "mamba"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(LmforgeError, match=r"unsupported model type 'mamba'.*gpt2.*llama"):
        load_model(tmp_path)


def test_pickle_with_code_is_refused_and_never_run(tmp_path):
    make_hf_gpt2(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save({"weights": Payload()}, tmp_path / "pytorch_model.bin")
    if os.path.exists("/tmp/lmforge-pwned"):
        os.remove("/tmp/lmforge-pwned")
    with pytest.raises(LmforgeError, match="refusing"):
        load_model(tmp_path)
    assert not os.path.exists("/tmp/lmforge-pwned")


def test_weights_that_do_not_match_config(tmp_path):
    make_hf_gpt2(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["n_embd"] = 64
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(LmforgeError, match="shape"):
        load_model(tmp_path)
