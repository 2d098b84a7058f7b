"""What a pass is: a frozen dataclass whose fields are its options, cascade in, cascade out.

A pass returns a ``PassResult``: the new cascade and the notes it made, one per rewrite it
applied and one per match it declined with the reason (shown at ``EINSCADE_DEBUG=3``).
Passes never mutate their input (the IR is immutable) and never verify: the pipeline
verifies after every pass.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from einscade.ir.cascade import Cascade
from einscade.ir.errors import EinscadeError


@dataclass(frozen=True, slots=True)
class Note:
    """One thing a pass did (``rewrite``) or chose not to do (``decline``), and why."""

    kind: str  # "rewrite" or "decline"
    message: str


@dataclass(frozen=True, slots=True)
class PassResult:
    cascade: Cascade
    notes: tuple[Note, ...] = ()

    @property
    def rewrites(self) -> int:
        return sum(1 for n in self.notes if n.kind == "rewrite")


@dataclass(frozen=True)
class Pass:
    """Base class; subclasses set ``name`` and implement ``run``."""

    name: ClassVar[str] = ""

    def run(self, cascade: Cascade) -> PassResult:
        raise NotImplementedError

    @classmethod
    def from_options(cls, options: dict[str, str]) -> Pass:
        """Build from spec-string options (``tile{p=128,m=64}``), converting by field type."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        converted: dict[str, object] = {}
        for key, raw in options.items():
            if key not in fields:
                known = ", ".join(fields) or "none"
                raise EinscadeError(f"pass {cls.name!r} has no option {key!r} (options: {known})")
            converted[key] = _convert(raw, fields[key].type, cls.name, key)
        missing = [
            name
            for name, f in fields.items()
            if name not in converted
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ]
        if missing:
            raise EinscadeError(f"pass {cls.name!r} needs option {missing[0]!r}")
        return cls(**converted)

    def spec(self) -> str:
        """This pass as a spec-string item; ``from_options`` reads it back."""
        values = [
            f"{f.name}={getattr(self, f.name)}"
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != f.default
        ]
        return self.name + (f"{{{','.join(values)}}}" if values else "")


def _convert(raw: str, annotation: object, pass_name: str, key: str) -> object:
    kind = str(annotation)
    try:
        if "bool" in kind:
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1")
        if "int" in kind:
            return int(raw)
        if "float" in kind:
            return float(raw)
    except ValueError:
        raise EinscadeError(f"pass {pass_name!r}: option {key}={raw!r} is not a {kind}") from None
    return raw


REGISTRY: dict[str, type[Pass]] = {}


def register(cls: type[Pass]) -> type[Pass]:
    """Class decorator: make a pass available to pipeline spec strings by its ``name``."""
    if not cls.name or cls.name in REGISTRY:
        raise ValueError(f"pass name {cls.name!r} is empty or taken")
    REGISTRY[cls.name] = cls
    return cls
