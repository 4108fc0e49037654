"""File names read from a checkpoint's own JSON (a sharded index's weight_map, a sentence-transformers
modules.json, a training checkpoint's manifest) never lead out of its directory: a crafted one is one
error line naming the file that lists it, and nothing outside is opened."""

import json
import os
import shutil

import pytest
import torch
from conftest import make_hf_gpt2
from safetensors.torch import load_file

from lmforge.errors import LmforgeError
from lmforge.hf import load_model
from lmforge.inference.embed import read_sentence_settings
from lmforge.train.checkpoint import DamagedCheckpoint, verify_checkpoint, write_checkpoint

INDEX = "model.safetensors.index.json"


@pytest.fixture
def sharded(tmp_path):
    """A tiny GPT-2 saved in several safetensors shards, and a file outside it that a crafted index aims at."""
    make_hf_gpt2(tmp_path / "src").save_pretrained(tmp_path / "ckpt", max_shard_size="20KB")
    outside = tmp_path / "outside.safetensors"
    shutil.copyfile(sorted((tmp_path / "ckpt").glob("model-*.safetensors"))[0], outside)
    return tmp_path / "ckpt", outside


def point_first_shard_at(ckpt, value) -> None:
    index = json.loads((ckpt / INDEX).read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = value
    (ckpt / INDEX).write_text(json.dumps(index))


def assert_refused(ckpt, *needles):
    with pytest.raises(LmforgeError) as e:
        load_model(ckpt)
    message = str(e.value)
    assert "\n" not in message and str(ckpt / INDEX) in message, message
    for needle in needles:
        assert needle in message, message


def test_the_sharded_checkpoint_loads_as_saved(sharded):
    ckpt, _ = sharded
    assert len(list(ckpt.glob("model-*.safetensors"))) > 1
    load_model(ckpt)


def test_traversal_is_refused(sharded):
    ckpt, outside = sharded
    point_first_shard_at(ckpt, f"../{outside.name}")  # a real safetensors file one level up
    assert_refused(ckpt, "a path outside", repr(f"../{outside.name}"))


def test_deep_traversal_is_refused(sharded):
    ckpt, _ = sharded
    point_first_shard_at(ckpt, "../../../../../../etc/passwd")
    assert_refused(ckpt, "a path outside", "etc/passwd")


def test_absolute_path_is_refused(sharded):
    ckpt, outside = sharded
    point_first_shard_at(ckpt, str(outside))
    assert_refused(ckpt, "a path outside")


def test_symlink_out_of_the_directory_is_refused(sharded):
    ckpt, outside = sharded
    (ckpt / "linked.safetensors").symlink_to(outside)
    point_first_shard_at(ckpt, "linked.safetensors")
    assert_refused(ckpt, "a link to", str(outside.resolve()))


@pytest.mark.parametrize("value", [7, None, ["model-00001.safetensors"], {"a": 1}, "", "bad\x00name"])
def test_a_value_that_is_no_file_name_is_refused(sharded, value):
    ckpt, _ = sharded
    point_first_shard_at(ckpt, value)
    assert_refused(ckpt, "where a file name should be")


def test_missing_shard_is_named(sharded):
    ckpt, _ = sharded
    point_first_shard_at(ckpt, "model-00009-of-00009.safetensors")
    assert_refused(ckpt, "model-00009-of-00009.safetensors", "incomplete")


@pytest.mark.parametrize("weight_map", [None, [], {}, "model.safetensors"])
def test_an_index_without_a_weight_map_is_refused(sharded, weight_map):
    ckpt, _ = sharded
    (ckpt / INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    assert_refused(ckpt, "weight_map")


def test_a_hub_cache_snapshot_may_link_to_its_blobs(sharded, tmp_path):
    """huggingface_hub stores each file once in blobs/ and links it from snapshots/<revision>/."""
    ckpt, _ = sharded
    repo = tmp_path / "hub" / "models--tiny--gpt2"
    snapshot = repo / "snapshots" / "0123abc"
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for n, f in enumerate(sorted(ckpt.iterdir())):
        shutil.copyfile(f, repo / "blobs" / f"blob{n}")
        (snapshot / f.name).symlink_to(os.path.relpath(repo / "blobs" / f"blob{n}", snapshot))
    load_model(snapshot)
    (snapshot / "stray.safetensors").symlink_to(tmp_path / "outside.safetensors")  # out of the repository
    point_first_shard_at(snapshot, "stray.safetensors")
    with pytest.raises(LmforgeError, match="a link to"):
        load_model(snapshot)


def test_a_pickle_index_is_confined_too(tmp_path):
    ckpt = tmp_path / "bin"
    make_hf_gpt2(ckpt)
    state = load_file(ckpt / "model.safetensors")
    (ckpt / "model.safetensors").unlink()
    names = list(state)
    weight_map = {}
    for n, part in enumerate((names[: len(names) // 2], names[len(names) // 2 :]), start=1):
        torch.save({k: state[k] for k in part}, ckpt / f"pytorch_model-0000{n}-of-00002.bin")
        weight_map.update(dict.fromkeys(part, f"pytorch_model-0000{n}-of-00002.bin"))
    (ckpt / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    load_model(ckpt)
    weight_map[names[0]] = "/etc/passwd"
    (ckpt / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(
        LmforgeError, match=r"pytorch_model\.bin\.index\.json lists '/etc/passwd', a path outside"
    ):
        load_model(ckpt)


def sentence_folder(tmp_path, pooling_path):
    folder = tmp_path / "st"
    (folder / "1_Pooling").mkdir(parents=True, exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": pooling_path, "type": "sentence_transformers.models.Pooling"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    return folder


def test_sentence_transformers_pooling_path_stays_inside(tmp_path):
    assert read_sentence_settings(sentence_folder(tmp_path, "1_Pooling")).pooling == "cls"
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    for crafted in ("../elsewhere", str(tmp_path / "elsewhere"), 3):
        with pytest.raises(LmforgeError, match=r"modules\.json lists"):
            read_sentence_settings(sentence_folder(tmp_path, crafted))


def test_training_manifest_may_not_name_a_link_out(tmp_path):
    def save_model(d):
        (d / "model.safetensors").write_bytes(b"weights")

    optim = {"state": {}, "param_groups": []}
    ckpt = write_checkpoint(
        tmp_path, 1, save_model=save_model, optim_state=optim, trainer_state={}, keep_last=None
    )
    assert verify_checkpoint(ckpt)
    secret = tmp_path / "secret"
    secret.write_bytes(b"weights")
    (ckpt / "model.safetensors").unlink()
    (ckpt / "model.safetensors").symlink_to(secret)
    with pytest.raises(DamagedCheckpoint, match=r"names 'model.safetensors', a link to .*secret outside"):
        verify_checkpoint(ckpt)
