"""The GPU section: the 124M GPT-2 shape's decoding (batch 1 and 8) and training on a CUDA device,
lmforge against `transformers`, measured as the CPU sections measure them (bench/generate.py and
bench/train.py, with device "cuda"). Without a CUDA device the section says it was not measured, and why.
"""

from __future__ import annotations

GENERATE = (("gpt2", 1, 128, 128), ("gpt2", 8, 128, 128))  # (preset, batch, longest prompt, new tokens)
TRAIN = (("gpt2", 8, 512),)  # (preset, batch, sequence length): a batch a GPU fills
PRECISIONS = ("float32", "bfloat16")


def run(*, warmup: int, repeats: int) -> dict:
    """{"skipped": why} without CUDA; else measure() on the first CUDA device."""
    import torch

    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device on this machine (torch.cuda.is_available() is False)"}
    result = measure("cuda", GENERATE, TRAIN, warmup=warmup, repeats=repeats)
    return {"device": torch.cuda.get_device_name(0), **result}


def measure(device: str, generate_cases, train_cases, *, warmup: int, repeats: int) -> dict:
    """The generation and training rows of every case and precision on `device` (tests run it on the
    CPU with tiny shapes: the same code as on a GPU)."""
    from bench import generate, train

    rows = [
        generate.run_case(
            generate.GenerateCase(shape, precision, batch, prompt, new, device=device),
            warmup=warmup,
            repeats=repeats,
        )
        for precision in PRECISIONS
        for shape, batch, prompt, new in generate_cases
    ]
    trains = [
        train.run_case(
            train.TrainCase(shape, batch, seq, precision, device=device),
            peak=None,  # no matmul ceiling measured on the GPU: no MFU
            warmup=warmup,
            repeats=repeats,
            memory_steps=0,
        )
        for precision in PRECISIONS
        for shape, batch, seq in train_cases
    ]
    return {"generate": rows, "train": trains}
