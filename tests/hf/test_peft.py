"""LoRA adapters in the Hugging Face PEFT format, both directions: an adapter trained in lmforge loads with
`peft.PeftModel.from_pretrained` onto the transformers model with the same outputs and the same number of
trainable parameters, one made by `peft` loads into lmforge likewise, and `lmforge merge-lora` writes a
plain checkpoint that transformers opens with the adapted model's outputs."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import _quiet_transformers, make_hf_gpt2, make_hf_llama, make_hf_t5

from lmforge.cli import main
from lmforge.errors import LmforgeError
from lmforge.hf import load_model
from lmforge.hf.peft import load_adapter, save_adapter
from lmforge.nn import apply_lora
from lmforge.nn.lora import count_trainable

peft = pytest.importorskip("peft")
pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers on peft
ATOL = 1e-5


def make_hf_bert(path, *, mlm=False, seed=0):
    """A tiny random BertModel (or BertForMaskedLM) with every weight perturbed, saved at path."""
    transformers = _quiet_transformers()
    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=89, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=56
    )
    model = (transformers.BertForMaskedLM if mlm else transformers.BertModel)(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(path)
    return model


def _inputs(vocab_size, seed=3):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab_size, (2, 15), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    return ids, mask


def _outputs(model, hf_model, ids, mask):
    """(lmforge, Hugging Face) outputs at real tokens: logits, or (an encoder without a head) hidden
    states and the pooler output."""
    with torch.no_grad():
        if model.is_encoder_decoder:
            dec = ids[:, :6].flip(1)
            ours = model(ids, attention_mask=mask, decoder_input_ids=dec)
            return ours, hf_model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        if getattr(model, "lm_head", None) is None:
            ours = torch.cat([model(ids, mask)[mask.bool()], model.pooled(ids, mask)])
            out = hf_model(input_ids=ids, attention_mask=mask)
            theirs = torch.cat([out.last_hidden_state[mask.bool()], out.pooler_output])
            return ours, theirs
        ours = model(ids, attention_mask=mask)[mask.bool()]
        return ours, hf_model(input_ids=ids, attention_mask=mask).logits[mask.bool()]


def _perturb(named_parameters, *, names=("lora_B",), seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in named_parameters:
            if p.requires_grad and any(n in name for n in names):
                p.add_(torch.randn(p.shape, generator=g) * 0.1)


def _peft_trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


OURS = {  # family -> (make, apply_lora arguments)
    "llama": (
        make_hf_llama,
        dict(targets=("q_proj", "v_proj", "mlp.down_proj"), r=4, alpha=8, trainable=("lm_head",)),
    ),
    "llama-rslora": (
        make_hf_llama,
        dict(targets=("k_proj", "o_proj", "gate_proj"), r=3, alpha=5, use_rslora=True),
    ),
    "bert": (
        make_hf_bert,
        dict(targets=("q_proj", "v_proj", "o_proj", "up_proj"), r=4, alpha=16, trainable=("pooler",)),
    ),
    "t5": (make_hf_t5, dict(targets=("q_proj", "v_proj", "up_proj"), r=4, alpha=8)),
}


@pytest.mark.parametrize("case", list(OURS))
def test_lmforge_adapter_loads_in_peft_with_identical_outputs(tmp_path, case):
    make, kwargs = OURS[case]
    make(tmp_path / "base")
    model = load_model(tmp_path / "base")
    ids, mask = _inputs(model.config.vocab_size)
    base_out = _outputs(model, make(tmp_path / "hf"), ids, mask)[0]
    n_trainable = apply_lora(model, **kwargs)
    _perturb(model.named_parameters(), names=("lora_B", "lm_head", "pooler"))
    save_adapter(model, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == kwargs["r"] and config["bias"] == "none"
    peft_model = peft.PeftModel.from_pretrained(make(tmp_path / "hf"), tmp_path / "adapter").eval()
    ours, theirs = _outputs(model, peft_model, ids, mask)
    assert (ours - base_out).abs().max() > 1e-3  # the adapter changes the outputs
    assert (ours - theirs).abs().max() <= ATOL
    trainable = peft.PeftModel.from_pretrained(make(tmp_path / "hf"), tmp_path / "adapter", is_trainable=True)
    assert n_trainable == _peft_trainable(trainable)


THEIRS = {  # case -> (make, peft LoraConfig arguments)
    "llama": (
        make_hf_llama,
        dict(target_modules=["q_proj", "k_proj", "gate_proj"], modules_to_save=["lm_head"], use_rslora=True),
    ),
    "bert": (make_hf_bert, dict(target_modules=["query", "value", "dense"])),
    "t5-v1.1": (lambda p: make_hf_t5(p, gated=True), dict(target_modules=["q", "v", "wi_0", "wi_1"])),
    "bert-mlm": (lambda p: make_hf_bert(p, mlm=True), dict(target_modules=["key", "output.dense"])),
    "gpt2-c_attn": (make_hf_gpt2, dict(target_modules=["c_attn", "c_proj"], fan_in_fan_out=True)),
}


@pytest.mark.parametrize("case", list(THEIRS))
def test_peft_adapter_loads_in_lmforge_with_identical_outputs(tmp_path, case):
    make, kwargs = THEIRS[case]
    hf_model = make(tmp_path / "base")
    peft_model = peft.get_peft_model(hf_model, peft.LoraConfig(r=4, lora_alpha=8, **kwargs))
    n_peft = _peft_trainable(peft_model)
    _perturb(peft_model.named_parameters(), names=("lora_B", "modules_to_save"))
    peft_model.save_pretrained(tmp_path / "adapter")
    model = load_adapter(load_model(tmp_path / "base"), tmp_path / "adapter")
    ours, theirs = _outputs(model, peft_model.eval(), *_inputs(model.config.vocab_size))
    assert (ours - theirs).abs().max() <= ATOL
    assert count_trainable(model) == n_peft


def test_gpt2_fused_c_attn_adapter_round_trips_and_split_qkv_is_refused(tmp_path):
    hf_model = make_hf_gpt2(tmp_path / "base")
    peft_model = peft.get_peft_model(
        hf_model, peft.LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True)
    )
    _perturb(peft_model.named_parameters())
    peft_model.save_pretrained(tmp_path / "theirs")
    model = load_adapter(load_model(tmp_path / "base"), tmp_path / "theirs")
    save_adapter(model, tmp_path / "ours")  # q, k and v share one A: PEFT's c_attn adapter again
    config = json.loads((tmp_path / "ours" / "adapter_config.json").read_text())
    assert config["target_modules"] == ["c_attn"] and config["fan_in_fan_out"] is True
    again = peft.PeftModel.from_pretrained(make_hf_gpt2(tmp_path / "hf"), tmp_path / "ours").eval()
    ours, theirs = _outputs(model, again, *_inputs(101))
    assert (ours - theirs).abs().max() <= ATOL
    split = load_model(tmp_path / "base")
    apply_lora(split, targets=("q_proj", "v_proj"))
    with pytest.raises(LmforgeError, match=r"c_attn.*o_proj, up_proj or down_proj"):
        save_adapter(split, tmp_path / "split")


def _lmforge(*args):
    return subprocess.run(
        [sys.executable, "-m", "lmforge", *map(str, args)], capture_output=True, text=True, timeout=300
    )


def test_merge_lora_cli_writes_a_checkpoint_transformers_opens(tmp_path):
    from lmforge.tokenizers import train_tokenizer

    make_hf_llama(tmp_path / "base")
    (tmp_path / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 5)
    train_tokenizer([tmp_path / "corpus.txt"], vocab_size=40, kind="char").save_pretrained(tmp_path / "base")
    model = load_model(tmp_path / "base")
    apply_lora(model, targets=("q_proj", "v_proj", "up_proj"), r=4, alpha=8, trainable=("lm_head",))
    _perturb(model.named_parameters(), names=("lora_B", "lm_head"))
    save_adapter(model, tmp_path / "adapter")
    result = _lmforge(
        "merge-lora",
        "--model",
        tmp_path / "base",
        "--adapter",
        tmp_path / "adapter",
        "--out",
        tmp_path / "merged",
    )
    assert result.returncode == 0, result.stderr
    transformers = _quiet_transformers()
    merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    ours, theirs = _outputs(model, merged, *_inputs(101))
    assert (ours - theirs).abs().max() <= ATOL
    assert {"tokenizer.json", "tokenizer_config.json"} <= {p.name for p in (tmp_path / "merged").iterdir()}
    assert not any("lora" in k for k in merged.state_dict())


def _assert_cli_error(capsys, args, *needles):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lmforge: error: "), err
    assert all(n in err[0] for n in needles), err[0]


def test_bad_adapters_are_one_line_and_exit_code_2(tmp_path, capsys):
    make_hf_llama(tmp_path / "base")
    make_hf_llama(tmp_path / "wide", hidden_size=60)
    make_hf_llama(tmp_path / "deep", n_layers=3)
    for name in ("wide", "deep"):
        model = load_model(tmp_path / name)
        apply_lora(model, r=4)
        save_adapter(model, tmp_path / f"{name}-adapter")
    (tmp_path / "empty").mkdir()
    merge = ["merge-lora", "--model", str(tmp_path / "base"), "--out", str(tmp_path / "out"), "--adapter"]
    _assert_cli_error(capsys, [*merge, str(tmp_path / "empty")], "no adapter_config.json")
    _assert_cli_error(capsys, [*merge, str(tmp_path / "wide-adapter")], "shape", "another shape")
    _assert_cli_error(
        capsys, [*merge, str(tmp_path / "deep-adapter")], "model.layers.2.self_attn", "another base"
    )
    _assert_cli_error(capsys, [*merge, str(tmp_path / "missing")], "no adapter directory")
    assert not (tmp_path / "out").exists()
    (tmp_path / "deep-adapter" / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    _assert_cli_error(capsys, [*merge, str(tmp_path / "deep-adapter")], "'IA3'", "only LORA")
