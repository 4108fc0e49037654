"""Task heads: tiny random transformers BertForSequenceClassification, BertForQuestionAnswering,
GPT2ForSequenceClassification and LlamaForSequenceClassification checkpoints load through
`lmforge.load_model` with the same logits on padded batches, lmforge's saves open in transformers'
Auto classes with the same logits, labels round-trip, and a fresh head on a pretrained base saves."""

import json

import pytest
import torch
from conftest import _quiet_transformers

import lmforge
from lmforge.errors import LmforgeError
from lmforge.models import ClassifierConfig, SequenceClassifier, SpanQA

ATOL = 1e-4
PAD = 0
LABELS = {0: "negative", 1: "neutral", 2: "positive"}
VOCAB = 97
LENGTHS = (13, 9, 4)


def _hf_config(family: str, **extra):
    transformers = _quiet_transformers()
    common = {"vocab_size": VOCAB, "pad_token_id": PAD, **extra}
    if family == "bert":
        return transformers.BertConfig(
            hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=80,
            max_position_embeddings=40, **common,
        )  # fmt: skip
    if family == "gpt2":
        return transformers.GPT2Config(n_embd=48, n_layer=2, n_head=4, n_positions=40, **common)
    return transformers.LlamaConfig(
        hidden_size=48, num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
        intermediate_size=80, max_position_embeddings=64, **common,
    )  # fmt: skip


HF_HEADS = {
    "bert-cls": ("bert", "BertForSequenceClassification"),
    "bert-qa": ("bert", "BertForQuestionAnswering"),
    "gpt2-cls": ("gpt2", "GPT2ForSequenceClassification"),
    "llama-cls": ("llama", "LlamaForSequenceClassification"),
}


