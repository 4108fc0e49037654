"""The GPU section (bench/gpu.py): without CUDA it says so; its measuring code, run on the CPU with a
tiny shape (the same code a GPU runs, device aside), fills both tables."""

import torch

from bench import gpu, report


def test_without_cuda_the_section_says_not_measured(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = gpu.run(warmup=0, repeats=1)
    assert "no CUDA device" in result["skipped"]
    assert report._gpu(result) == f"## GPU\n\nNot measured: {result['skipped']}.\n"


def test_the_measuring_code_fills_both_tables():
    torch.set_num_threads(1)
    result = gpu.measure("cpu", [("tiny", 2, 8, 4)], [("tiny", 2, 16)], warmup=0, repeats=1)
    assert [r["precision"] for r in result["generate"]] == list(gpu.PRECISIONS)
    assert all(r["device"] == "cpu" and r["lmforge"]["decode_tokens_per_s"] > 0 for r in result["generate"])
    assert all(r["lmforge"]["tokens_per_s"] > 0 and r["lmforge"]["mfu"] is None for r in result["train"])
    text = report._gpu({"device": "a test CPU", **result})
    assert "### Decoding (GPU)" in text and "### Training (GPU)" in text and "a test CPU" in text
    assert text.count("| tiny |") == 4  # two precisions in each table
