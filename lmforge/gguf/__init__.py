"""GGUF files (llama.cpp's format): models and tokenizers read from their metadata and tensors."""

from lmforge.gguf.reader import load_gguf_model, read_gguf
from lmforge.gguf.tokenizer import load_gguf_tokenizer

__all__ = ["load_gguf_model", "load_gguf_tokenizer", "read_gguf"]
