"""The one config mechanism: a dataclass field, its command-line flag and its recipe key share a name.

`max_new_tokens` is the flag `--max-new-tokens` and the key `max_new_tokens` in a TOML (or YAML)
recipe. Values resolve in this order: dataclass default < recipe file < command-line flag.

The field is also where its allowed values are declared: its type, and for a number its range
(`lr: float = bounded(1e-3, gt=0)`). `check_fields` checks every field of a config against them; the
configs call it from `__post_init__`, `build` once more, and a numeric flag's parser checks the same
range, so a flag, a recipe key and a Python argument are refused alike, in one line.

And it is where the flag's help is: `stride: int = option(64, "tokens shared by windows", ge=0)`
(or, in older configs, the field's trailing `# comment`); `--help` adds the range and the default.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import math
import re
import types
import typing
from pathlib import Path

from lmforge.errors import LmforgeError


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a number may take: ge/gt a lower bound, le/lt an upper one (None: open that side).
    A number is always finite: NaN or an infinity is never in a range."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def __contains__(self, value) -> bool:
        return (
            (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
            and (self.lt is None or value < self.lt)
        )

    def __str__(self) -> str:
        """' >= 1', ' in (0, 1]', or '' when unbounded."""
        low = (self.ge, "[", ">=") if self.ge is not None else (self.gt, "(", ">")
        high = (self.le, "]", "<=") if self.le is not None else (self.lt, ")", "<")
        if low[0] is not None and high[0] is not None:
            return f" in {low[1]}{_number(low[0])}, {_number(high[0])}{high[1]}"
        bound = low if low[0] is not None else high
        return f" {bound[2]} {_number(bound[0])}" if bound[0] is not None else ""


def _number(x) -> str:
    """1, 0.5, 1e-06, and 2**63 for a large power of two."""
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e16:
        x = int(x)
    if isinstance(x, int) and x >= 1 << 20 and x & (x - 1) == 0:
        return f"2**{x.bit_length() - 1}"
    return f"{x:g}" if isinstance(x, float) else str(x)


# An integer option is a 64-bit integer: torch and NumPy hold it in one.
INT64 = 2**63


def bounded(default, *, ge=None, gt=None, le=None, lt=None, help: str | None = None):
    """A dataclass field whose value must lie in the given range (see Range): `bounded(8, ge=1)`."""
    return option(default, help, ge=ge, gt=gt, le=le, lt=lt)


def option(default, help: str | None, *, ge=None, gt=None, le=None, lt=None):
    """A dataclass field with its flag's help text and, for a number, its range:
    `stride: int = option(64, "tokens shared by consecutive windows", ge=0)`."""
    metadata = {} if help is None else {"help": help}
    if any(bound is not None for bound in (ge, gt, le, lt)):
        metadata["range"] = Range(ge, gt, le, lt)
    return dataclasses.field(default=default, metadata=metadata)


_KIND_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _is_kind(value, kind) -> bool:
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind) if kind in _KIND_NAMES else True


def _is_finite(value) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond any float
        return False


def check_value(label: str, value, kind, limits: Range | None = None, *, is_list=False, is_optional=False):
    """`value` as a field of type `kind` (int, float, str, bool; a list of them) holds it, or an
    LmforgeError naming `label`, the value and what it must be. A float field takes an int (as a
    float); a list field takes one string (as a one-item list)."""
    if value is None and is_optional:
        return None
    if is_list and isinstance(value, str):
        value = [value]
    if is_list:
        is_valid = isinstance(value, list | tuple) and all(_is_kind(v, kind) for v in value)
    else:
        is_valid = _is_kind(value, kind)
        if is_valid and kind is float:
            is_valid = _is_finite(value) and value in (limits or Range())
            value = float(value) if is_valid else value
        elif is_valid and kind is int:
            is_valid = value in (limits or Range())
    if is_valid:
        return list(value) if is_list else value
    raise _refusal(label, kind, limits, value, is_list=is_list)


def describe(kind, limits: Range | None = None) -> str:
    """What a field of type `kind` takes: 'an integer >= 1', 'a finite number in (0, 1]', 'a string'."""
    if kind is float:
        return f"a finite number{limits or ''}"
    return _KIND_NAMES[kind] + (str(limits or "") if kind is int else "")


def _refusal(label: str, kind, limits: Range | None, value, *, is_list=False, is_text=False) -> LmforgeError:
    """The one-line error for a value outside its field's type or range; is_text: `value` is a flag's text."""
    allowed = f"a list of {_KIND_NAMES[kind].split()[-1]}s" if is_list else describe(kind, limits)
    is_wrong_string = isinstance(value, str) and kind is not str and not is_text
    got = f"the string {value!r}" if is_wrong_string else repr(value)
    got = got if len(got) <= 60 else f"{got[:50]}... ({len(got)} characters)"
    return LmforgeError(f"{label} must be {allowed}, got {got}")


def _field_label(name: str) -> str:
    return f"{_flag(name)} (recipe key {name})"


@functools.cache
def _field_types(cls) -> dict[str, tuple]:
    """{field: (kind, is_list, is_optional)} of the init fields of dataclass `cls`."""
    hints = typing.get_type_hints(cls)
    types_ = {}
    for f in dataclasses.fields(cls):
        if f.init:
            args = typing.get_args(hints[f.name])
            types_[f.name] = (*_base_type(hints[f.name]), type(None) in args)
    return types_


@functools.cache
def field_ranges(cls) -> dict[str, Range]:
    """{field: its declared Range} of dataclass `cls`; a subclass that redeclares a field's default
    without bounds keeps its base class's (the range belongs to the name)."""
    ranges = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            ranges.update(
                {f.name: f.metadata["range"] for f in dataclasses.fields(klass) if "range" in f.metadata}
            )
    return ranges


