"""The pictures of what a model does inside (lmforge/inference/inspect.py): the numbers each one shows
are checked against the model (attention rows are softmax probabilities over the tokens, the rotary
similarity depends on distance alone, PCA keeps a planted plane's distances), and each picture is
looked at: a PNG of the size the drawing function reports, not blank."""

import numpy as np
import pytest
import torch
from pictures import assert_drawn, png_size

import lmforge
from lmforge.errors import LmforgeError
from lmforge.inference.inspect import (
    attention_weights,
    position_panels,
    principal_components,
    write_attention_png,
    write_embedding_map_png,
    write_positions_png,
)
from lmforge.models import build_model, get_preset

TEXT = "The sea is blue and wide."


def _model(preset, tok, **overrides):
    torch.manual_seed(0)
    return build_model(get_preset(preset, vocab_size=tok.vocab_size, **overrides)).eval()


@pytest.mark.parametrize(
    ("preset", "tokenizer"), [("tiny", "bpe"), ("llama-tiny", "bpe"), ("bert-tiny", "wordpiece")]
)
def test_attention_weights_are_each_layers_softmax_over_the_tokens(preset, tokenizer, request):
    tok = request.getfixturevalue(tokenizer)
    model = _model(preset, tok)
    tokens, weights = attention_weights(model, tok, TEXT)
    T = len(tok.encode(TEXT))
    assert len(tokens) == T and weights.shape == (4, 4, T, T)  # 4 layers of 4 heads in every preset
    assert torch.allclose(weights.sum(-1), torch.ones(()), atol=1e-5)
    above = weights[..., torch.ones(T, T, dtype=torch.bool).triu(1)]
    if preset == "bert-tiny":
        assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
        assert (above > 0).all()  # an encoder's tokens see each other both ways
    else:
        assert (above == 0).all()  # a decoder's never see a later token
    assert all(m.kernel == "sdpa" for m in model.modules() if hasattr(m, "kernel"))


def test_a_t5_models_attention_is_its_encoders(unigram):
    model = _model("t5-tiny", unigram)
    tokens, weights = attention_weights(model, unigram, TEXT)
    assert weights.shape == (3, 4, len(tokens), len(tokens))  # the 3 encoder layers, bidirectional
    assert (weights > 0).all() and torch.allclose(weights.sum(-1), torch.ones(()), atol=1e-5)


def test_a_text_longer_than_the_model_reads_is_refused(bpe):
    model = _model("tiny", bpe, max_seq_len=8)
    with pytest.raises(LmforgeError, match="at most 8"):
        attention_weights(model, bpe, TEXT * 5)


def test_attention_pictures(tmp_path, bpe):
    tokens, weights = attention_weights(_model("llama-tiny", bpe), bpe, TEXT)
    grid = write_attention_png(weights, tokens, tmp_path / "grid.png")
    row = write_attention_png(weights, tokens, tmp_path / "row.png", layer=2)
    one = write_attention_png(weights, tokens, tmp_path / "one.png", layer=3, head=1)
    for name, size in (("grid", grid), ("row", row), ("one", one)):
        assert png_size(tmp_path / f"{name}.png") == size
        assert_drawn(tmp_path / f"{name}.png")
    assert row[0] > 2 * row[1]  # one layer of 4 heads: a wide strip
    with pytest.raises(LmforgeError, match="--head 4 is out of range: the model has 4 heads"):
        write_attention_png(weights, tokens, tmp_path / "bad.png", head=4)
    assert not (tmp_path / "bad.png").exists()


def test_learned_positions_show_the_table_and_its_similarities(bpe):
    model = _model("tiny", bpe)
    table, similarity = position_panels(model, model.config, 300)  # more than the 256 it has
    assert np.array_equal(table.matrix, model.pos_embed.weight.detach().numpy())
    assert similarity.matrix.shape == (256, 256) and np.allclose(np.diag(similarity.matrix), 1, atol=1e-5)


def test_trained_positions_are_most_like_their_neighbours(minilm_path):
    model = lmforge.load_model(minilm_path)
    _, similarity = position_panels(model, model.config, 64)
    near = np.diag(similarity.matrix, 1).mean()
    far = np.diag(similarity.matrix, 40).mean()
    assert near > 0.5 > far  # learned from data alone: nearby positions came out alike


def test_rotary_positions_need_no_weights_and_depend_on_distance_alone():
    config = get_preset("llama-1b")  # 1.2B parameters: only its config is read, nothing is built
    cos, _, similarity = position_panels(None, config, 64)
    assert cos.matrix.shape == (64, config.d_head // 2)
    assert np.allclose(cos.matrix[:, 0], np.cos(np.arange(64)), atol=1e-5)  # theta_0 = 1 radian a step
    s = similarity.matrix
    assert np.allclose(s[:-5, :-5], s[5:, 5:], atol=1e-5)  # shifting both positions changes nothing
    assert np.allclose(s, s.T, atol=1e-6) and np.allclose(np.diag(s), 1, atol=1e-5)


def test_t5_buckets_and_bias(unigram):
    encoder, decoder = position_panels(None, get_preset("t5-tiny"), 40)
    later = np.triu(np.ones((40, 40), dtype=bool), 1)  # keys after the query
    assert (np.diag(encoder.matrix) == 0).all() and (np.diag(decoder.matrix) == 0).all()
    assert (encoder.matrix[later] >= 16).all() and (encoder.matrix[~later] < 16).all()  # a half each way
    assert (decoder.matrix[later] == 0).all()  # a decoder never sees later keys: they share bucket 0
    model = _model("t5-tiny", unigram)
    *_, bias = position_panels(model, model.config, 40)
    assert bias.matrix.shape == (40, 40) and np.unique(bias.matrix).size > 5


def test_learned_positions_without_weights_are_refused():
    with pytest.raises(LmforgeError, match="learns its position embeddings"):
        position_panels(None, get_preset("tiny"), 64)


def test_positions_picture(tmp_path):
    panels = position_panels(None, get_preset("llama-tiny"), 64)
    size = write_positions_png(panels, tmp_path / "pos.png", "llama-tiny")
    assert png_size(tmp_path / "pos.png") == size and size[0] > 2 * size[1]  # three panels side by side
    assert_drawn(tmp_path / "pos.png")


def test_pca_keeps_a_planted_plane():
    """Points on a plane in 32 dimensions: their 2-D map keeps every distance, with all the variance."""
    g = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(32, 2, generator=g))  # an orthonormal plane
    flat = torch.randn(10, 2, generator=g) * torch.tensor([3.0, 1.0])
    coords, share = principal_components(flat @ basis.T + 5.0)
    assert torch.allclose(torch.cdist(coords, coords), torch.cdist(flat, flat), atol=1e-4)
    assert torch.allclose(share.sum(), torch.ones(())) and share[0] > share[1]
    assert (coords[coords.abs().argmax(0), [0, 1]] > 0).all()  # signs fixed: the same map every run
    with pytest.raises(LmforgeError, match="at least 2 vectors"):
        principal_components(torch.ones(1, 8))


def test_embedding_map_picture(tmp_path):
    texts = ["a cat", "a kitten", "stock prices fell", "markets tumbled", "x" * 200, ""]
    vectors = torch.randn(6, 16, generator=torch.Generator().manual_seed(0))
    size = write_embedding_map_png(texts, vectors, tmp_path / "map.png")
    assert png_size(tmp_path / "map.png") == size
    assert_drawn(tmp_path / "map.png")
