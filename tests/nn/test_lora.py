"""LoRA as a drop-in layer: it starts as the base model exactly, trains only the adapters (and the
modules named trainable), merges into plain linear layers with the same outputs, and refuses bad targets."""

import math

import pytest
import torch
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.models import build_model, get_preset
from lmforge.nn import LoRALinear, apply_lora, lora_state_dict, merge_lora
from lmforge.nn.lora import load_lora_state_dict


def _model(family="llama", seed=0):
    torch.manual_seed(seed)
    presets = {"llama": "llama-tiny", "gpt2": "tiny"}
    return build_model(get_preset(presets[family], vocab_size=61, max_seq_len=64)).eval()


def _perturb(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def test_lora_linear_init_matches_peft_and_starts_at_the_base_output():
    torch.manual_seed(0)
    base = nn.Linear(24, 40)
    x = torch.randn(3, 5, 24)
    expected = base(x)
    layer = LoRALinear(base, r=4, alpha=8)
    assert layer.weight is base.weight and layer.bias is base.bias  # same tensors, same state-dict names
    assert layer.lora_A.weight.shape == (4, 24) and layer.lora_B.weight.shape == (40, 4)
    assert torch.count_nonzero(layer.lora_B.weight) == 0
    bound = 1 / math.sqrt(24)  # kaiming_uniform(a=sqrt(5)) on fan_in 24
    assert layer.lora_A.weight.abs().max() <= bound and layer.lora_A.weight.std() > bound / 4
    assert torch.equal(layer(x), expected)
    assert layer.scaling == 2.0 and LoRALinear(base, r=4, alpha=8, use_rslora=True).scaling == 4.0


def test_lora_linear_output_is_base_plus_scaled_low_rank_update():
    torch.manual_seed(0)
    base = nn.Linear(16, 12, bias=False)
    layer = LoRALinear(base, r=2, alpha=6)
    nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(4, 16)
    update = x @ layer.lora_A.weight.T @ layer.lora_B.weight.T * 3.0
    torch.testing.assert_close(layer(x), x @ base.weight.T + update)


def test_dropout_acts_on_the_adapter_input_only_in_training():
    torch.manual_seed(0)
    layer = LoRALinear(nn.Linear(32, 32), r=4, alpha=4, dropout=0.5)
    nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(8, 32)
    layer.eval()
    assert torch.equal(layer(x), layer(x))
    layer.train()
    assert not torch.equal(layer(x), layer(x))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_apply_lora_freezes_all_but_adapters_and_counts_them(family):
    model = _model(family)
    attn = model.blocks[0].attn
    n = apply_lora(model, r=4, alpha=8)
    assert isinstance(attn.q_proj, LoRALinear) and isinstance(attn.v_proj, LoRALinear)
    assert isinstance(attn.k_proj, nn.Linear) and isinstance(attn.o_proj, nn.Linear)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in t or ".lora_B." in t for t in trainable)
    d_model, kv = attn.q_proj.in_features, attn.v_proj.out_features
    per_layer = 4 * d_model + attn.q_proj.out_features * 4 + 4 * d_model + kv * 4
    assert n == per_layer * len(model.blocks)
    assert model.lora_config.targets == sorted(
        f"blocks.{i}.attn.{x}_proj" for i in range(len(model.blocks)) for x in "qv"
    )


def test_train_step_changes_only_adapters_and_the_trainable_head():
    model = _model("llama")
    apply_lora(model, targets=("q_proj", "v_proj", "mlp.down_proj"), r=4, alpha=8, trainable=("lm_head",))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.randint(0, 61, (2, 16))
    model.train()
    for _ in range(2):  # B starts at zero, so A has no gradient until B has moved once
        loss = nn.functional.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    adapters = set(lora_state_dict(model))
    assert changed == adapters  # every adapter and head weight moved; every other weight is bitwise equal
    assert "lm_head.weight" in adapters and "blocks.0.mlp.down_proj.lora_A.weight" in adapters


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_merge_equals_unmerged_and_restores_plain_linears(family):
    model = _model(family)
    ids = torch.randint(0, 61, (2, 19))
    with torch.no_grad():
        base = model(ids)
    apply_lora(model, targets=("q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"), r=4, alpha=8)
    _perturb(model)
    with torch.no_grad():
        adapted = model(ids)
        merge_lora(model)
        merged = model(ids)
    assert (adapted - base).abs().max() > 1e-3  # the adapters matter
    assert (merged - adapted).abs().max() < 1e-5
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert not any(".lora_" in k for k in model.state_dict())


def test_lora_state_dict_round_trips_into_a_fresh_model():
    model = _model("llama")
    apply_lora(model, r=4, alpha=8, trainable=("norm",))
    _perturb(model)
    state = lora_state_dict(model)
    assert set(state) == {k for k in model.state_dict() if ".lora_" in k} | {"norm.weight"}
    other = _model("llama")
    apply_lora(other, r=4, alpha=8, trainable=("norm",))
    with torch.no_grad():
        other.norm.weight.copy_(state["norm.weight"])
    load_lora_state_dict(other, state)
    ids = torch.randint(0, 61, (1, 11))
    with torch.no_grad():
        assert torch.equal(other(ids), model(ids))
    bad = {**state, "blocks.0.attn.q_proj.lora_A.weight": torch.zeros(5, 7)}
    with pytest.raises(LmforgeError, match="another shape"):
        load_lora_state_dict(other, bad)


def test_encoder_and_encoder_decoder_families_use_the_same_target_names():
    for preset in ("bert-tiny", "t5-tiny"):
        model = build_model(get_preset(preset))
        n = apply_lora(model, targets=("q_proj", "v_proj"), r=2, alpha=4)
        assert n > 0 and all(
            isinstance(model.get_submodule(t), LoRALinear) for t in model.lora_config.targets
        )


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"targets": ("query",)}, "no module of this Llama is named 'query'"),
        ({"targets": ("attn",)}, "not a linear layer"),
        ({"trainable": ("head",)}, "'head' (trainable)"),
        ({"r": 0}, "r >= 1"),
    ],
)
def test_bad_arguments_are_one_clear_error(kwargs, needle):
    model = _model("llama")
    with pytest.raises(LmforgeError) as e:
        apply_lora(model, **kwargs)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_tied_heads_and_second_applications_are_refused():
    model = _model("gpt2")  # lm_head shares the embedding
    with pytest.raises(LmforgeError, match="tied"):
        apply_lora(model, targets=("lm_head",))
    apply_lora(model)
    with pytest.raises(LmforgeError, match="already has LoRA"):
        apply_lora(model)
