"""Shared fixtures: tiny random Hugging Face checkpoints built with `transformers` and saved to disk."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)


def _quiet_transformers():
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def make_hf_gpt2(path, *, vocab_size=101, n_embd=48, n_layer=3, n_head=4, n_positions=64, seed=0):
    """A tiny random GPT2LMHeadModel saved at path; returns the transformers model."""
    transformers = _quiet_transformers()
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=vocab_size,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        n_positions=n_positions,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = transformers.GPT2LMHeadModel(config).eval()
    model.save_pretrained(path)
    return model


def make_hf_llama(
    path,
    *,
    vocab_size=101,
    hidden_size=48,
    n_layers=2,
    n_heads=6,
    n_kv_heads=2,
    intermediate_size=100,
    tie=False,
    rope_scaling=None,
    seed=0,
):
    """A tiny random LlamaForCausalLM saved at path; returns the transformers model."""
    transformers = _quiet_transformers()
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=128,
        tie_word_embeddings=tie,
        rope_scaling=rope_scaling,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = transformers.LlamaForCausalLM(config).eval()
    # Random init leaves norms at 1; perturb them so a wrong norm placement shows in the logits.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(path)
    return model


@pytest.fixture
def hf_gpt2(tmp_path):
    return make_hf_gpt2(tmp_path / "gpt2"), tmp_path / "gpt2"


@pytest.fixture
def hf_llama(tmp_path):
    return make_hf_llama(tmp_path / "llama"), tmp_path / "llama"


def make_hf_t5(path, *, gated=False, vocab_size=71, n_decoder_layers=3, seed=0, initializer_factor=1.0):
    """A tiny random T5ForConditionalGeneration saved at path; returns the transformers model.

    gated=False is T5 v1.0 (ReLU, head tied to the embedding, decoder output rescaled); gated=True is
    v1.1 / Flan-T5 (gated-GELU, a separate head). The encoder has 2 blocks.
    NOTE: transformers' `generate` sizes its T5 cache by the encoder's depth; pass n_decoder_layers=2 there.
    """
    transformers = _quiet_transformers()
    torch.manual_seed(seed)
    v11 = dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False) if gated else {}
    config = transformers.T5Config(
        vocab_size=vocab_size,
        d_model=32,
        d_kv=8,
        d_ff=48,
        num_layers=2,
        num_decoder_layers=n_decoder_layers,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=20,
        dropout_rate=0.0,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
        initializer_factor=initializer_factor,
        **v11,
    )
    model = transformers.T5ForConditionalGeneration(config).eval()
    with torch.no_grad():
        if gated:
            # transformers 5 ties every T5 head in memory; a v1.1 checkpoint has its own.
            model.lm_head.weight = torch.nn.Parameter(torch.randn(vocab_size, 32) * 0.2)
        # Random init leaves norms at 1; perturb them so a wrong norm placement shows in the logits.
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(path)
    return model
