"""Every recipe in configs/ parses into its config dataclass, and the demo recipe fits its budget."""

from pathlib import Path

import pytest

from lmforge import config as cfg
from lmforge.models import build_model
from lmforge.models.presets import get_preset
from lmforge.train.pretrain import PretrainConfig

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.toml"))


def test_there_are_recipes():
    assert any(p.name == "demo.toml" for p in CONFIGS)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_recipe_parses(path):
    config = cfg.build(PretrainConfig, None, cfg.load_recipe(path))
    model = build_model(get_preset(config.preset, vocab_size=config.vocab_size))
    assert config.seq_len <= model.config.max_seq_len


def test_demo_recipe_is_bounded_in_time_and_resumable():
    config = cfg.build(PretrainConfig, None, cfg.load_recipe(CONFIGS[0].parent / "demo.toml"))
    assert config.data is None or config.data == []  # the built-in corpus
    assert 0 < config.max_minutes <= 10 and config.resume
