"""The GPU section: the 124M GPT-2 shape decoding (batch 1 and 8) on a CUDA device, lmforge against
`transformers`, as the CPU sections measure them (bench/generate.py, bench/train.py with device "cuda").
Without a CUDA device the section says it was not measured, and why.
"""

from __future__ import annotations

GENERATE = (("gpt2", 1, 128, 128), ("gpt2", 8, 128, 128))  # (preset, batch, longest prompt, new tokens)
TRAIN = (("gpt2", 8, 512),)  # (preset, batch, sequence length): a batch a GPU fills


def run(*, warmup: int, repeats: int) -> dict:
    """{"skipped": why} without CUDA; else the device's name and the generation and training rows."""
    import torch

    from bench import generate, train

    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device on this machine (torch.cuda.is_available() is False)"}
    precisions = ("float32", "bfloat16")
    rows = [
        generate.run_case(
            generate.GenerateCase(shape, precision, batch, prompt, new, device="cuda"),
            warmup=warmup,
            repeats=repeats,
        )
        for precision in precisions
        for shape, batch, prompt, new in GENERATE
    ]
    trains = [
        train.run_case(
            train.TrainCase(shape, batch, seq, precision, device="cuda"),
            peak=None,
            warmup=warmup,
            repeats=repeats,
            memory_steps=0,
        )
        for precision in precisions
        for shape, batch, seq in TRAIN
    ]
    return {"device": torch.cuda.get_device_name(0), "generate": rows, "train": trains}
