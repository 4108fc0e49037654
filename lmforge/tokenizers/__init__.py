"""Tokenizers on the Hugging Face `tokenizers` library: load, train, decode incrementally."""

from lmforge.tokenizers.stream import IncrementalDecoder
from lmforge.tokenizers.tokenizer import Tokenizer, load_tokenizer
from lmforge.tokenizers.train import train_tokenizer

__all__ = ["IncrementalDecoder", "Tokenizer", "load_tokenizer", "train_tokenizer"]
