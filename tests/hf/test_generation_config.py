"""generation_config.json: written by save_pretrained as transformers writes it, read back by
transformers, and its EOS ids end generation; a legacy pytorch_model.bin says once that it is legacy."""

import json

import pytest
import torch
from conftest import _quiet_transformers, make_hf_gpt2

from lmforge.errors import LmforgeError
from lmforge.hf import load_model
from lmforge.inference.generate import GenerationConfig, eos_token_ids_of, generate_ids
from lmforge.models import build_model, get_preset

IDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")


class NoTokenizerEos:
    eos_token_id = None  # the EOS set then comes from the model's files alone


@pytest.mark.parametrize("preset", ["tiny", "llama-tiny", "t5-tiny"])
def test_saved_generation_config_is_read_by_transformers(tmp_path, preset):
    ids = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3} if preset != "t5-tiny" else {}
    model = build_model(get_preset(preset, max_seq_len=32, **ids))
    model.save_pretrained(tmp_path)
    transformers = _quiet_transformers()
    theirs = transformers.GenerationConfig.from_pretrained(tmp_path)
    written = json.loads((tmp_path / "generation_config.json").read_text())
    for key in IDS:
        assert getattr(theirs, key) == getattr(model.config, key, None)
        assert written.get(key) == getattr(model.config, key, None)
    assert any(written.get(key) is not None for key in IDS)


def test_an_encoder_writes_no_generation_config(tmp_path):
    build_model(get_preset("bert-tiny")).save_pretrained(tmp_path)
    assert (tmp_path / "config.json").exists() and not (tmp_path / "generation_config.json").exists()


def test_generation_config_eos_ends_generation_and_survives_a_save(tmp_path):
    make_hf_gpt2(tmp_path / "hf")
    model = load_model(tmp_path / "hf")
    config = GenerationConfig(max_new_tokens=5, temperature=0)
    first = next(generate_ids(model, [[1, 2, 3]], config))[0]
    assert first != model.config.eos_token_id
    path = tmp_path / "hf" / "generation_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "eos_token_id": [0, first]}))
    model = load_model(tmp_path / "hf")
    eos = eos_token_ids_of(model, NoTokenizerEos())
    assert eos == {0, first}
    steps = list(generate_ids(model, [[1, 2, 3]], config, eos_token_ids=eos))
    assert [s[0] for s in steps] == [first]  # the generation config's EOS ended it
    model.save_pretrained(tmp_path / "ours")
    transformers = _quiet_transformers()
    assert transformers.GenerationConfig.from_pretrained(tmp_path / "ours").eos_token_id == [0, first]


@pytest.mark.parametrize("bad", ['"x"', "[1, null]", "true"])
def test_a_wrongly_typed_generation_config_is_one_line_naming_the_file(tmp_path, bad):
    make_hf_gpt2(tmp_path)
    (tmp_path / "generation_config.json").write_text(f'{{"eos_token_id": {bad}}}')
    with pytest.raises(LmforgeError, match=r"generation_config\.json: eos_token_id") as info:
        load_model(tmp_path)
    assert "\n" not in str(info.value)


def test_pytorch_model_bin_is_weights_only_and_noted_as_legacy_once(tmp_path, capsys):
    hf_model = make_hf_gpt2(tmp_path / "hf")
    ckpt = tmp_path / "bin"
    ckpt.mkdir()
    (ckpt / "config.json").write_text((tmp_path / "hf" / "config.json").read_text())
    torch.save(hf_model.state_dict(), ckpt / "pytorch_model.bin")
    load_model(ckpt)
    load_model(ckpt)
    err = capsys.readouterr().err
    assert err.count("legacy") == 1 and "safetensors is preferred" in err
    load_model(tmp_path / "hf")  # safetensors: nothing to say
    assert "legacy" not in capsys.readouterr().err


@pytest.mark.slow
def test_its_sampling_settings_are_the_defaults_a_flag_overrides(tmp_path):
    """do_sample false: greedy unless --temperature says otherwise; a wrongly typed value is not trusted."""
    from conftest import make_hf_llama
    from lmforge_cli import run_lmforge

    from lmforge.tokenizers import train_tokenizer

    tok = train_tokenizer(iter(["a small corpus of words for a tokenizer"] * 20), vocab_size=300, kind="bpe")
    tok.save_pretrained(tmp_path)
    make_hf_llama(tmp_path, vocab_size=tok.vocab_size)
    path = tmp_path / "generation_config.json"
    saved = json.loads(path.read_text())
    path.write_text(json.dumps({**saved, "do_sample": False, "top_k": "many", "repetition_penalty": 1.3}))
    assert load_model(tmp_path).sampling_defaults() == {"temperature": 0.0, "repetition_penalty": 1.3}

    def generate(*flags):
        result = run_lmforge(
            "generate", "--model", tmp_path, "--prompt", "a small", "--max-new-tokens", 8, *flags
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    greedy = generate("--temperature", 0, "--repetition-penalty", 1.3)
    assert generate() == greedy == generate("--seed", 5)  # greedy, whatever the seed
    assert generate("--temperature", 0) == greedy  # the saved penalty still applies
    assert len({generate("--temperature", 1.5, "--seed", s) for s in range(4)}) > 1  # a flag overrides
