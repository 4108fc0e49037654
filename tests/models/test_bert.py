"""BERT and RoBERTa: tiny random Hugging Face checkpoints load with identical hidden states, pooler
outputs and masked-LM logits (with padding and token types), and lmforge's saves load in transformers."""

import json

import pytest
import torch
from conftest import _quiet_transformers

from lmforge.errors import LmforgeError
from lmforge.hf import load_model
from lmforge.models import BertConfig, build_model, get_preset

ATOL = 1e-4
HF_CLASSES = {
    "bert": ("BertConfig", "BertModel"),
    "bert-mlm": ("BertConfig", "BertForMaskedLM"),
    "bert-pretraining": ("BertConfig", "BertForPreTraining"),
    "roberta": ("RobertaConfig", "RobertaModel"),
    "roberta-mlm": ("RobertaConfig", "RobertaForMaskedLM"),
}


def make_hf_encoder(path, case, *, vocab_size=99, seed=0):
    """A tiny random BERT/RoBERTa of the given layout saved at path; returns the transformers model."""
    transformers = _quiet_transformers()
    config_name, model_name = HF_CLASSES[case]
    torch.manual_seed(seed)
    is_roberta = config_name.startswith("Roberta")
    config = getattr(transformers, config_name)(
        vocab_size=vocab_size,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=80,
        max_position_embeddings=40 + (2 if is_roberta else 0),
        type_vocab_size=1 if is_roberta else 2,
        pad_token_id=1 if is_roberta else 0,
        layer_norm_eps=1e-5 if is_roberta else 1e-12,
    )
    model = getattr(transformers, model_name)(config).eval()
    # Random init leaves norms at identity and biases at zero; perturb every parameter so that a
    # wrong name, a missing bias or a misplaced norm shows in the outputs.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(path)
    return model


