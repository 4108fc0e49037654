"""T5 checkpoints in both formats: transformers' T5ForConditionalGeneration (v1.0: ReLU, tied head;
v1.1: gated-GELU, separate head) loads in lmforge with the same encoder states and logits, with
padding on both sides; lmforge's saves (of loaded and of freshly built models) load in transformers."""

import json

import pytest
import torch
from conftest import _quiet_transformers, make_hf_t5

from lmforge.errors import LmforgeError
from lmforge.hf import load_model
from lmforge.models import T5, build_model

VOCAB = 71
VERSIONS = {"v1.0-relu-tied": False, "v1.1-gated-gelu-untied": True}


def _inputs(generator_seed=0):
    g = torch.Generator().manual_seed(generator_seed)
    ids = torch.randint(2, VOCAB, (3, 30), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 19:] = 0  # right padding, as generation pads
    mask[2, :4] = 0  # left padding: relative positions make T5 indifferent to where padding is
    decoder_ids = torch.randint(2, VOCAB, (3, 25), generator=g)
    decoder_mask = torch.ones_like(decoder_ids)
    decoder_mask[0, 17:] = 0  # padded labels
    return ids, mask, decoder_ids, decoder_mask


def _hf_outputs(hf, ids, mask, decoder_ids, decoder_mask):
    with torch.no_grad():
        out = hf(
            input_ids=ids,
            attention_mask=mask,
            decoder_input_ids=decoder_ids,
            decoder_attention_mask=decoder_mask,
        )
    return out.encoder_last_hidden_state, out.logits


@pytest.mark.parametrize("version", list(VERSIONS))
def test_hf_checkpoint_loads_with_identical_outputs(tmp_path, version):
    hf = make_hf_t5(tmp_path / "hf", gated=VERSIONS[version])
    model = load_model(tmp_path / "hf")
    assert isinstance(model, T5) and not model.training
    assert model.config.tie_embeddings is not VERSIONS[version]
    assert model.config.is_gated_mlp is VERSIONS[version]
    ids, mask, decoder_ids, decoder_mask = _inputs()
    hf_encoded, hf_logits = _hf_outputs(hf, ids, mask, decoder_ids, decoder_mask)
    with torch.no_grad():
        encoded = model.encode(ids, mask)
        logits = model(ids, mask, decoder_input_ids=decoder_ids, decoder_attention_mask=decoder_mask)
    real, real_dec = mask.bool(), decoder_mask.bool()
    assert (encoded - hf_encoded)[real].abs().max() < 1e-4
    assert (logits - hf_logits)[real_dec].abs().max() < 1e-4
    # Without masks too (the unpadded path builds no padding mask at all).
    with torch.no_grad():
        out = hf(input_ids=ids, decoder_input_ids=decoder_ids)
        assert (model(ids, decoder_input_ids=decoder_ids) - out.logits).abs().max() < 1e-4


@pytest.mark.parametrize("version", list(VERSIONS))
def test_lmforge_save_loads_in_transformers(tmp_path, version):
    transformers = _quiet_transformers()
    make_hf_t5(tmp_path / "hf", gated=VERSIONS[version])
    model = load_model(tmp_path / "hf")
    model.save_pretrained(tmp_path / "ours")
    saved = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert saved["feed_forward_proj"] == ("gated-gelu" if VERSIONS[version] else "relu")
    reloaded = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "ours").eval()
    ids, mask, decoder_ids, decoder_mask = _inputs(1)
    hf_encoded, hf_logits = _hf_outputs(reloaded, ids, mask, decoder_ids, decoder_mask)
    with torch.no_grad():
        logits = model(ids, mask, decoder_input_ids=decoder_ids, decoder_attention_mask=decoder_mask)
        assert (model.encode(ids, mask) - hf_encoded)[mask.bool()].abs().max() < 1e-4
    assert (logits - hf_logits)[decoder_mask.bool()].abs().max() < 1e-4
    again = load_model(tmp_path / "ours")  # and lmforge reads its own save back exactly
    with torch.no_grad():
        assert torch.equal(
            again(ids, mask, decoder_input_ids=decoder_ids), model(ids, mask, decoder_input_ids=decoder_ids)
        )


def test_v11_saved_with_its_head_tied_in_memory_loads(tmp_path):
    # transformers 5 keeps a v1.1 head tied to `shared` unless the weights differ, and then saves no
    # lm_head.weight: the head starts as the embedding, without the v1.0 rescale.
    transformers = _quiet_transformers()
    torch.manual_seed(0)
    config = transformers.T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=48, num_layers=2, num_heads=4,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0,
    )  # fmt: skip
    hf = transformers.T5ForConditionalGeneration(config).eval()
    hf.save_pretrained(tmp_path / "hf")
    model = load_model(tmp_path / "hf")
    ids, _, decoder_ids, _ = _inputs(2)
    with torch.no_grad():
        expected = hf(input_ids=ids, decoder_input_ids=decoder_ids).logits
        assert (model(ids, decoder_input_ids=decoder_ids) - expected).abs().max() < 1e-4


@pytest.mark.parametrize("preset", ["t5-tiny"])
def test_fresh_preset_model_round_trips_through_transformers(tmp_path, preset):
    transformers = _quiet_transformers()
    torch.manual_seed(0)
    model = build_model(preset).eval()
    assert 200_000 < model.num_params() < 1_000_000
    model.save_pretrained(tmp_path / "ours")
    hf = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path / "ours").eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 21))
    decoder_ids = torch.randint(0, model.config.vocab_size, (2, 9))
    with torch.no_grad():
        ours = model(ids, decoder_input_ids=decoder_ids)
        assert (ours - hf(input_ids=ids, decoder_input_ids=decoder_ids).logits).abs().max() < 1e-4
    # T5's initialisation keeps the initial logits at unit scale, so pretraining starts sensibly.
    assert 0.3 < ours.std() < 3


def test_padded_rows_equal_the_same_rows_alone(tmp_path):
    make_hf_t5(tmp_path / "hf", gated=True)
    model = load_model(tmp_path / "hf")
    ids, mask, decoder_ids, _ = _inputs(3)
    mask[2] = 1
    with torch.no_grad():
        batched = model(ids, mask, decoder_input_ids=decoder_ids)
        alone = model(ids[1:2, :19], decoder_input_ids=decoder_ids[1:2])
    assert (batched[1] - alone[0]).abs().max() < 1e-5


def test_unsupported_feed_forward_is_one_clear_error(tmp_path):
    make_hf_t5(tmp_path / "hf")
    path = tmp_path / "hf" / "config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "feed_forward_proj": "gated-gelu-extra"}))
    with pytest.raises(LmforgeError, match="feed_forward_proj"):
        load_model(tmp_path / "hf")


def test_tiny_preset_overfits_one_batch():
    torch.manual_seed(0)
    model = build_model("t5-tiny").train()
    ids = torch.randint(3, 512, (4, 16))
    labels = torch.randint(3, 512, (4, 8))
    decoder_ids = torch.cat([torch.zeros(4, 1, dtype=torch.long), labels[:, :-1]], dim=1)  # shifted right
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        logits = model(ids, decoder_input_ids=decoder_ids)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
