"""Generated-code values and the line sink of the kernel body.

A ``Val`` is a piece of Triton code plus what the lowering needs to know about it: the
block axes it varies along (in the kernel's canonical order, e.g. ``(p0, m0)``), its kind,
the precedence of its top operator (for minimal parentheses) and the *level* it is
available at: 0 before the key loop (the prologue), 1 inside it, 2 after it (the epilogue).

The ``Emitter`` writes lines into those three sections. A value is emitted into the
earliest section its inputs allow, so loop-invariant work (the Q tile load, row masks) is
hoisted out of the loop without a separate pass; equal code is bound once per section
(common subexpressions), and the first line a statement writes into a section is preceded
by a comment quoting the IR statement.
"""

from __future__ import annotations

import keyword
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

PROLOGUE, LOOP, EPILOGUE = 0, 1, 2

# Python precedence of the operators the kernels use (higher binds tighter).
CMP, OR, AND, ADD, MUL, UNARY, ATOM = 4, 5, 6, 8, 9, 10, 12
PREC = {
    "or": OR, "and": AND, "+": ADD, "-": ADD, "*": MUL, "/": MUL, "//": MUL, "%": MUL,
    "==": CMP, "!=": CMP, "<": CMP, "<=": CMP, ">": CMP, ">=": CMP,
}  # fmt: skip
PY_OP = {"and": "&", "or": "|"}

RESERVED = frozenset(keyword.kwlist) | {
    "tl", "triton", "range", "float", "int", "min", "max", "abs", "len", "print",
}  # fmt: skip


@dataclass(frozen=True)
class Val:
    """A generated expression and its facts (see the module docstring)."""

    code: str
    axes: tuple[str, ...] = ()
    kind: str = "float"  # "float", "int" or "bool"
    level: int = PROLOGUE
    prec: int = ATOM
    nonneg: bool = False
    native: bool = False  # a float tile still in its storage dtype (fp16, bf16)
    finite: bool = False  # known finite wherever it is evaluated (loads, constants)
    traced: bool = False  # a Triton tensor (depends on a coordinate), not a host scalar
    zero: frozenset[str] = frozenset()  # condition texts outside which the value is 0
    const: int | float | None = None


def paren(value: Val, prec: int) -> str:
    """The value's code, parenthesized if its operator binds looser than ``prec``."""
    return value.code if value.prec >= prec else f"({value.code})"


def ordered(axes: Iterable[str], order: tuple[str, ...]) -> tuple[str, ...]:
    """``axes`` in the kernel's canonical axis order."""
    present = set(axes)
    return tuple(a for a in order if a in present)


def expand(value: Val, axes: tuple[str, ...]) -> Val:
    """Insert ``None`` dims so that ``value`` broadcasts against a block over ``axes``."""
    if not value.axes or value.axes == axes:
        return value
    missing = [a for a in value.axes if a not in axes]
    if missing:
        raise ValueError(f"cannot expand a block over {value.axes} to {axes}")
    index = ", ".join(":" if a in value.axes else "None" for a in axes)
    return replace(value, code=f"{paren(value, ATOM)}[{index}]", axes=axes, prec=ATOM)


class Namer:
    """Python identifiers for generated names, unique within one kernel."""

    def __init__(self, reserved: Iterable[str] = ()):
        self.taken: set[str] = set(RESERVED) | set(reserved)

    def fresh(self, hint: str) -> str:
        base = re.sub(r"\W", "_", hint) or "t"
        if base[0].isdigit():
            base = "t" + base
        name, k = base, 2
        while name in self.taken:
            name, k = f"{base}_{k}", k + 1
        self.taken.add(name)
        return name


@dataclass
class Emitter:
    """Lines of the prologue, loop body and epilogue, with per-section CSE."""

    namer: Namer
    lines: dict[int, list[str]] = field(default_factory=lambda: {0: [], 1: [], 2: []})
    cse: dict[int, dict[str, str]] = field(default_factory=lambda: {0: {}, 1: {}, 2: {}})
    comment: str | None = None
    home: int = PROLOGUE
    commented: set[int] = field(default_factory=set)

    def begin(self, comment: str, home: int) -> None:
        """Start the lines of one IR statement whose natural section is ``home``."""
        self.comment, self.home, self.commented = comment, home, set()

    def emit(self, section: int, line: str) -> None:
        if self.comment is not None and section not in self.commented:
            note = "  (loop-invariant part)" if section < self.home else ""
            self.lines[section].append(f"# {self.comment}{note}")
            self.commented.add(section)
        self.lines[section].append(line)

    @staticmethod
    def visible(section: int) -> tuple[int, ...]:
        return (PROLOGUE,) if section == PROLOGUE else (PROLOGUE, section)

    def lookup(self, code: str, section: int) -> tuple[str, int] | None:
        for s in self.visible(section):
            if code in self.cse[s]:
                return self.cse[s][code], s
        return None

    def bind(self, value: Val, hint: str, floor: int = PROLOGUE) -> Val:
        """Assign ``value`` to a fresh name in the earliest section allowed; reuse an equal
        binding that is visible there."""
        section = max(value.level, floor)
        found = self.lookup(value.code, section)
        if found is not None:
            name, where = found
            return replace(value, code=name, prec=ATOM, level=where)
        name = self.namer.fresh(hint)
        self.emit(section, f"{name} = {value.code}")
        self.cse[section][value.code] = name
        return replace(value, code=name, prec=ATOM, level=section)

    def take(self, section: int) -> list[str]:
        """The lines written into ``section`` so far; the section starts over empty (a second
        copy of the loop body is generated into it)."""
        lines, self.lines[section], self.cse[section] = self.lines[section], [], {}
        return lines

    def assign(self, name: str, value: Val, section: int) -> Val:
        """``name = code`` in ``section`` (statement results and loop carries)."""
        self.emit(section, f"{name} = {value.code}")
        return replace(value, code=name, prec=ATOM, level=section)
