"""The attention formula written out (`reference_attention`) agrees with PyTorch's fused kernel: on
random tensors with every kind of mask, and as the attention of a whole model of every family."""

import pytest
import torch
import torch.nn.functional as F
from conftest import make_hf_gpt2, make_hf_llama, make_hf_t5

from lmforge.errors import LmforgeError
from lmforge.hf import load_model
from lmforge.inference import GenerationConfig, generate_ids
from lmforge.nn.attention import reference_attention
from tests.models.test_bert import make_hf_encoder

TOL = 1e-5


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
@pytest.mark.parametrize("mask_kind", ["none", "causal", "bool", "float"])
def test_reference_equals_sdpa(n_kv_heads, mask_kind):
    g = torch.Generator().manual_seed(0)
    B, H, D = 2, 4, 8
    T, S = (7, 7) if mask_kind == "causal" else (5, 9)  # T < S: new queries after cached keys
    q = torch.randn(B, H, T, D, generator=g)
    k, v = (torch.randn(B, n_kv_heads, S, D, generator=g) for _ in range(2))
    kwargs = {"enable_gqa": n_kv_heads != H}
    if mask_kind == "causal":
        kwargs["is_causal"] = True
    elif mask_kind == "bool":
        kwargs["attn_mask"] = torch.rand(B, 1, T, S, generator=g) > 0.3
        kwargs["attn_mask"][..., 0] = True  # no row fully masked (SDPA gives NaN there)
    elif mask_kind == "float":
        kwargs["attn_mask"] = torch.randn(1, H, T, S, generator=g)  # a position bias
    expected = F.scaled_dot_product_attention(q, k, v, **kwargs)
    assert (reference_attention(q, k, v, **kwargs) - expected).abs().max() < TOL


def _families(tmp_path):
    make_hf_gpt2(tmp_path / "gpt2")
    make_hf_llama(tmp_path / "llama")  # grouped-query attention: 6 query heads, 2 key/value heads
    make_hf_encoder(tmp_path / "bert", "bert-mlm")
    make_hf_t5(tmp_path / "t5")  # a relative position bias, cross-attention
    return {name: load_model(tmp_path / name) for name in ("gpt2", "llama", "bert", "t5")}


def test_every_family_runs_on_the_reference(tmp_path):
    """Logits with padding (and generation with the KV cache for decoders) agree within 1e-5."""
    ids = torch.randint(3, 60, (2, 12), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # a left-padded row
    for name, model in _families(tmp_path).items():
        runs = []
        for kernel in ("sdpa", "reference"):
            model.set_attention(kernel)
            with torch.inference_mode():
                if name == "t5":
                    out = model(ids, mask, decoder_input_ids=ids[:, :5])
                else:
                    out = model(ids, attention_mask=mask)
                tokens = None
                if name in ("gpt2", "llama"):
                    config = GenerationConfig(max_new_tokens=6, temperature=0)
                    tokens = list(generate_ids(model, [ids[0].tolist(), ids[1, 4:].tolist()], config))
            runs.append((out.float(), tokens))
        (fast, fast_tokens), (ref, ref_tokens) = runs
        assert (fast - ref).abs().max() < TOL, name
        assert fast_tokens == ref_tokens, name
    with pytest.raises(LmforgeError, match="unknown attention 'flash'"):
        model.set_attention("flash")


@pytest.mark.slow
def test_generate_runs_on_the_reference_from_the_command_line(tmp_path, bpe):
    """`--attention reference` gives the same greedy text; an unknown kernel is one line."""
    from lmforge_cli import assert_one_line_error, run_lmforge

    make_hf_llama(tmp_path, vocab_size=bpe.vocab_size)
    bpe.save_pretrained(tmp_path)
    texts = []
    for kernel in ("sdpa", "reference"):
        result = run_lmforge(
            "generate", "--model", tmp_path, "--prompt", "def main", "--max-new-tokens", 12,
            "--temperature", 0, "--attention", kernel,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        texts.append(result.stdout)
    assert texts[0] == texts[1] and texts[0].strip()
    bad = run_lmforge("generate", "--model", tmp_path, "--prompt", "x", "--attention", "flash")
    assert_one_line_error(bad, "--attention", "flash")
