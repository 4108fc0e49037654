"""The one exception type that reaches users as a single clear line (exit code 2 from the CLI)."""


class LmforgeError(Exception):
    """Bad input or an unusable file: the message names the problem and what to do about it."""
