"""LoRA fine-tuning of the real all-MiniLM-L6-v2 for classification: only the adapters and the new head
train, the rest of the checkpoint is left bit for bit, and the saved adapter loads with `peft` on the
`transformers` model with the same logits as lmforge's merged model."""

import json
import random

import pytest
import torch
from lmforge_cli import run_lmforge
from safetensors.torch import load_file

import lmforge
from lmforge.data.tasks import LabelMap
from lmforge.hf.peft import apply_lora_for_peft
from lmforge.nn.lora import count_trainable
from lmforge.train.tasks.classification import load_classifier

WORDS = {
    "positive": ["great", "wonderful", "loved", "excellent"],
    "negative": ["awful", "terrible", "hated", "boring"],
}
TEXTS = ["the film was {} and the cast was {}", "i {} it, a truly {} evening", "{} plot, {} music"]
R, TARGETS = 4, ("q_proj", "v_proj")


def _rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = ("positive", "negative")[i % 2]
        rows.append({"text": rng.choice(TEXTS).format(*rng.sample(WORDS[label], 2)), "label": label})
    return rows


def test_lora_trains_only_adapters_and_head(minilm_path):
    labels = LabelMap(["negative", "positive"])
    model = load_classifier(str(minilm_path), labels)
    apply_lora_for_peft(model, list(TARGETS), R, 8, 0.0, trainable=["label_head"])
    d, layers = model.config.d_model, model.config.n_layers
    adapters = layers * len(TARGETS) * (R * d + d * R)  # A (r, d) and B (d, r) per adapted projection
    head = d * 2 + 2  # label_head weight and bias
    assert count_trainable(model) == adapters + head == 37_634
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(".lora_" in n or n.startswith("label_head.") for n in trainable)
    assert count_trainable(model) < 0.002 * sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def trained(minilm_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora_minilm")
    data = root / "data"
    data.mkdir()
    for split, (n, seed) in {"train": (64, 1), "validation": (16, 2)}.items():
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(n, seed)))
    out = root / "run"
    flags = ("--max-steps", 12, "--batch-size", 8, "--lr", 1e-3, "--warmup-steps", 2, "--eval-every", 6)
    flags += ("--max-length", 24, "--lora-r", R, "--lora-alpha", 8, "--no-progress", "--device", "cpu")
    cmd = ("finetune", "--model", minilm_path, "--data", data, "--out", out, "--method", "lora", *flags)
    result = run_lmforge(*cmd)
    assert result.returncode == 0, result.stderr
    assert "37,634 of" in result.stdout  # the count above, as the run reports it
    return out


@pytest.mark.slow
def test_frozen_weights_stay_bit_for_bit(trained, minilm_path):
    base, merged = load_file(minilm_path / "model.safetensors"), load_file(trained / "model.safetensors")
    adapted = {k for k in base if ".attention.self.query." in k or ".attention.self.value." in k}
    adapted = {k for k in adapted if k.endswith(".weight")}
    for key, tensor in base.items():
        if key.endswith("position_ids"):  # a buffer (0, 1, 2, ...), not a weight; lmforge does not store it
            continue
        theirs = merged.get(key, merged.get(f"bert.{key}"))
        assert theirs is not None, key
        assert torch.equal(tensor, theirs) != (key in adapted), key  # only the adapted weights changed
    adapter = load_file(trained / "adapter" / "adapter_model.safetensors")
    assert all(".lora_" in k or ".classifier." in k for k in adapter)


@pytest.mark.slow
def test_peft_loads_the_adapter_with_the_same_logits(trained, minilm_path):
    peft = pytest.importorskip("peft")
    import transformers

    hf = transformers.BertForSequenceClassification.from_pretrained(
        minilm_path, num_labels=2, id2label={0: "negative", 1: "positive"}
    )
    hf = peft.PeftModel.from_pretrained(hf, trained / "adapter").eval()
    ours = lmforge.load_model(trained).eval()
    tok = lmforge.load_tokenizer(trained)
    texts = ["what a wonderful evening", "boring and awful", "the cast was great but the plot was terrible"]
    enc = tok.encode_inputs(texts, max_length=24)
    batch = {k: torch.tensor(v) for k, v in enc.items()}
    with torch.no_grad():
        theirs = hf(**batch).logits
        mine = ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    print(f"max |logit difference| {(theirs - mine).abs().max():.2e}")
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-5)
    assert json.loads((trained / "metrics.json").read_text())["accuracy"] > 0.5
