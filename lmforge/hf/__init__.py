"""Everything that knows Hugging Face names: config maps, key maps, checkpoint I/O."""

from lmforge.hf.checkpoint import load_model, read_state_dict, resolve_checkpoint_dir, save_model
from lmforge.hf.config import from_hf_config, to_hf_config

__all__ = [
    "from_hf_config",
    "load_model",
    "read_state_dict",
    "resolve_checkpoint_dir",
    "save_model",
    "to_hf_config",
]
