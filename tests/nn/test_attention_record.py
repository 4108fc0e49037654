"""`recording_attention` keeps what the reference kernel computes: the softmax probabilities of every
attention layer, one (B, n_heads, T, S) tensor per call, in the model's order. Each row sums to 1, a
decoder's rows are 0 above the diagonal and padding keys get 0; recording changes no output, and the
layers get their kernel back afterwards."""

import pytest
import torch

from lmforge.models import build_model, get_preset
from lmforge.nn.attention import Attention, recording_attention

FAMILIES = ("tiny", "llama-tiny", "bert-tiny", "t5-tiny")  # gpt2, llama with GQA (4 heads, 2 kv), bert, t5


def _model(preset: str):
    torch.manual_seed(0)
    return build_model(get_preset(preset, vocab_size=64)).eval()


def _run(model, ids, mask=None):
    if model.is_encoder_decoder:
        return model(ids, mask, decoder_input_ids=ids[:, :5])
    if model.config.model_type == "bert":
        return model(ids, mask)
    return model(ids, attention_mask=mask)


@pytest.mark.parametrize("preset", FAMILIES)
def test_records_are_the_softmax_probabilities(preset):
    model = _model(preset)
    ids = torch.randint(3, 60, (2, 9), generator=torch.Generator().manual_seed(1))
    with recording_attention(model) as records, torch.inference_mode():
        _run(model, ids)
    layers = [m for m in model.modules() if isinstance(m, Attention)]
    assert len(records) == len(layers) and all(len(calls) == 1 for calls in records.values())
    for name, (probs,) in records.items():
        T = 5 if name.startswith("decoder.") else 9
        assert probs.shape == (2, model.config.n_heads, T, 9 if "cross_attn" in name else T)
        assert (probs >= 0).all()
        assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-5)
        is_decoder = model.config.model_type in ("gpt2", "llama") or name.startswith("decoder.")
        above = torch.ones(T, T, dtype=torch.bool).triu(1)
        if is_decoder and "cross_attn" not in name:
            assert (probs[..., above] == 0).all(), name  # a decoder token never sees a later one
        elif "cross_attn" not in name:
            assert (probs[..., above] > 0).all(), name  # an encoder token sees every token


@pytest.mark.parametrize("preset", FAMILIES)
def test_recording_changes_no_output_and_gives_the_kernel_back(preset):
    model = _model(preset)
    ids = torch.randint(3, 60, (2, 9), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        expected = _run(model, ids)
        with recording_attention(model):
            recorded = _run(model, ids)
    assert (recorded - expected).abs().max() < 1e-5
    assert all(m.kernel == "sdpa" and m.record is None for m in model.modules() if isinstance(m, Attention))


def test_padding_keys_get_no_weight():
    model = _model("llama-tiny")
    ids = torch.randint(3, 60, (2, 8), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # a left-padded row
    with recording_attention(model) as records, torch.inference_mode():
        _run(model, ids, mask)
    for (probs,) in records.values():
        assert (probs[1, :, 3:, :3] == 0).all()  # the real tokens of row 1 never attend to its padding
        assert torch.allclose(probs.sum(-1), torch.ones(()), atol=1e-5)


def test_each_call_is_kept_and_a_set_kernel_survives():
    model = _model("tiny")
    model.set_attention("reference")
    with recording_attention(model) as records, torch.inference_mode():
        _run(model, torch.tensor([[5, 6, 7]]))
        _run(model, torch.tensor([[5, 6]]))
    assert [p.shape[-1] for p in records["blocks.0.attn"]] == [3, 2]
    assert all(
        m.kernel == "reference" and m.record is None for m in model.modules() if isinstance(m, Attention)
    )
