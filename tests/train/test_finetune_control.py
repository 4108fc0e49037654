"""What every fine-tuning task gets from the orchestrator: early stopping with patience, and LoRA runs that
checkpoint the adapter alone and resume from it bit for bit."""

import json
import random
import shutil

import pytest
import torch
from lmforge_cli import run_lmforge
from safetensors.torch import load_file

from lmforge.models import build_model, get_preset
from lmforge.tokenizers import train_tokenizer

pytestmark = pytest.mark.slow  # fine-tuning runs in real subprocesses

WORDS = {"hot": ["sun", "fire", "desert", "summer"], "cold": ["snow", "ice", "winter", "frost"]}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("control")
    rng = random.Random(0)
    rows = [
        {"text": f"the {rng.choice(WORDS[label])} and the {rng.choice(WORDS[label])}", "label": label}
        for label in ("hot", "cold") * 40
    ]
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(r["text"] for r in rows) + "\n")
    tok = train_tokenizer([corpus], vocab_size=60, kind="wordpiece")
    base = root / "base"
    torch.manual_seed(0)
    config = get_preset("bert-tiny", vocab_size=64, n_layers=2, pad_token_id=tok.pad_token_id, max_seq_len=32)
    build_model(config).save_pretrained(base)
    tok.save_pretrained(base)
    return root, base, data


def _finetune(*args):
    result = run_lmforge("finetune", "--no-progress", "--device", "cpu", *args)
    assert result.returncode == 0, result.stderr
    return result


def test_patience_stops_when_the_metric_stops_improving(setup):
    root, base, data = setup
    out = root / "patience"
    # A learning rate too small to change any prediction: accuracy is flat after the first evaluation.
    flags = ("--max-steps", 100, "--eval-every", 2, "--patience", 2, "--lr", 1e-12, "--batch-size", 4)
    result = _finetune("--model", base, "--data", data, "--out", out, *flags)
    assert "stopping early: accuracy has not improved" in result.stdout
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 6  # evaluations at 2 (best), 4 and 6 (two without improvement)
    assert (out / "checkpoints" / "step-00000006").is_dir() and (out / "best" / "metrics.json").is_file()
    assert (out / "model.safetensors").is_file()


def test_lora_checkpoints_hold_the_adapter_and_resume_bit_for_bit(setup):
    root, base, data = setup
    flags = ("--model", base, "--data", data, "--method", "lora", "--lora-targets", "q_proj,v_proj,o_proj")
    flags += ("--max-steps", 8, "--save-every", 4, "--eval-every", 4, "--batch-size", 4, "--lr", 1e-2)
    straight, crashed = root / "straight", root / "crashed"
    _finetune(*flags, "--out", straight)
    step4 = straight / "checkpoints" / "step-00000004"
    assert (step4 / "adapter_model.safetensors").is_file() and not (step4 / "model.safetensors").exists()
    (crashed / "checkpoints").mkdir(parents=True)
    shutil.copytree(step4, crashed / "checkpoints" / step4.name)
    _finetune(*flags, "--out", crashed, "--resume")
    for name in ("adapter/adapter_model.safetensors", "model.safetensors"):
        a, b = load_file(straight / name), load_file(crashed / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    merged, original = load_file(straight / "model.safetensors"), load_file(base / "model.safetensors")
    shared = original.keys() & merged.keys()  # the base's MLM head is gone, the new classifier is new
    assert len(shared) > 30
    changed = {k for k in shared if not torch.equal(original[k], merged[k])}
    adapted = ("query.weight", "value.weight", "attention.output.dense.weight")
    assert changed and all(k.endswith(adapted) for k in changed), changed
