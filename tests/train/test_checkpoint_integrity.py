"""A damaged latest checkpoint is named in one line and `--resume` continues from the newest intact
one, giving the losses of a run that was never interrupted; with none intact, one error line.

Real subprocesses: one uninterrupted run writes checkpoints at steps 4, 8 and 12; each test copies
its run directory, damages step 12 and resumes to step 12 (from step 8, re-training 8-12).
"""

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file
from test_pretrain_resume import COMMON, data_dir, losses, run  # noqa: F401  (data_dir is a fixture)

from lmforge.train.checkpoint import _write_manifest

pytestmark = pytest.mark.slow  # a pretraining run, then a resume in a real subprocess per damage

STEPS = 12


def _args(data, out) -> list:
    return ["pretrain", *COMMON, "--data", data, "--out", out, "--save-every", "4", "--max-steps", STEPS]


@pytest.fixture(scope="module")
def straight(tmp_path_factory, data_dir):  # noqa: F811
    out = tmp_path_factory.mktemp("integrity") / "straight"
    done = run(*_args(data_dir, out))
    assert done.returncode == 0, done.stderr
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["step-00000004", "step-00000008", "step-00000012"]
    assert all((out / "checkpoints" / c / "manifest.json").is_file() for c in ckpts)
    assert not (out / "manifest.json").exists()  # the exported model directory has none
    return out


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # inside the last tensor's bytes: the header still parses
    path.write_bytes(bytes(data))


def _garbage(path: Path) -> None:
    path.write_bytes(b"\x00garbage, not safetensors\xff" * 10)


def _edit_state(edit):
    def apply(path: Path) -> None:
        state = json.loads(path.read_text())
        edit(state)
        path.write_text(json.dumps(state))

    return apply


def _nonfinite(value: float):
    """Write `value` into a floating tensor and re-sign the manifest, as a run that saved diverged
    weights would have: every file verifies, only the values are wrong."""

    def apply(path: Path) -> None:
        state = load_file(path)
        name = next(k for k, t in state.items() if t.is_floating_point())
        state[name] = state[name].clone()
        state[name].view(-1)[:3] = value
        save_file(state, path)
        _write_manifest(path.parent)

    return apply


def _string_step(state):
    state["step"] = "twelve"


def _drop_rng(state):
    del state["rng"]


DAMAGE = {
    "truncated optimizer": ("optimizer.safetensors", _truncate, "optimizer.safetensors has"),
    "flipped byte in weights": ("model.safetensors", _flip_byte, "model.safetensors does not match"),
    "garbage rng": ("rng.safetensors", _garbage, "rng.safetensors has"),
    "string step": ("trainer_state.json", _edit_state(_string_step), "trainer_state.json"),
    "missing manifest": ("manifest.json", Path.unlink, "manifest.json is missing"),
    "NaN weights": (
        "model.safetensors",
        _nonfinite(float("nan")),
        "model.safetensors has non-finite values in",
    ),
    "Inf optimizer moments": ("optimizer.safetensors", _nonfinite(float("inf")), "(3 Inf)"),
}


def _damage_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "is damaged" in line]


@pytest.mark.parametrize("kind", DAMAGE)
def test_damaged_latest_checkpoint_falls_back_to_the_previous(tmp_path, data_dir, straight, kind):  # noqa: F811
    name, damage, reason = DAMAGE[kind]
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    latest = out / "checkpoints" / "step-00000012"
    damage(latest / name)

    resumed = run(*_args(data_dir, out), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Traceback" not in resumed.stderr
    lines = _damage_lines(resumed.stdout + resumed.stderr)
    assert len(lines) == 1, lines
    assert f"checkpoint {latest} is damaged" in lines[0] and reason in lines[0], lines[0]
    assert "resuming from step-00000008" in lines[0]
    assert losses(out) == losses(straight)


def _garbage_json(path: Path) -> None:
    path.write_text('{"step": 12, "rng": ')


@pytest.mark.parametrize("damage", [_edit_state(_string_step), _edit_state(_drop_rng), _garbage_json])
def test_unverified_old_checkpoint_is_still_validated(tmp_path, data_dir, straight, damage):  # noqa: F811
    """A checkpoint without a manifest (written before manifests) resumes unverified, but its
    trainer_state.json is still validated: a wrong type or a missing key is one line, not a traceback."""
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    for ckpt in (out / "checkpoints").iterdir():  # make every checkpoint look old
        (ckpt / "manifest.json").unlink()
        state = json.loads((ckpt / "trainer_state.json").read_text())
        del state["format"]
        (ckpt / "trainer_state.json").write_text(json.dumps(state))
    latest = out / "checkpoints" / "step-00000012"
    damage(latest / "trainer_state.json")

    resumed = run(*_args(data_dir, out), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    lines = _damage_lines(resumed.stdout + resumed.stderr)
    assert len(lines) == 1 and "trainer_state.json" in lines[0], lines
    assert losses(out) == losses(straight)


def test_no_intact_checkpoint_is_one_error_line(tmp_path, data_dir, straight):  # noqa: F811
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    for ckpt in (out / "checkpoints").iterdir():
        (ckpt / "trainer_state.json").write_text("{not json")

    resumed = run(*_args(data_dir, out), "--resume")
    assert resumed.returncode == 2, resumed.stderr[-3000:]
    assert "Traceback" not in resumed.stderr
    last = resumed.stderr.strip().splitlines()[-1]
    assert last.startswith("lmforge: error: no intact checkpoint"), last
    assert "step-00000012 is damaged: trainer_state.json" in last
