"""Reading and writing Hugging Face checkpoint directories.

A checkpoint is `config.json` plus weights in `model.safetensors`, or shards listed by
`model.safetensors.index.json`. Legacy `pytorch_model.bin` files are read only through
`torch.load(weights_only=True)` (torch >= 2.6, free of CVE-2025-32434), which refuses anything but
tensors: a checkpoint never runs code; reading one says, once, that safetensors is preferred.
Every floating weight is checked to be finite as it is read (a NaN or Inf is refused by name, unless
allow_nonfinite), and a file name read from the checkpoint's JSON (a shard) never leaves its directory.
A model that generates also has `generation_config.json` (its special token ids, as `transformers`
writes it); its EOS ids join the model's own when generating.
"""

from __future__ import annotations

import json
import pickle
import sys
from pathlib import Path, PurePosixPath, PureWindowsPath

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lmforge.errors import LmforgeError
from lmforge.hf.config import classifier_labels, from_hf_config, head_hf_fields, head_task, to_hf_config
from lmforge.hf.keys import from_hf_state, to_hf_state

SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
PICKLE, PICKLE_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
HEAD_FROM_EMBEDDING = ("t5",)  # families whose untied head, when missing, starts as the embedding
OPTIONAL_HEADS = ("pooler.",)  # heads a checkpoint may hold that a model may leave out
BASE = "base."  # a task model's (lmforge/models/heads.py) base model, stored under the family's names
GENERATION_CONFIG = "generation_config.json"
GENERATION_IDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
NONFINITE_SHOWN = 3  # the tensors a non-finite report names; the rest are counted
_legacy_noted: set[str] = set()  # the pickle files already reported as legacy (say it once)


def tied_weights(model) -> dict[str, str]:
    """{name: the name it shares its tensor with} for every tied parameter (an output head that
    reuses the token embedding); the first name of each shared tensor is the one stored."""
    first: dict[int, str] = {}
    tied = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            tied[name] = first[id(p)]
        else:
            first[id(p)] = name
    return tied


