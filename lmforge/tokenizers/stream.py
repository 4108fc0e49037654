"""Incremental detokenization: text from token ids as they are generated, one at a time.

Decoding each new id alone is wrong twice over: byte-level BPE can split one UTF-8 character across
tokens (a lone piece decodes to U+FFFD), and some decoders depend on context (SentencePiece's Metaspace
drops the leading space of the first token). The fix, as in Hugging Face text-generation-inference and
vLLM, decodes a short window of recent ids twice: once without the new ids (`prefix_offset` up to
`read_offset`) and once with them, and emits the difference once it no longer ends in a partial
character. The window starts at the last emitted token, so each step costs O(1), not O(sequence).
"""

from __future__ import annotations

from lmforge.tokenizers.tokenizer import Tokenizer

_REPLACEMENT = "\ufffd"


class IncrementalDecoder:
    """Turns a stream of token ids into a stream of text pieces.

    The pieces of `push` then `flush` concatenate to `tokenizer.decode(all_ids)`, and no piece ends
    inside a multi-byte character. Use one instance per generated sequence.
    """

    def __init__(self, tokenizer: Tokenizer, *, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        # The window: ids from prefix_offset on. Its first `_n_read` ids (up to read_offset) are
        # already emitted and serve only as context; older ids are dropped.
        self._window: list[int] = []
        self._n_read = 0

    def push(self, token_id: int) -> str:
        """Add one id; return the text it completes ("" while a character is still partial)."""
        if self.skip_special_tokens and self.tokenizer.is_special_id(token_id):
            return ""  # decode would drop it anyway: no window to decode
        self._window.append(token_id)
        prefix_text, new_text = self._decode_window()
        if len(new_text) <= len(prefix_text) or new_text.endswith(_REPLACEMENT):
            return ""  # wait: the last bytes start a character that a later token finishes
        self._advance()
        return new_text[len(prefix_text) :]

    def flush(self) -> str:
        """Return the text still held back; call once, at the end of the sequence."""
        prefix_text, new_text = self._decode_window()
        self._advance()
        return new_text[len(prefix_text) :]

    def _decode_window(self) -> tuple[str, str]:
        """Text of the window without, then with, the ids not yet emitted."""
        decode = self.tokenizer.decode
        prefix_text = decode(self._window[: self._n_read], skip_special_tokens=self.skip_special_tokens)
        new_text = decode(self._window, skip_special_tokens=self.skip_special_tokens)
        return prefix_text, new_text

    def _advance(self) -> None:
        """Everything in the window is emitted: the ids just emitted become the next context."""
        self._window = self._window[self._n_read :]
        self._n_read = len(self._window)