def _batch(vocab_size, pad_id, lengths=(17, 11, 5), seed=1):
    """Right-padded ids, attention mask and token types (a second segment in each row)."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.randint(pad_id + 1, vocab_size, (len(lengths), T), generator=g)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    types = torch.zeros(len(lengths), T, dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
        ids[row, n:] = pad_id
        types[row, n // 2 : n] = 1
    return ids, mask, types


def _hf_outputs(hf_model, ids, mask, types):
    with torch.no_grad():
        out = hf_model(input_ids=ids, attention_mask=mask, token_type_ids=types, output_hidden_states=True)
    return out.hidden_states[-1], out


def _max_diff(a, b, mask):
    """Largest difference over real (unpadded) positions."""
    return (a - b).abs()[mask.bool()].max().item()


@pytest.mark.parametrize("case", list(HF_CLASSES))
def test_hf_encoder_loads_with_identical_outputs(tmp_path, case):
    hf_model = make_hf_encoder(tmp_path / "hf", case)
    model = load_model(tmp_path / "hf")
    is_roberta = case.startswith("roberta")
    ids, mask, types = _batch(99, model.config.pad_token_id)
    if is_roberta:
        types = torch.zeros_like(types)  # one token type
    hidden, out = _hf_outputs(hf_model, ids, mask, types)
    with torch.no_grad():
        ours = model.hidden(ids, mask, types)
        diff = _max_diff(ours, hidden, mask)
        print(f"{case}: max |hidden - hf| = {diff:.2e}")
        assert diff < ATOL
        if case.endswith(("mlm", "pretraining")):
            logits = out.logits if hasattr(out, "logits") else out.prediction_logits
            diff = _max_diff(model(ids, mask, types), logits, mask)
            print(f"{case}: max |logits - hf| = {diff:.2e}")
            assert diff < ATOL
        else:
            assert torch.equal(model(ids, mask, types), ours)  # no head: forward is the hidden states
        if hasattr(out, "pooler_output"):
            assert torch.allclose(model.pooled(ids, mask, types), out.pooler_output, atol=ATOL, rtol=0)


@pytest.mark.parametrize("case", ["bert", "bert-mlm", "roberta-mlm"])
def test_lmforge_save_loads_in_transformers(tmp_path, case):
    transformers = _quiet_transformers()
    make_hf_encoder(tmp_path / "hf", case)
    model = load_model(tmp_path / "hf")
    model.save_pretrained(tmp_path / "ours")
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    auto = transformers.AutoModelForMaskedLM if case.endswith("mlm") else transformers.AutoModel
    expected = {"bert": "BertModel", "bert-mlm": "BertForMaskedLM", "roberta-mlm": "RobertaForMaskedLM"}
    assert config["architectures"] == [expected[case]]
    reloaded = auto.from_pretrained(tmp_path / "ours").eval()
    ids, mask, _ = _batch(99, model.config.pad_token_id, lengths=(9, 13))
    with torch.no_grad():
        ours = model(ids, mask)
        theirs = reloaded(input_ids=ids, attention_mask=mask)
        theirs = theirs.logits if case.endswith("mlm") else theirs.last_hidden_state
        assert _max_diff(ours, theirs, mask) < ATOL
        again = load_model(tmp_path / "ours")  # and lmforge reads its own save back exactly
        assert torch.equal(again(ids, mask), ours)


def test_bare_bertmodel_save_has_no_prefix_and_mlm_save_has_one(tmp_path):
    from safetensors import safe_open

    build_model(get_preset("bert-tiny", use_mlm_head=False)).save_pretrained(tmp_path / "base")
    build_model(get_preset("bert-tiny")).save_pretrained(tmp_path / "mlm")
    base = list(safe_open(tmp_path / "base" / "model.safetensors", "pt").keys())
    mlm = list(safe_open(tmp_path / "mlm" / "model.safetensors", "pt").keys())
    assert "embeddings.word_embeddings.weight" in base and "pooler.dense.weight" in base
    assert "bert.embeddings.word_embeddings.weight" in mlm and "cls.predictions.bias" in mlm
    assert not any("decoder" in k for k in mlm)  # tied to the embedding, stored once


def test_padding_does_not_change_real_positions():
    torch.manual_seed(0)
    model = build_model("bert-tiny").eval()
    ids = torch.randint(5, 512, (1, 10))
    padded = torch.cat([ids, torch.zeros(1, 6, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 10), torch.zeros(1, 6)], dim=1).long()
    with torch.no_grad():
        alone, batched = model.hidden(ids), model.hidden(padded, mask)
    assert torch.allclose(alone, batched[:, :10], atol=1e-5, rtol=0)
    with torch.no_grad():  # an all-padding row still gives finite numbers
        assert torch.isfinite(model.hidden(padded, torch.zeros_like(mask))).all()


def test_bert_tiny_preset_is_small_initialised_like_bert_and_trains():
    torch.manual_seed(0)
    model = build_model("bert-tiny")
    assert 100_000 < model.num_params() < 500_000
    assert model.lm_head.proj.weight is model.embed.weight
    assert abs(model.blocks[0].attn.q_proj.weight.std().item() - 0.02) < 0.003
    assert torch.equal(model.blocks[0].attn_norm.weight, torch.ones(64))
    # Overfit one batch of masked positions: the loss must fall far below log(vocab).
    ids = torch.randint(5, 512, (4, 16))
    inputs = ids.clone()
    inputs[:, ::4] = 4  # a [MASK] id
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(60):
        loss = torch.nn.functional.cross_entropy(model(inputs)[:, ::4].flatten(0, 1), ids[:, ::4].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 1.0


def test_bert_base_preset_has_the_published_size():
    config = get_preset("bert-base")
    assert (config.d_model, config.n_layers, config.n_heads, config.d_ff) == (768, 12, 12, 3072)
    assert isinstance(config, BertConfig) and config.use_mlm_head


def test_unsupported_bert_variants_are_refused(tmp_path):
    make_hf_encoder(tmp_path, "bert")
    config = json.loads((tmp_path / "config.json").read_text())
    config["position_embedding_type"] = "relative_key"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(LmforgeError, match="position_embedding_type"):
        load_model(tmp_path)


def test_weights_of_another_layout_are_named(tmp_path):
    make_hf_encoder(tmp_path, "bert")
    config = json.loads((tmp_path / "config.json").read_text())
    config["architectures"] = ["BertForMaskedLM"]  # claims an MLM head the weights do not have
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(LmforgeError, match="lacks"):
        load_model(tmp_path)
