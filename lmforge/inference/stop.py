"""Stop strings: end a generated text before the first stop string, which is never emitted.

Text arrives in pieces (one per token), and a stop string may be split across them, so the end of
the text that could still grow into a stop string is held back until the next piece decides it.
"""

from __future__ import annotations

from collections.abc import Sequence


class StopChecker:
    """Filters the pieces of one growing text: `push` returns what is safe to show.

    The text is cut at the first stop string to appear (the earliest one, if several complete with
    the same piece); after that `is_stopped` is True and nothing more is emitted.
    """

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.is_stopped = False
        self._held = ""  # the end of the text that may be the start of a stop string

    def push(self, text: str) -> str:
        """Add the next piece of text; return the text that can no longer become part of a stop string."""
        if self.is_stopped:
            return ""
        self._held += text
        start = earliest_stop(self._held, self.stops)
        if start is not None:
            self.is_stopped = True
            out, self._held = self._held[:start], ""
            return out
        n_held = held_back_length(self._held, self.stops)
        cut = len(self._held) - n_held
        out, self._held = self._held[:cut], self._held[cut:]
        return out

    def flush(self) -> str:
        """The text still held back: call once the text is complete (no stop string followed)."""
        out, self._held = ("" if self.is_stopped else self._held), ""
        return out


def earliest_stop(text: str, stops: Sequence[str]) -> int | None:
    """The index in text where the first occurring stop string starts, or None."""
    starts = [i for i in (text.find(s) for s in stops) if i >= 0]
    return min(starts) if starts else None


def held_back_length(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of text that is the beginning (not the whole) of some stop string."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest
