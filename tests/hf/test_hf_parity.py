"""Hugging Face checkpoints load in lmforge with identical logits, and lmforge's saves load in transformers."""

import json

import pytest
import torch
from conftest import _quiet_transformers, make_hf_gpt2, make_hf_llama

from lmforge.hf import load_model

LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
}

CASES = {
    "gpt2": lambda p: make_hf_gpt2(p),
    "gpt2-odd": lambda p: make_hf_gpt2(p, vocab_size=97, n_embd=36, n_layer=1, n_head=3, n_positions=40),
    "llama-gqa-untied": lambda p: make_hf_llama(p),
    "llama-gqa-tied": lambda p: make_hf_llama(p, tie=True),
    "llama-mha-odd": lambda p: make_hf_llama(
        p, vocab_size=89, hidden_size=30, n_heads=5, n_kv_heads=5, intermediate_size=77, n_layers=3
    ),
    "llama-mqa-llama3-rope": lambda p: make_hf_llama(p, n_kv_heads=1, rope_scaling=LLAMA3_SCALING),
}


def _logits(hf_model, ids):
    with torch.no_grad():
        return hf_model(ids).logits


@pytest.mark.parametrize("case", list(CASES))
def test_hf_checkpoint_loads_with_identical_logits(tmp_path, case):
    hf_model = CASES[case](tmp_path / "hf")
    model = load_model(tmp_path / "hf")
    assert not model.training and model.dtype == torch.float32
    ids = torch.randint(0, hf_model.config.vocab_size, (3, 37))
    with torch.no_grad():
        assert torch.allclose(model(ids), _logits(hf_model, ids), atol=1e-4, rtol=0)


@pytest.mark.parametrize("case", list(CASES))
def test_lmforge_save_loads_in_transformers(tmp_path, case):
    transformers = _quiet_transformers()
    CASES[case](tmp_path / "hf")
    model = load_model(tmp_path / "hf")
    model.save_pretrained(tmp_path / "ours")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 29))
    with torch.no_grad():
        assert torch.allclose(model(ids), _logits(reloaded, ids), atol=1e-4, rtol=0)
    again = load_model(tmp_path / "ours")  # and lmforge reads its own save back exactly
    with torch.no_grad():
        assert torch.equal(again(ids), model(ids))


def test_sharded_safetensors_both_directions(tmp_path):
    hf_model = make_hf_llama(tmp_path / "hf")
    hf_model.save_pretrained(tmp_path / "hf-sharded", max_shard_size="20KB")
    assert (tmp_path / "hf-sharded" / "model.safetensors.index.json").exists()
    model = load_model(tmp_path / "hf-sharded")
    ids = torch.randint(0, 101, (1, 16))
    with torch.no_grad():
        assert torch.allclose(model(ids), _logits(hf_model, ids), atol=1e-4, rtol=0)
    model.save_pretrained(tmp_path / "ours-sharded", max_shard_size=20_000)
    assert len(list((tmp_path / "ours-sharded").glob("model-*-of-*.safetensors"))) > 1
    transformers = _quiet_transformers()
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours-sharded").eval()
    with torch.no_grad():
        assert torch.allclose(model(ids), _logits(reloaded, ids), atol=1e-4, rtol=0)


def test_pytorch_model_bin_loads_through_weights_only(tmp_path):
    hf_model = make_hf_gpt2(tmp_path / "hf")
    ckpt = tmp_path / "bin"
    ckpt.mkdir()
    (ckpt / "config.json").write_text((tmp_path / "hf" / "config.json").read_text())
    torch.save(hf_model.state_dict(), ckpt / "pytorch_model.bin")
    model = load_model(ckpt)
    ids = torch.randint(0, 101, (1, 12))
    with torch.no_grad():
        assert torch.allclose(model(ids), _logits(hf_model, ids), atol=1e-4, rtol=0)


def test_bfloat16_load(tmp_path):
    make_hf_gpt2(tmp_path / "hf")
    model = load_model(tmp_path / "hf", dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    assert model(torch.randint(0, 101, (1, 8))).dtype == torch.bfloat16


@pytest.mark.parametrize("stored", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("preset", ["tiny", "llama-tiny", "bert-tiny", "t5-tiny"])
def test_a_checkpoint_stored_in_half_precision_round_trips(tmp_path, preset, stored):
    """Saved in bf16 or fp16 (config torch_dtype says so), every family reopens in lmforge, in float32
    by default or in the stored dtype, with the stored weights exactly; transformers opens it too."""
    from lmforge.models import build_model, get_preset

    transformers = _quiet_transformers()
    torch.manual_seed(0)
    model = build_model(get_preset(preset, max_seq_len=32)).eval().to(stored)
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == str(stored).removeprefix(
        "torch."
    )
    as_float32, as_stored = load_model(tmp_path), load_model(tmp_path, dtype=stored)
    assert as_float32.dtype == torch.float32 and as_stored.dtype == stored
    for (name, a), b, c in zip(
        model.state_dict().items(), as_stored.state_dict().values(), as_float32.state_dict().values()
    ):
        assert torch.equal(a, b) and torch.equal(a.float(), c), name
    ids = torch.randint(0, model.config.vocab_size, (2, 9))
    with torch.no_grad():
        if preset == "t5-tiny":
            out = as_stored(ids, decoder_input_ids=ids[:, :3])
        else:
            out = as_stored(ids)
    out = out[0] if isinstance(out, tuple) else out
    assert out.dtype == stored and torch.isfinite(out.float()).all()
    if preset in ("tiny", "llama-tiny"):
        hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, torch_dtype="auto")
        assert hf.dtype == stored
