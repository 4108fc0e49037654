"""Crash-proof training checkpoints, stored without pickle.

A checkpoint is a directory `OUT/checkpoints/step-NNNNNNNN/` that is also a Hugging Face model
directory (config.json, model.safetensors, tokenizer files), plus:
  optimizer.safetensors   every optimizer tensor, keyed "<parameter name>/<state name>"
  rng.safetensors         the torch RNG states (CPU and each CUDA device)
  trainer_state.json      step, data position, schedule, the resolved config, the Python and NumPy
                          RNG states, and a fingerprint of model, tokenizer and data
It is written to a temporary directory, fsynced, then renamed: a directory named step-N is
complete by construction, so a crash mid-write leaves the previous checkpoint as the latest.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lmforge.errors import LmforgeError

STEP_DIR = re.compile(r"step-(\d+)$")


def checkpoint_dirs(out: Path) -> list[Path]:
    """Complete checkpoints under OUT/checkpoints, oldest first."""
    root = Path(out) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(out: Path) -> Path | None:
    dirs = checkpoint_dirs(out)
    return dirs[-1] if dirs else None


def rng_state() -> tuple[dict, dict[str, torch.Tensor]]:
    """(JSON-able Python and NumPy states, torch state tensors)."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    json_state = {
        "python": [py_version, list(py_internal), py_gauss],
        "numpy": [np_state[0], np_state[1].tolist(), *map(float, np_state[2:])],
    }
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        tensors.update({f"torch_cuda_{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return json_state, tensors


def set_rng_state(json_state: dict, tensors: dict[str, torch.Tensor]) -> None:
    version, internal, gauss = json_state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = json_state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), int(pos), int(has_gauss), cached))
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])


def flatten_optimizer(optim_state: dict) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """A full optimizer state dict (keyed by parameter name) -> tensors + JSON param groups."""
    tensors = {}
    for name, state in optim_state["state"].items():
        for key, value in state.items():
            tensors[f"{name}/{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    groups = [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
        for g in optim_state["param_groups"]
    ]
    return tensors, groups


def unflatten_optimizer(tensors: dict[str, torch.Tensor], groups: list[dict]) -> dict:
    state: dict[str, dict] = {}
    for key, value in tensors.items():
        name, _, field = key.rpartition("/")
        state.setdefault(name, {})[field] = value
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in groups]
    return {"state": state, "param_groups": groups}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for f in path.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(path)


def write_checkpoint(
    out: Path, step: int, *, save_model, optim_state: dict, trainer_state: dict, keep_last: int | None
) -> Path:
    """Write checkpoint `step` atomically and prune old ones; returns its directory.

    save_model(dir) writes the Hugging Face model and tokenizer files. On any failed write (disk full,
    permission, file size limit) the temporary directory is removed and the previous checkpoint stays
    the latest.
    """
    root = Path(out) / "checkpoints"
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}-{os.getpid()}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save_model(tmp)
        tensors, groups = flatten_optimizer(optim_state)
        save_file(tensors, tmp / "optimizer.safetensors")
        rng_json, rng_tensors = rng_state()
        save_file(rng_tensors, tmp / "rng.safetensors")
        state = {**trainer_state, "step": step, "optimizer_param_groups": groups, "rng": rng_json}
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1) + "\n")
        _fsync_tree(tmp)
        if final.exists():  # re-saving a step (after a resume): replace it whole
            shutil.rmtree(final)
        os.rename(tmp, final)
        _fsync_dir(root)
    except (OSError, SafetensorError, LmforgeError) as e:
        # NOTE: safetensors reports I/O failures as SafetensorError, not OSError.
        shutil.rmtree(tmp, ignore_errors=True)
        previous = latest_checkpoint(out)
        kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
        reason = getattr(e, "strerror", None) or str(e)
        raise LmforgeError(f"could not write checkpoint {final}: {reason}; {kept}") from None
    if keep_last:
        for old in checkpoint_dirs(out)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def read_checkpoint(ckpt: Path) -> tuple[dict, dict, dict[str, torch.Tensor]]:
    """(trainer_state, optimizer state dict, rng tensors) of a checkpoint directory."""
    try:
        state = json.loads((ckpt / "trainer_state.json").read_text())
        optim = unflatten_optimizer(
            load_file(ckpt / "optimizer.safetensors"), state["optimizer_param_groups"]
        )
        rng = load_file(ckpt / "rng.safetensors")
    except (OSError, ValueError, KeyError) as e:
        raise LmforgeError(
            f"checkpoint {ckpt} is unreadable ({e}); delete it to resume from an earlier one"
        ) from None
    return state, optim, rng
