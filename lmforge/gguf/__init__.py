"""GGUF files (llama.cpp's format): models and tokenizers read from their metadata and tensors, and
written as them."""

from lmforge.gguf.reader import load_gguf_model, read_gguf
from lmforge.gguf.tokenizer import read_gguf_tokenizer
from lmforge.gguf.writer import write_gguf

__all__ = ["load_gguf_model", "read_gguf", "read_gguf_tokenizer", "write_gguf"]
