"""fill-mask: the same tokens and scores as transformers' fill-mask pipeline on a tiny random
BertForMaskedLM; only the mask token's text becomes a mask; a model without an MLM head is one line."""

import pytest
import torch
from lmforge_cli import assert_one_line_error, run_lmforge

import lmforge
from lmforge.device import resolve_dtype
from lmforge.inference.fill_mask import encode_masked

TEXTS = [
    "the model reads the [MASK] of the text.",
    "[MASK] tokens are predicted from both sides",
    "a [MASK] with two [MASK] in it",
]


@pytest.fixture(scope="module")
def mlm_dir(tmp_path_factory, wordpiece):
    import transformers

    path = tmp_path_factory.mktemp("mlm")
    wordpiece.save_pretrained(path)
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=wordpiece.vocab_size,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=96,
        max_position_embeddings=64,
        pad_token_id=wordpiece.pad_token_id,
    )
    model = transformers.BertForMaskedLM(config).eval()
    with torch.no_grad():  # a sharper output distribution than the random init, so the ranking is not a tie
        model.cls.predictions.decoder.weight.mul_(20)
    model.save_pretrained(path)
    return path


@pytest.mark.parametrize("text", TEXTS)
def test_same_tokens_and_scores_as_the_transformers_pipeline(mlm_dir, text):
    import transformers

    pipe = transformers.pipeline("fill-mask", model=str(mlm_dir), device="cpu")
    expected = pipe(text, top_k=5)
    model, tok = lmforge.load_model(mlm_dir), lmforge.load_tokenizer(mlm_dir)
    got = lmforge.fill_mask(model, tok, text, top_k=5)
    if text.count("[MASK]") == 1:
        expected, got = [expected], [got]
    assert len(got) == len(expected) == text.count("[MASK]")
    for ours, theirs in zip(got, expected):
        assert [c["token"] for c in ours] == [c["token"] for c in theirs]
        assert [c["token_str"] for c in ours] == [c["token_str"] for c in theirs]
        assert [c["sequence"] for c in ours] == [c["sequence"] for c in theirs]
        assert [c["score"] for c in ours] == pytest.approx([c["score"] for c in theirs], abs=1e-5)


def test_only_the_mask_text_becomes_a_control_token(mlm_dir):
    tok = lmforge.load_tokenizer(mlm_dir)
    ids = encode_masked(tok, "look [SEP] here [CLS] and [MASK] [PAD]")
    control = [i for i in ids if tok.is_special_id(i) and i != tok.unk_token_id]
    # the post-processor's [CLS] ... [SEP], and the one mask; the other special texts stay text (whose
    # characters this small vocabulary may only know as [UNK])
    assert control == [tok.cls_token_id, tok.mask_token_id, tok.sep_token_id]
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id


def test_cli_prints_each_candidate(mlm_dir):
    result = run_lmforge("fill-mask", "--model", mlm_dir, "--text", TEXTS[2], "--top-k", 3)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "mask 1:" and lines[4] == "mask 2:" and len(lines) == 8
    # as the command loads it: in LMFORGE_PRECISION's dtype (bf16 under `make test-bf16`)
    model, tok = lmforge.load_model(mlm_dir, dtype=resolve_dtype(None)), lmforge.load_tokenizer(mlm_dir)
    first = lmforge.fill_mask(model, tok, TEXTS[2], top_k=3)[0][0]
    assert lines[1].startswith(f"{first['score']:.4f}  {first['token_str']!r}")


def test_a_model_without_a_masked_lm_head_is_one_line(hf_gpt2):
    result = run_lmforge("fill-mask", "--model", hf_gpt2[1], "--text", "a [MASK]")
    assert_one_line_error(result, "masked-LM")


def test_a_text_without_a_mask_is_one_line(mlm_dir):
    result = run_lmforge("fill-mask", "--model", mlm_dir, "--text", "no mask here")
    assert_one_line_error(result, "no [MASK] to fill")
