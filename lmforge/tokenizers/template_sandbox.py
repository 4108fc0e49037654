"""The Jinja sandbox chat templates render in, with bounded output, work and time.

A chat template is code that comes with a model (tokenizer_config.json, chat_template.jinja). Jinja's
`ImmutableSandboxedEnvironment`, the one `transformers` uses, keeps it from reaching Python's internals,
but not from looping for hours or building a string of gigabytes. Here every render gets a budget:

- characters: what it writes, and any one string, list or number it builds (a number counts its bytes);
- steps: loop turns, calls, filters and the operators that can grow a value (+ * ** % ~), each one step;
- seconds: wall-clock time, checked at every step.

A template breaks a bound with `TemplateLimitError`, raised at the step that crosses it. Operations that
could allocate far more than their inputs in one go (`'x' * n`, `s|center(n)`, `s.replace('', s)`,
`'%999999999d' % 1`, `2 ** n`, joining or indenting a large value) are checked before they run, so
that a template fails before it allocates, not after. Compile-time constant folding is off for the same
reason: it would evaluate `{{ 'x' * 10**10 }}` before any bound applies.

NOTE: this bounds what a reasonable template does with hostile content, and makes a broken or hostile
template fail fast with a clear error; it is not a jail for arbitrary code (no in-process sandbox is).
"""

from __future__ import annotations

import contextvars
import functools
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from jinja2 import nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer


class TemplateLimitError(Exception):
    """A render crossed its budget; the message completes "the chat template ..."."""


@dataclass
class RenderBudget:
    """What one render may spend (see the module docstring)."""

    max_chars: int
    max_steps: int
    max_seconds: float
    steps: int = 0
    deadline: float = field(default=0.0, repr=False)

    def tick(self) -> None:
        self.steps += 1
        if self.steps > self.max_steps:
            raise TemplateLimitError(f"takes more than {self.max_steps:,} steps (loop turns and calls)")
        if time.monotonic() > self.deadline:
            raise TemplateLimitError(f"takes more than {self.max_seconds:g} s")

    def check_size(self, value: Any, what: str = "builds a value") -> Any:
        """`value`, once its size is known to be within max_chars."""
        size = value.bit_length() // 8 if _is_int(value) else None
        if isinstance(value, (str, bytes, list, tuple, dict, set, frozenset)):
            size = len(value)
        if size is not None and size > self.max_chars:
            raise TemplateLimitError(f"{what} of more than {self.max_chars:,} characters")
        return value

    def check_number(self, value: Any) -> None:
        """A number given to a call may be a width or a count: it may not exceed max_chars."""
        if _is_int(value) and abs(value) > self.max_chars:
            raise TemplateLimitError(
                f"passes the number {value:,} to a call, more than the {self.max_chars:,} allowed"
            )


# NOTE: set by `render_bounded` only; a template compiled here renders through it, never on its own.
_budget: contextvars.ContextVar[RenderBudget] = contextvars.ContextVar("chat_template_budget")
# A %-format or str.format field: flags, then the width and precision, where a size can hide.
_FORMAT_NUMBERS = re.compile(r"[%:][-#0 +<>=^,_]*(\d+)?(?:\.(\d+))?")


def _current() -> RenderBudget:
    return _budget.get()


def _check_format(budget: RenderBudget, fmt: Any) -> None:
    """A format string may not ask for a field wider than max_chars ("%999999999d", "{:>999999999}")."""
    if not isinstance(fmt, str):
        return
    for match in _FORMAT_NUMBERS.finditer(fmt):
        for digits in match.groups():
            if digits and (len(digits) > 18 or int(digits) > budget.max_chars):
                raise TemplateLimitError(f"formats a field wider than {budget.max_chars:,} characters")


def _estimate(name: str, value: Any, args: tuple, kwargs: dict) -> int | None:
    """The size of what `value.name(*args)` or `value|name(*args)` builds, for the operations that can
    build far more than their inputs: replace, join, indent. None for any other."""
    if name == "replace" and isinstance(value, str) and len(args) >= 2:
        old, new = str(args[0]), str(args[1])
        count = len(value) + 1 if old == "" else value.count(old)
        return len(value) + count * max(len(new) - len(old), 0)
    if name == "join" and isinstance(value, (list, tuple, str)):
        separator = args[0] if args else kwargs.get("d", "")
        return sum(len(str(x)) for x in value) + len(str(separator)) * max(len(value) - 1, 0)
    if name == "indent" and isinstance(value, str):
        width = args[0] if args else kwargs.get("width", 4)
        width = len(width) if isinstance(width, str) else width
        return len(value) + (value.count("\n") + 1) * width if isinstance(width, int) else None
    return None


def _check_call(budget: RenderBudget, name: str, value: Any, args: tuple, kwargs: dict) -> None:
    for argument in (*args, *kwargs.values()):
        budget.check_number(argument)
    if name in ("format", "format_map"):
        _check_format(budget, value)
    size = _estimate(name, value, args, kwargs)
    if size is not None and size > budget.max_chars:
        raise TemplateLimitError(f"builds a string of more than {budget.max_chars:,} characters")