def resolve_checkpoint_dir(name_or_path: str | Path) -> Path:
    """A checkpoint directory: a local one, a known model's, or a hub id's in the cache (lmforge.hub)."""
    from lmforge.hub import resolve_model

    path = resolve_model(name_or_path)
    if path.suffix == ".gguf" and path.is_file():
        raise LmforgeError(
            f"{path} is a GGUF file; this needs a checkpoint directory (`lmforge convert` writes one)"
        )
    if not path.is_dir():
        raise LmforgeError(f"{path} is a file; pass the checkpoint directory that holds config.json")
    return path


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LmforgeError(f"{path.parent} has no {path.name}; is it a checkpoint directory?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LmforgeError(f"{path} is not valid JSON ({e}); the checkpoint is corrupt") from None
    if not isinstance(data, dict):
        raise LmforgeError(f"{path} should hold a JSON object; the checkpoint is corrupt")
    return data


def read_state_dict(ckpt_dir: Path, *, allow_nonfinite: bool = False) -> dict[str, torch.Tensor]:
    """Every tensor in the directory's weight files, by their stored names.

    A floating tensor holding NaN or Inf is refused by name; allow_nonfinite loads it anyway (for
    inspection), with one warning line on standard error.
    """
    if (ckpt_dir / SAFETENSORS).exists():
        files, load = [ckpt_dir / SAFETENSORS], read_safetensors
    elif (ckpt_dir / SAFETENSORS_INDEX).exists():
        files, load = _shard_files(ckpt_dir / SAFETENSORS_INDEX), read_safetensors
    elif (ckpt_dir / PICKLE).exists():
        files, load = [ckpt_dir / PICKLE], read_pickle
    elif (ckpt_dir / PICKLE_INDEX).exists():
        files, load = _shard_files(ckpt_dir / PICKLE_INDEX), read_pickle
    else:
        raise LmforgeError(f"{ckpt_dir} has no weights ({SAFETENSORS}, {SAFETENSORS_INDEX} or {PICKLE})")
    state, nonfinite = {}, []
    for path in files:
        tensors = load(path)
        nonfinite += [(path, *found) for found in nonfinite_tensors(tensors)]
        state.update(tensors)
    report_nonfinite(nonfinite, allow_nonfinite)
    return state


def report_nonfinite(found: list[tuple[Path, str, int, int]], allow_nonfinite: bool) -> None:
    """Refuse weights that hold NaN or Inf (found: their (file, tensor, NaN, Inf)), naming them; with
    allow_nonfinite, say so in one warning line instead."""
    if found and not allow_nonfinite:
        raise LmforgeError(
            f"{describe_nonfinite(found)}; the checkpoint is damaged: use an earlier one, or pass "
            "--allow-nonfinite to load it anyway for inspection"
        )
    if found:
        print(
            f"lmforge: warning: {describe_nonfinite(found)}; loaded anyway (--allow-nonfinite)",
            file=sys.stderr,
        )


def nonfinite_tensors(tensors: dict[str, torch.Tensor]) -> list[tuple[str, int, int]]:
    """(name, NaN count, Inf count) of each floating tensor that holds NaN or Inf."""
    found = []
    for name, t in tensors.items():
        if not t.is_floating_point():
            continue
        t = t.float() if t.element_size() == 1 else t  # float8 has no sum on a CPU
        # NOTE: one sum is the cheap test (about 20x faster than isfinite(t).all() on a CPU): NaN and
        # Inf always make it non-finite. A finite tensor whose sum overflows is then counted exactly.
        if not bool(torch.isfinite(t.sum())):
            nan, inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
            if nan or inf:
                found.append((name, nan, inf))
    return found


def describe_nonfinite(found: list[tuple[Path, str, int, int]]) -> str:
    """'FILE has non-finite values in NAME (12 NaN), ...': the first few (file, tensor, NaN, Inf)."""
    shown, parts = found[:NONFINITE_SHOWN], []
    for path in dict.fromkeys(f[0] for f in shown):
        tensors = ", ".join(
            f"{name} ({', '.join(f'{n} {what}' for n, what in ((nan, 'NaN'), (inf, 'Inf')) if n)})"
            for p, name, nan, inf in shown
            if p == path
        )
        parts.append(
            f"{path} has non-finite values in {tensors}" if not parts else f"{path.name} in {tensors}"
        )
    more = len(found) - len(shown)
    return "; ".join(parts) + (f" and {more} more tensor{'s' if more > 1 else ''}" if more else "")


def checkpoint_file(ckpt_dir: Path, name, listed_in: Path) -> Path:
    """ckpt_dir / name, for a file name read from the checkpoint's own JSON (`listed_in`), refused unless
    it stays inside ckpt_dir: a relative path without '..' that is inside it once links are resolved.

    NOTE: a Hugging Face hub cache snapshot holds links to its repository's blobs/, which count as inside.
    """
    listed = f"{listed_in} lists {name!r:.80}"
    refused = "refusing to read it (the checkpoint is corrupt or crafted)"
    if not isinstance(name, str) or not name.strip() or "\x00" in name:
        raise LmforgeError(f"{listed} where a file name should be; the checkpoint is corrupt")
    pure = PurePosixPath(name)
    if pure.is_absolute() or ".." in pure.parts or "\\" in name or PureWindowsPath(name).drive:
        raise LmforgeError(f"{listed}, a path outside {ckpt_dir}; {refused}")
    path = ckpt_dir / name
    real, inside = path.resolve(), [ckpt_dir.resolve()]
    if inside[0].parent.name == "snapshots":
        inside.append((inside[0].parent.parent / "blobs").resolve())
    if not any(real.is_relative_to(root) for root in inside):
        raise LmforgeError(f"{listed}, a link to {real} outside {ckpt_dir}; {refused}")
    return path


def _shard_files(index: Path) -> list[Path]:
    """The weight files an index's weight_map lists, each a file inside the index's directory."""
    weight_map = read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise LmforgeError(
            f"{index} has no weight_map of tensor names to shard files; the checkpoint is corrupt"
        )
    files = [checkpoint_file(index.parent, name, index) for name in weight_map.values()]
    for path in files:
        if not path.is_file():
            raise LmforgeError(
                f"{index} lists the shard {path.name}, which {index.parent} lacks; the checkpoint is incomplete"
            )
    return sorted(set(files))


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor in one safetensors file; a missing or unreadable file is a one-line error."""
    try:
        return load_file(path)
    except FileNotFoundError:
        raise LmforgeError(f"missing weight shard {path}; the checkpoint is incomplete") from None
    except (SafetensorError, OSError) as e:
        raise LmforgeError(f"cannot read {path}: {e}; the checkpoint is corrupt") from None


def read_pickle(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of one legacy `torch.save` file, read as weights only: a file holding anything but a
    state dict of tensors is refused, never run. The first one read in a directory is noted on stderr."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise LmforgeError(f"missing weight shard {path}; the checkpoint is incomplete") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise LmforgeError(
            f"refusing {path}: it is not a plain tensor file ({first[:120]}); loading it "
            "could run code. Convert it to safetensors with the library that wrote it"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise LmforgeError(f"{path} does not hold a state dict of tensors")
    if str(path.parent) not in _legacy_noted:
        _legacy_noted.add(str(path.parent))
        print(
            f"lmforge: {path.parent} holds {path.name}, a legacy pickle format read as weights only; "
            "safetensors is preferred (save_pretrained writes it)",
            file=sys.stderr,
        )
    return state


def load_model(
    name_or_path: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    allow_nonfinite: bool = False,
    quantize: str | None = None,
):
    """A model from a checkpoint directory (Hugging Face or lmforge), in eval mode.

    Weights holding NaN or Inf are refused by name, unless allow_nonfinite (then: a warning).
    quantize ("int8" or "int4"): a decoder's linear layers quantized once loaded, for CPU inference
    (lmforge.nn.quant.quantize_model). With int4, a GGUF file's Q4_0 and Q4_1 projections become int4
    layers straight from their blocks, without a float round trip (lmforge/gguf/blocks.py).
    """
    from lmforge.nn.quant import check_mode, quantize_model

    if quantize is not None:
        check_mode(quantize)  # a bad mode is one line before the weights load
    int4_blocks = quantize == "int4" and torch.device(device).type == "cpu"
    model = _load_float_model(
        name_or_path, dtype=dtype, device=device, allow_nonfinite=allow_nonfinite, int4_blocks=int4_blocks
    )
    if quantize is not None:
        quantize_model(model, quantize)
    return model


def _load_float_model(name_or_path, *, dtype, device, allow_nonfinite, int4_blocks=False):
    from lmforge.hub import resolve_model
    from lmforge.models import build_model
    from lmforge.models.heads import TASK_MODELS, ClassifierConfig

    path = resolve_model(name_or_path)
    if path.suffix == ".gguf" and path.is_file():  # llama.cpp's single-file format (lmforge/gguf)
        from lmforge.gguf import load_gguf_model

        model = load_gguf_model(path, dtype=dtype, device=device, int4_blocks=int4_blocks)
        # By lmforge's names: GGUF blocks dequantized (or, read as int4, their scales and zero points).
        found = nonfinite_tensors(model.state_dict())
        report_nonfinite([(path, *f) for f in found], allow_nonfinite)
        return model
    ckpt_dir = resolve_checkpoint_dir(path)
    hf_config = read_json(ckpt_dir / "config.json")
    model = build_model(from_hf_config(hf_config))
    task = head_task(hf_config)  # a *ForSequenceClassification or *ForQuestionAnswering checkpoint
    if task == "classification":
        model = TASK_MODELS[task](model, ClassifierConfig(**classifier_labels(hf_config)))
    elif task is not None:
        model = TASK_MODELS[task](model)
    load_weights(model, ckpt_dir, allow_nonfinite=allow_nonfinite)
    if (ckpt_dir / GENERATION_CONFIG).exists():
        model.generation_config = read_generation_config(ckpt_dir / GENERATION_CONFIG)
    model.name_or_path = str(ckpt_dir)  # where it came from: embed reads sentence-transformers settings there
    return model.to(device=device, dtype=dtype).eval()


def read_generation_config(path: Path) -> dict:
    """generation_config.json, its token ids checked: each an integer, or (eos) a list of them."""
    config = read_json(path)
    for key in GENERATION_IDS:
        ids = config.get(key)
        ids = [] if ids is None else [ids] if isinstance(ids, int) else ids
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise LmforgeError(
                f"{path}: {key} should be an integer or a list of integers, got {config[key]!r}"
            )
    return config


def generation_config(model) -> dict | None:
    """What `transformers` writes as generation_config.json for a model that generates (its special
    token ids; a loaded generation config's fields kept), or None for one that does not."""
    from lmforge.models.decoder import CausalLM

    if not (isinstance(model, CausalLM) or getattr(model, "is_encoder_decoder", False)):
        return None
    config = {"_from_model_config": True}
    for key in GENERATION_IDS:
        if getattr(model.config, key, None) is not None:
            config[key] = getattr(model.config, key)
    return {**config, **getattr(model, "generation_config", {})}


def load_weights(model, ckpt_dir: Path, *, allow_nonfinite: bool = False) -> None:
    """Load a checkpoint directory's weights into `model`, checking every name, shape and value."""
    config = model.config
    n_decoder_layers = getattr(config, "n_decoder_layers", None)
    state = read_state_dict(ckpt_dir, allow_nonfinite=allow_nonfinite)
    state = from_hf_state(state, config.model_type, config.n_layers, n_decoder_layers)
    expected = model.state_dict()
    if any(k.startswith(BASE) for k in expected):  # a task model: all but its head sit under `base.`
        state = {(k if k in expected else BASE + k): v for k, v in state.items()}
    for name, source in tied_weights(model).items():
        if name not in state and source in state:
            state[name] = state[source]
    if config.model_type in HEAD_FROM_EMBEDDING and "lm_head.weight" not in state and "embed.weight" in state:
        # transformers 5 ties every T5 head in memory, so its T5 v1.1 saves lack lm_head.weight
        state["lm_head.weight"] = state["embed.weight"]
    # A head the model was not built with (the pooler of a BertForPreTraining file opened as a
    # masked LM) is dropped; any other stray weight means the config and weights disagree.
    state = {
        k: v for k, v in state.items() if k in expected or not k.removeprefix(BASE).startswith(OPTIONAL_HEADS)
    }
    unexpected = sorted(set(state) - set(expected))
    if unexpected:
        raise LmforgeError(
            f"the checkpoint in {ckpt_dir} has {len(unexpected)} weights the model lacks (first: "
            f"{unexpected[0]}); is config.json the one that goes with these weights?"
        )
    missing = sorted(set(expected) - set(state))
    if missing:
        raise LmforgeError(
            f"the checkpoint in {ckpt_dir} lacks {len(missing)} weights (first: {missing[0]}); "
            "it is incomplete or for another architecture"
        )
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            raise LmforgeError(
                f"weight {key} has shape {tuple(state[key].shape)} but config.json implies "
                f"{tuple(tensor.shape)}; the config and weights do not match"
            )
    model.load_state_dict(state)


def save_model(
    model,
    out_dir: str | Path,
    *,
    max_shard_size: int | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> None:
    """config.json, generation_config.json (a model that generates) and safetensors weights (sharded
    above max_shard_size bytes) that `transformers` opens.

    state_dict, when given, replaces model.state_dict() (a sharded model's gathered full weights).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = dict(state_dict if state_dict is not None else model.state_dict())
    for name in tied_weights(model):
        state.pop(name, None)  # tied: stored once, as the embedding
    state = {k.removeprefix(BASE): v for k, v in state.items()}
    n_decoder_layers = getattr(model.config, "n_decoder_layers", None)
    hf_state = to_hf_state(state, model.config.model_type, model.config.n_layers, n_decoder_layers)
    hf_state = {k: v.detach().to("cpu").contiguous() for k, v in hf_state.items()}
    hf_config = to_hf_config(model.config)
    if hasattr(model, "task"):
        hf_config.update(head_hf_fields(model))
    hf_config["torch_dtype"] = str(next(iter(hf_state.values())).dtype).removeprefix("torch.")
    (out_dir / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
    generation = generation_config(model)
    if generation is not None:
        (out_dir / GENERATION_CONFIG).write_text(json.dumps(generation, indent=2) + "\n")
    shards = _shard(hf_state, max_shard_size)
    if len(shards) == 1:
        save_file(hf_state, out_dir / SAFETENSORS, metadata={"format": "pt"})
        return
    weight_map = {}
    for n, shard in enumerate(shards, start=1):
        name = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, out_dir / name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for t in hf_state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / SAFETENSORS_INDEX).write_text(json.dumps(index, indent=2) + "\n")


def _shard(state: dict[str, torch.Tensor], max_bytes: int | None) -> list[dict[str, torch.Tensor]]:
    if max_bytes is None:
        return [state]
    shards, size = [{}], 0
    for key, t in state.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = t
        size += nbytes
    return shards
