"""bf16 autocast on every pretraining path, on any CPU (emulated bf16 is slow but fine at these sizes):
training with evaluation and samples, a bitwise resume, and generation from the result with the static
KV cache, for a tiny GPT-2, a tiny Llama, a BERT (masked LM) and a T5 (span corruption)."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from test_pretrain_resume import corpus as code_like_corpus

import lmforge
from lmforge.data.prepare import PrepareConfig, prepare
from lmforge.train.metrics import read_metrics
from lmforge.train.pretrain import PretrainConfig, pretrain

KINDS = {"clm": "bpe", "mlm": "wordpiece", "span": "unigram"}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """Token files of a small code-like corpus, one directory per tokenizer kind."""
    root = tmp_path_factory.mktemp("bf16")
    corpus = code_like_corpus(root / "corpus", n_files=8)
    dirs = {}
    for objective, kind in KINDS.items():
        out = root / f"data-{objective}"
        prepare(
            PrepareConfig(
                data=[str(corpus)], out=str(out), vocab_size=320, tokenizer_kind=kind, val_fraction=0.2
            ),
            progress=False,
        )
        dirs[objective] = out
    return dirs


def _pretrain(out, data, preset: str, objective: str, max_steps: int, *, resume: bool = False) -> dict:
    config = PretrainConfig(
        data=[str(data)],
        out=str(out),
        preset=preset,
        objective=objective,
        max_steps=max_steps,
        batch_size=4,
        seq_len=32,
        eval_every=2,
        eval_batches=1,
        save_every=2,
        sample_tokens=8,
        warmup_steps=2,
        precision="bfloat16",
        progress=False,
        resume=resume,
        seed=3,
    )
    return pretrain(config)


CASES = [("tiny", "clm"), ("llama-tiny", "clm"), ("bert-tiny", "mlm"), ("t5-tiny", "span")]


@pytest.mark.parametrize(("preset", "objective"), CASES)
def test_bf16_training_samples_and_resumes_bit_for_bit(tmp_path, prepared, preset, objective, capsys):
    data = prepared[objective]
    whole = _pretrain(tmp_path / "whole", data, preset, objective, 4)
    _pretrain(tmp_path / "cut", data, preset, objective, 2)
    resumed = _pretrain(tmp_path / "cut", data, preset, objective, 4, resume=True)
    printed = capsys.readouterr().out
    assert "precision: bfloat16 (asked for)" in printed
    assert "--- sample at step 2 ---" in printed and "--- sample at step 4 ---" in printed
    assert resumed["loss"] == whole["loss"] and resumed["val_loss"] == whole["val_loss"]
    rows = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "cut" / "metrics.jsonl")}
    assert rows == {r["step"]: r["loss"] for r in read_metrics(tmp_path / "whole" / "metrics.jsonl")}
    a, b = (
        load_file(tmp_path / "whole" / "model.safetensors"),
        load_file(tmp_path / "cut" / "model.safetensors"),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("preset", ["tiny", "llama-tiny"])
def test_a_bf16_model_generates_with_the_static_cache(tmp_path, prepared, preset):
    """bf16 weights: greedy on the static cache equals recomputing every step; batched, sampled, beam
    and streamed generation run; float32 weights under bf16 autocast generate too."""
    _pretrain(tmp_path / "run", prepared["clm"], preset, "clm", 2)
    tok = lmforge.load_tokenizer(tmp_path / "run")
    model = lmforge.load_model(tmp_path / "run", dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    greedy = {"max_new_tokens": 12, "temperature": 0.0}
    cached = lmforge.generate(model, tok, "def value", **greedy)
    assert cached == lmforge.generate(model, tok, "def value", use_cache=False, **greedy)
    batched = lmforge.generate(model, tok, ["def value", "class"], **greedy)
    assert batched[0] == cached and isinstance(batched[1], str)
    assert "".join(lmforge.generate(model, tok, "def value", stream=True, **greedy)) == cached
    sampled = lmforge.generate(
        model, tok, "def", max_new_tokens=8, temperature=0.8, top_k=20, top_p=0.9, seed=1
    )
    assert sampled == lmforge.generate(
        model, tok, "def", max_new_tokens=8, temperature=0.8, top_k=20, top_p=0.9, seed=1
    )
    assert isinstance(lmforge.generate(model, tok, "def", max_new_tokens=6, num_beams=3), str)
    model32 = lmforge.load_model(tmp_path / "run")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = lmforge.generate(model32, tok, "def value", **greedy)
        assert autocast == lmforge.generate(model32, tok, "def value", use_cache=False, **greedy)
        assert isinstance(lmforge.generate(model32, tok, "def", max_new_tokens=6, num_beams=3), str)


def test_float16_scales_the_loss_and_resumes_the_scaler_bit_for_bit(tmp_path, prepared, monkeypatch):
    """CUDA's float16 path, run on the CPU: a GradScaler scales the loss, an overflowing step is skipped
    (not fatal), and its state is in the checkpoint, so a resumed run equals an uninterrupted one."""
    from lmforge.device import Precision
    from lmforge.train import loop

    forced = Precision(torch.float16, "CUDA's float16 path, forced on the CPU for this test")
    monkeypatch.setattr(loop, "choose_precision", lambda *args, **kwargs: forced)
    data = prepared["clm"]
    whole = _pretrain(tmp_path / "whole", data, "tiny", "clm", 4)
    _pretrain(tmp_path / "cut", data, "tiny", "clm", 2)
    resumed = _pretrain(tmp_path / "cut", data, "tiny", "clm", 4, resume=True)
    assert resumed["loss"] == whole["loss"]
    state = json.loads(
        (tmp_path / "cut" / "checkpoints" / "step-00000002" / "trainer_state.json").read_text()
    )
    assert state["precision"] == "float16" and state["grad_scaler"]["scale"] > 0
    losses = [
        {r["step"]: r["loss"] for r in read_metrics(tmp_path / d / "metrics.jsonl")} for d in ("whole", "cut")
    ]
    assert losses[0] == losses[1] and all(math.isfinite(v) for v in losses[0].values())
    a, b = (
        load_file(tmp_path / "whole" / "model.safetensors"),
        load_file(tmp_path / "cut" / "model.safetensors"),
    )
    assert all(torch.equal(a[k], b[k]) for k in a)
