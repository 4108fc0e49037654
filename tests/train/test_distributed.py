"""`torchrun --nproc-per-node 2` (gloo on CPU) trains exactly like one process with the same global batch."""

import json
import os
import subprocess
import sys

import pytest
from test_pretrain_resume import corpus

from lmforge.data.prepare import PrepareConfig, prepare

pytestmark = pytest.mark.slow  # torchrun with two processes, against one process

ARGS = [
    "--preset",
    "tiny",
    "--seq-len",
    "32",
    "--max-steps",
    "20",
    "--eval-every",
    "10",
    "--eval-batches",
    "2",
    "--save-every",
    "10",
    "--sample-tokens",
    "0",
    "--no-progress",
    "--precision",
    "float32",
    "--seed",
    "3",
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    prepare(
        PrepareConfig(data=[str(corpus(root / "text"))], out=str(root / "data"), vocab_size=300),
        progress=False,
    )
    return root / "data"


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _run(cmd):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.fixture(scope="module")
def single(tmp_path_factory, data_dir):
    """The one-process run (batch 8) that DDP and FSDP2 are both compared with."""
    out = tmp_path_factory.mktemp("single") / "run"
    _run(
        [
            sys.executable,
            "-m",
            "lmforge",
            "pretrain",
            "--data",
            str(data_dir),
            *ARGS,
            "--batch-size",
            "8",
            "--out",
            str(out),
        ]
    )
    return out


@pytest.mark.parametrize("fsdp", [False, True], ids=["ddp", "fsdp2"])
def test_two_processes_equal_one_with_the_same_global_batch(tmp_path, data_dir, single, fsdp):
    multi = tmp_path / "multi"
    _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "lmforge",
            "pretrain",
            "--data",
            str(data_dir),
            *ARGS,
            "--batch-size",
            "4",
            "--out",
            str(multi),
            *(["--fsdp"] if fsdp else []),
        ]
    )
    one, two = _rows(single), _rows(multi)
    assert [r["step"] for r in one] == [r["step"] for r in two] == list(range(1, 21))
    for a, b in zip(one, two):
        assert abs(a["loss"] - b["loss"]) < 1e-5, (a["step"], a["loss"], b["loss"])
    assert abs(one[-1]["val_loss"] - two[-1]["val_loss"]) < 1e-5
    assert (multi / "model.safetensors").is_file() and (multi / "checkpoints" / "step-00000020").is_dir()
