"""The resume contract: a checkpoint records what fixes the data order (processes, per-process batch,
accumulation, sequence length, seed). A resume that changes the batch shape is refused naming each
change, or with --force continues from the same sample (converted exactly, in samples, not steps); a
changed sequence length or seed is refused even then: it would silently skip or repeat samples."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from lmforge_cli import assert_one_line_error
from test_pretrain_resume import COMMON, data_dir, losses, run  # noqa: F401  (data_dir is a fixture)


@pytest.fixture(scope="module")
def stopped(tmp_path_factory, data_dir):  # noqa: F811
    """A run stopped after 2 of its steps (batch 8, seq 64, seed 7, one process)."""
    out = tmp_path_factory.mktemp("contract") / "run"
    result = run("pretrain", "--data", data_dir, *COMMON, "--max-steps", 2, "--save-every", 2, "--out", out)
    assert result.returncode == 0, result.stderr
    return out


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flags", "named", "advice"),
    [
        (("--batch-size", 4), "--batch-size 8 -> 4", "pass --force"),
        (("--grad-accum", 2), "--grad-accum 1 -> 2", "pass --force"),
        (("--seq-len", 32), "--seq-len 64 -> 32", "cannot change within a run"),
        (("--seed", 8), "--seed 7 -> 8", "cannot change within a run"),
        (("--seed", 8, "--batch-size", 4, "--force"), "--batch-size 8 -> 4, --seed 7 -> 8", "cannot change"),
    ],
)
def test_a_changed_data_order_is_refused_naming_each_change(stopped, data_dir, flags, named, advice):  # noqa: F811
    before = losses(stopped)
    result = run(
        "pretrain", "--data", data_dir, *COMMON, "--max-steps", 4, "--out", stopped, "--resume", *flags
    )
    assert_one_line_error(result, "data order changed", named, advice, "resume with that run's values")
    assert losses(stopped) == before  # nothing trained, nothing lost


@pytest.mark.slow
def test_force_continues_a_changed_batch_from_the_same_sample(stopped, data_dir, tmp_path):  # noqa: F811
    out = tmp_path / "run"
    shutil.copytree(stopped, out)
    result = run(
        "pretrain", "--data", data_dir, *COMMON, "--max-steps", 4, "--out", out, "--resume", "--force",
        "--batch-size", 4,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (
        "--batch-size 8 -> 4): step 2 ended at sample 16; continuing from that sample, 4 samples a step"
        in (result.stdout)
    )
    state = json.loads((out / "checkpoints" / "step-00000004" / "trainer_state.json").read_text())
    assert state["data_position"] == {"step": 4, "samples": 16 + 2 * 4}
    assert sorted(losses(out)) == [1, 2, 3, 4]


@pytest.mark.slow
def test_the_same_values_resume(stopped, data_dir):  # noqa: F811
    result = run("pretrain", "--data", data_dir, *COMMON, "--max-steps", 3, "--out", stopped, "--resume")
    assert result.returncode == 0, result.stderr
    assert max(losses(stopped)) == 3


def torchrun(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m"]
    return subprocess.run(
        [*cmd, "lmforge", *map(str, args)], env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_one_process_to_two_continues_exactly_under_torchrun(tmp_path, data_dir):  # noqa: F811
    """2 steps in one process (grad-accum 2), then 2 under torchrun: each step equals an uninterrupted
    2-process run's (the same 8 samples a step, split over the processes instead of micro-batches)."""
    flags = ["--data", data_dir, *COMMON, "--max-steps", 4, "--save-every", 2, "--batch-size", 4]
    both = torchrun("pretrain", *flags, "--out", tmp_path / "both")
    assert both.returncode == 0, both.stderr[-3000:]
    out = tmp_path / "moved"
    first = run("pretrain", *flags, "--grad-accum", 2, "--max-steps", 2, "--out", out)
    assert first.returncode == 0, first.stderr

    refused = torchrun("pretrain", *flags, "--out", out, "--resume")
    assert refused.returncode != 0
    assert "data order changed (processes 1 -> 2, --grad-accum 2 -> 1); pass --force" in refused.stderr
    assert max(losses(out)) == 2

    moved = torchrun("pretrain", *flags, "--out", out, "--resume", "--force")
    assert moved.returncode == 0, moved.stderr[-3000:]
    assert "step 2 ended at sample 16; continuing from that sample, 8 samples a step" in moved.stdout
    expected, got = losses(tmp_path / "both"), losses(out)
    assert sorted(got) == sorted(expected) == [1, 2, 3, 4]
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-5), step


def test_force_never_skips_or_repeats_a_sample(tmp_path):
    """The samples each step takes, recorded in process: 2 steps of 4, then --force with 2 micro-batches
    of 3 and --epochs 1 over 20 samples: every sample exactly once, and the run ends with the epoch."""
    import torch

    from lmforge.models import build_model
    from lmforge.models.presets import get_preset
    from lmforge.train.distributed import World
    from lmforge.train.loop import TrainConfig, Trainer

    taken = []

    def train_batch(first: int, size: int) -> dict:
        taken.extend(range(first, first + size))
        ids = torch.arange(first, first + size * 9).reshape(size, 9) % 50
        return {"input_ids": ids[:, :-1], "labels": ids[:, 1:]}

    def fit(batch_size: int, **kw) -> None:
        config = TrainConfig(
            out=str(tmp_path), batch_size=batch_size, seq_len=8, save_every=2, eval_every=100,
            sample_tokens=0, precision="float32", progress=False, warmup_steps=0, **kw,
        )  # fmt: skip
        if config.epochs is not None:
            config.steps_for_epochs(20, world_size=1)
        torch.manual_seed(0)
        model = build_model(get_preset("tiny", vocab_size=50))
        batches = lambda first: train_batch(first, batch_size)  # noqa: E731
        Trainer(model, config, train_batch=batches, eval_batches=[], world=World()).fit()

    fit(4, max_steps=2)
    assert taken == list(range(8))
    fit(3, grad_accum=2, epochs=1.0, resume=True, force=True)
    assert sorted(taken) == list(range(20))  # 8 + 2 steps of 6 = the 20 samples of one epoch
    assert len(taken) == 20