def check_fields(config) -> None:
    """Check every field of a config dataclass against its type and declared range (normalising an int
    given for a float, a string given for a list); raise an LmforgeError naming the first that is not."""
    ranges = field_ranges(type(config))
    for name, (kind, is_list, is_optional) in _field_types(type(config)).items():
        value = check_value(
            _field_label(name),
            getattr(config, name),
            kind,
            ranges.get(name),
            is_list=is_list,
            is_optional=is_optional,
        )
        object.__setattr__(config, name, value)


class NumberOption:
    """An argparse `type` for a numeric flag: parses the text, then checks it as check_value does."""

    def __init__(self, label: str, kind, limits: Range | None = None):
        self.label, self.kind, self.limits = label, kind, limits or Range()

    def __call__(self, text: str):
        try:
            value = self.kind(text)
        except ValueError:  # not a number at all, or an integer of thousands of digits
            raise _refusal(self.label, self.kind, self.limits, text, is_text=True) from None
        return check_value(self.label, value, self.kind, self.limits)


def field_flag(cls, name: str) -> NumberOption:
    """The argparse `type` of a flag outside any config that takes what field `name` of dataclass `cls`
    takes (`lmforge classify --max-length`, as FinetuneConfig.max_length)."""
    return NumberOption(_flag(name), _field_types(cls)[name][0], field_ranges(cls).get(name))


def number_flag(flag: str, kind, **bounds) -> NumberOption:
    """The argparse `type` of a numeric flag that belongs to no config: `type=number_flag("--top-k", int, ge=1)`."""
    return NumberOption(flag, kind, Range(**bounds))


def _base_type(annotation):
    """(type, is_list) for int, float, str, bool, X | None, list[X], tuple[X, ...]."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(args[0])
    if origin in (list, tuple):
        return typing.get_args(annotation)[0], True
    return annotation, False


@functools.cache  # reading the source takes a while: a test may build the parser many times
def _own_comments(klass) -> dict[str, str]:
    """{field: its trailing `# comment`} of the fields in `klass`'s own source. A field whose value
    spans lines, `(` to `)`, has its comment after the `)`."""
    try:
        source = inspect.getsource(klass)
    except (OSError, TypeError):
        return {}
    found = re.findall(
        r"^ +(\w+):[^#\n]*?(?:\(\n(?:[^#\n]*\n)*? *\)[^#\n]*)?#\s*(.+)$", source, flags=re.MULTILINE
    )
    return {name: text.strip() for name, text in found}


def field_comments(cls) -> dict[str, str]:
    """{field: its trailing `# comment`} from the class source (and its bases')."""
    comments = {}
    for klass in reversed(cls.__mro__[:-1]):
        comments.update(_own_comments(klass))
    return comments


def field_help(cls) -> dict[str, str]:
    """{field: its flag's help}: the `help` of its option(), else its trailing comment; from the class
    that declares the field last (a subclass that redeclares a field may say it anew)."""
    texts = {}
    for klass in reversed(cls.__mro__[:-1]):
        own = inspect.get_annotations(klass)
        comments = _own_comments(klass)
        for f in dataclasses.fields(klass) if dataclasses.is_dataclass(klass) else ():
            text = f.metadata.get("help") or comments.get(f.name)
            if f.name in own and text:
                texts[f.name] = text
    return texts


def _help_text(f: dataclasses.Field, text: str | None, kind, limits: Range | None) -> str:
    """The help, the values the field takes, and its default where the help does not say it."""
    text = text or f.name.replace("_", " ")
    if limits and str(limits):
        text = f"{text}; {describe(kind, limits)}"
    has_default = f.default not in (None, "", False, dataclasses.MISSING)
    if has_default and "default" not in text:
        text += f" (default: {_number(f.default) if kind in (int, float) else f.default})"
    return text


def add_arguments(
    parser: argparse.ArgumentParser,
    cls,
    *,
    skip: tuple[str, ...] = (),
    only: tuple[str, ...] | None = None,
    help: dict | None = None,
    recipe: bool = True,
):
    """Add one flag per field of dataclass `cls` (defaults left unset so recipes can fill them), or
    only those named in `only`; each flag's help says its range and default. recipe=False: a command
    without a recipe, whose errors name the flag alone."""
    texts = {**field_help(cls), **(help or {})}
    for f in dataclasses.fields(cls):
        if f.name in skip or not f.init or (only is not None and f.name not in only):
            continue
        kind, is_list, _ = _field_types(cls)[f.name]
        limits = field_ranges(cls).get(f.name)
        text = _help_text(f, texts.get(f.name), kind, limits)
        if kind is bool:
            parser.add_argument(
                _flag(f.name), action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=text
            )
        elif kind in (int, float, str):
            numeric = kind in (int, float) and not is_list
            parser.add_argument(
                _flag(f.name),
                type=NumberOption(_field_label(f.name) if recipe else _flag(f.name), kind, limits)
                if numeric
                else kind,
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
        config = cls(**values)
    except (TypeError, ValueError) as e:
        raise LmforgeError(str(e)) from None
    check_fields(config)  # the configs check in __post_init__ too; this covers one that does not
    return config
