"""The one config mechanism: a dataclass field, its command-line flag and its recipe key share a name.

`max_new_tokens` is the flag `--max-new-tokens` and the key `max_new_tokens` in a TOML (or YAML)
recipe. Values resolve in this order: dataclass default < recipe file < command-line flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import types
import typing
from pathlib import Path

from lmforge.errors import LmforgeError


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(annotation):
    """(type, is_list) for int, float, str, bool, X | None, list[X], tuple[X, ...]."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0])
    if origin in (list, tuple):
        return typing.get_args(annotation)[0], True
    return annotation, False


def field_comments(cls) -> dict[str, str]:
    """{field: its trailing `# comment`} from the class source (and its bases'): the flags' help text."""
    comments = {}
    for klass in reversed(cls.__mro__[:-1]):
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for name, text in re.findall(r"^\s+(\w+):[^#\n]*#\s*(.+)$", source, flags=re.MULTILINE):
            comments[name] = text.strip()
    return comments


def add_arguments(
    parser: argparse.ArgumentParser, cls, *, skip: tuple[str, ...] = (), help: dict | None = None
):
    """Add one flag per field of dataclass `cls` (defaults left unset so recipes can fill them)."""
    hints = typing.get_type_hints(cls)
    texts = {**field_comments(cls), **(help or {})}
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init:
            continue
        kind, is_list = _base_type(hints[f.name])
        text = texts.get(f.name)
        if kind is bool:
            parser.add_argument(
                _flag(f.name), action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=text
            )
        elif kind in (int, float, str):
            parser.add_argument(
                _flag(f.name),
                type=kind,
                nargs="+" if is_list else None,
                default=argparse.SUPPRESS,
                metavar=f.name.upper(),
                help=text,
            )


def load_recipe(path: str | Path) -> dict:
    """A recipe file (TOML, or YAML when PyYAML is installed) as a flat dict."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise LmforgeError(f"cannot read recipe {path}: {e.strerror}") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
    except ImportError as e:
        raise LmforgeError(
            f"reading {path} needs the {e.name} package; pip install it, or use TOML"
        ) from None
    except Exception as e:
        raise LmforgeError(f"recipe {path} is not valid: {e}") from None
    if not isinstance(data, dict):
        raise LmforgeError(f"recipe {path} must be a table of key = value pairs")
    return data


def build(cls, args: argparse.Namespace | None = None, recipe: dict | None = None, **overrides):
    """An instance of dataclass `cls` from its defaults, a recipe dict, parsed flags and overrides."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    values = {}
    for key, value in (recipe or {}).items():
        key = key.replace("-", "_")
        if key not in names:
            raise LmforgeError(f"unknown recipe key {key!r}; valid keys: {', '.join(sorted(names))}")
        values[key] = value
    flags = {k: v for k, v in vars(args).items() if k in names} if args is not None else {}
    flags.update(overrides)
    for group in getattr(cls, "ALTERNATIVES", ()):  # `--epochs 2` over a recipe's max_steps
        if any(k in flags for k in group):
            for k in group:
                values.pop(k, None)
    values.update(flags)
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise LmforgeError(str(e)) from None