def make_hf_head(path, case, seed=0):
    """A tiny random transformers task model saved at path, every parameter perturbed so that a
    wrong name, bias or norm shows in the outputs; returns the model."""
    family, cls_name = HF_HEADS[case]
    extra = {} if case == "bert-qa" else {"id2label": LABELS, "label2id": {v: k for k, v in LABELS.items()}}
    torch.manual_seed(seed)
    model = getattr(_quiet_transformers(), cls_name)(_hf_config(family, **extra)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(path)
    return model


def _batch(seed=1):
    """Right-padded ids (pad id 0 only in the padding) with the attention mask and BERT token types."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(PAD + 1, VOCAB, (len(LENGTHS), max(LENGTHS)), generator=g)
    mask = torch.zeros_like(ids)
    types = torch.zeros_like(ids)
    for row, n in enumerate(LENGTHS):
        mask[row, :n] = 1
        ids[row, n:] = PAD
        types[row, n // 2 : n] = 1
    return ids, mask, types


def _run(model, family, is_hf):
    ids, mask, types = _batch()
    kwargs = {"token_type_ids": types} if family == "bert" else {}
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, **kwargs)
    if not is_hf:
        return out if isinstance(out, tuple) else (out,)
    return (out.start_logits, out.end_logits) if hasattr(out, "start_logits") else (out.logits,)


def _max_diff(ours, theirs):
    """Largest difference; QA logits are compared over real tokens only."""
    mask = _batch()[1].bool()
    return max(
        ((a - b).abs()[mask] if a.dim() == 2 and a.shape == mask.shape else (a - b).abs()).max().item()
        for a, b in zip(ours, theirs, strict=True)
    )


@pytest.mark.parametrize("case", list(HF_HEADS))
def test_hf_head_loads_and_saves_with_identical_logits(tmp_path, case):
    family = HF_HEADS[case][0]
    hf_model = make_hf_head(tmp_path / "hf", case)
    model = lmforge.load_model(tmp_path / "hf")
    assert isinstance(model, SpanQA if case == "bert-qa" else SequenceClassifier)
    theirs = _run(hf_model, family, is_hf=True)
    ours = _run(model, family, is_hf=False)
    assert ours[0].shape == theirs[0].shape == ((3, 13) if case == "bert-qa" else (3, 3))
    diff = _max_diff(ours, theirs)
    print(f"{case} hf->lmforge max abs diff {diff:.2e}")
    assert diff < ATOL

    # lmforge -> transformers, through the Auto class a user would pick for the task.
    model.save_pretrained(tmp_path / "ours")
    transformers = _quiet_transformers()
    auto = (
        transformers.AutoModelForQuestionAnswering
        if case == "bert-qa"
        else transformers.AutoModelForSequenceClassification
    )
    reopened = auto.from_pretrained(tmp_path / "ours").eval()
    assert type(reopened).__name__ == HF_HEADS[case][1]
    diff = _max_diff(ours, _run(reopened, family, is_hf=True))
    print(f"{case} lmforge->hf max abs diff {diff:.2e}")
    assert diff < ATOL


@pytest.mark.parametrize("case", ["bert-cls", "gpt2-cls"])
def test_labels_round_trip(tmp_path, case):
    make_hf_head(tmp_path / "hf", case)
    model = lmforge.load_model(tmp_path / "hf")
    assert model.labels.id2label == LABELS
    assert model.labels.label2id == {v: k for k, v in LABELS.items()}
    model.save_pretrained(tmp_path / "ours")
    saved = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert saved["id2label"] == {str(k): v for k, v in LABELS.items()}
    reopened = _quiet_transformers().AutoConfig.from_pretrained(tmp_path / "ours")
    assert reopened.id2label == LABELS and reopened.num_labels == 3
    assert lmforge.load_model(tmp_path / "ours").labels == model.labels


def test_decoder_classifier_reads_last_real_token(tmp_path):
    """Appending more padding to a row must not change its logits (the head reads the last real token)."""
    make_hf_head(tmp_path / "hf", "gpt2-cls")
    model = lmforge.load_model(tmp_path / "hf")
    ids, mask, _ = _batch()
    with torch.no_grad():
        short = model(ids[:, :5], attention_mask=mask[:, :5])[2]
        full = model(ids, attention_mask=mask)
    assert torch.allclose(short, full[2], atol=1e-5)
    assert not torch.allclose(full[0], full[1], atol=1e-3)


@pytest.mark.parametrize("case", ["bert-cls", "bert-qa", "gpt2-cls", "llama-cls"])
def test_fresh_head_on_pretrained_base_opens_in_transformers(tmp_path, case):
    family = HF_HEADS[case][0]
    transformers = _quiet_transformers()
    base_cls = {"bert": "BertForMaskedLM", "gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}[family]
    torch.manual_seed(0)
    getattr(transformers, base_cls)(_hf_config(family)).save_pretrained(tmp_path / "base")
    base = lmforge.load_model(tmp_path / "base")
    torch.manual_seed(2)
    if case == "bert-qa":
        model = SpanQA.from_base(base)
        head = model.span_head
    else:
        model = SequenceClassifier.from_base(base, id2label={0: "no", 1: "yes", 2: "maybe", 3: "other"})
        head = model.label_head
        assert model.labels.label2id == {"no": 0, "yes": 1, "maybe": 2, "other": 3}
    assert 0.01 < head.weight.std().item() < 0.03
    assert head.bias is None or not head.bias.any()
    model.eval().save_pretrained(tmp_path / "ours")
    auto = (
        transformers.AutoModelForQuestionAnswering
        if case == "bert-qa"
        else transformers.AutoModelForSequenceClassification
    )
    reopened = auto.from_pretrained(tmp_path / "ours").eval()
    assert type(reopened).__name__ == HF_HEADS[case][1]
    if case != "bert-qa":
        assert reopened.config.id2label[2] == "maybe"
    diff = _max_diff(_run(model, family, is_hf=False), _run(reopened, family, is_hf=True))
    print(f"{case} fresh head lmforge->hf max abs diff {diff:.2e}")
    assert diff < ATOL


def test_label_and_padding_errors(tmp_path):
    with pytest.raises(LmforgeError, match="id2label"):
        ClassifierConfig(num_labels=3, id2label={0: "a", 2: "c"})
    with pytest.raises(LmforgeError, match="num_labels"):
        ClassifierConfig(num_labels=0)
    transformers = _quiet_transformers()
    transformers.GPT2LMHeadModel(_hf_config("gpt2", pad_token_id=None)).save_pretrained(tmp_path / "base")
    model = SequenceClassifier.from_base(lmforge.load_model(tmp_path / "base"), num_labels=2)
    with pytest.raises(LmforgeError, match="pad_token_id"):
        model(_batch()[0])
    assert model(_batch()[0][:1]).shape == (1, 2)