def _guarded_filter(name: str, function: Callable) -> Callable:
    """A filter that spends a step and checks its arguments and result against the budget."""
    # Context, eval-context and environment filters take that object first, then the value.
    skip = 1 if hasattr(function, "jinja_pass_arg") else 0

    @functools.wraps(function)
    def guarded(*args, **kwargs):
        budget = _current()
        budget.tick()
        if len(args) > skip:
            _check_call(budget, name, args[skip], args[skip + 1 :], kwargs)
        return budget.check_size(function(*args, **kwargs))

    return guarded


class _Guard(NodeTransformer):
    """Rewrites a parsed template so that loops and `~` go through the environment's guards."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        node = self.generic_visit(node)
        node.iter = _guard_call("guard_iter", [node.iter], node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        return _guard_call("guard_concat", self.generic_visit(node).nodes, node.lineno)


def _guard_call(name: str, args: list, lineno: int) -> nodes.Call:
    # An environment attribute, not a global name: a template cannot shadow it.
    return nodes.Call(nodes.EnvironmentAttribute(name), args, [], None, None, lineno=lineno)


class BoundedSandbox(ImmutableSandboxedEnvironment):
    """`transformers`' chat template environment, every step of a render counted against its budget."""

    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def __init__(self, **options):
        super().__init__(optimized=False, **options)
        self.filters["tojson"] = lambda x, indent=None: json.dumps(x, ensure_ascii=False, indent=indent)
        self.filters = {name: _guarded_filter(name, f) for name, f in self.filters.items()}

    def call(__self, __context, __obj, *args, **kwargs):  # Jinja's names: any keyword passes through
        budget = _current()
        budget.tick()
        wrapped = getattr(__obj, "__wrapped__", __obj)  # the sandbox wraps str.format
        owner = getattr(wrapped, "__self__", None)
        _check_call(budget, getattr(wrapped, "__name__", ""), owner, args, kwargs)
        return budget.check_size(super().call(__context, __obj, *args, **kwargs))

    def call_binop(self, context, operator_: str, left: Any, right: Any) -> Any:
        budget = _current()
        budget.tick()
        _check_binop(budget, operator_, left, right)
        return budget.check_size(self.binop_table[operator_](left, right))

    def concat(self, parts: Iterable[str]) -> str:  # joins the output of macros, blocks and `set` blocks
        parts = list(parts)
        budget = _current()
        budget.tick()
        if sum(len(p) for p in parts) > budget.max_chars:
            raise TemplateLimitError(f"builds a string of more than {budget.max_chars:,} characters")
        return "".join(parts)

    def guard_concat(self, *parts: Any) -> str:  # the `~` operator
        return self.concat(str(p) for p in parts)

    def guard_iter(self, iterable: Any) -> Iterator:
        budget = _current()
        for item in iterable:
            budget.tick()
            yield item


def _check_binop(budget: RenderBudget, operator_: str, left: Any, right: Any) -> None:
    if operator_ == "*":
        if _is_int(left) and _is_int(right):
            size = (left.bit_length() + right.bit_length()) // 8
        else:  # a sequence repeated n times
            sequence, n = (left, right) if _is_int(right) else (right, left)
            is_sized = isinstance(sequence, (str, list, tuple)) and _is_int(n)
            size = len(sequence) * abs(n) if is_sized else 0
        if size > budget.max_chars:
            raise TemplateLimitError(f"builds a value of more than {budget.max_chars:,} characters")
    elif operator_ == "**" and _is_int(left) and _is_int(right) and abs(left) > 1:
        if right > 0 and left.bit_length() * right > 8 * budget.max_chars:
            raise TemplateLimitError(f"builds a number of more than {budget.max_chars:,} bytes")
    elif operator_ == "%" and isinstance(left, str):
        _check_format(budget, left)
        for value in right if isinstance(right, tuple) else (right,):
            budget.check_number(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@functools.lru_cache(maxsize=8)
def compile_template(source: str):
    """A chat template compiled in `BoundedSandbox`; jinja2.TemplateError when it is not valid Jinja."""
    from jinja2 import TemplateError

    def raise_exception(message: str):
        raise TemplateError(message)

    # The same options as transformers, so that templates written for it behave the same here.
    env = BoundedSandbox(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = raise_exception
    tree = _Guard().visit(env.parse(source))
    tree.set_environment(env)
    return env.from_string(tree)


def render_bounded(template, variables: dict[str, Any], budget: RenderBudget) -> str:
    """The template rendered with `variables`, within `budget` (else TemplateLimitError)."""
    budget.steps, budget.deadline = 0, time.monotonic() + budget.max_seconds
    token = _budget.set(budget)
    try:
        pieces, size = [], 0
        for piece in template.generate(**variables):
            size += len(piece)
            if size > budget.max_chars:
                raise TemplateLimitError(f"writes more than {budget.max_chars:,} characters")
            pieces.append(piece)
        return "".join(pieces)
    finally:
        _budget.reset(token)
