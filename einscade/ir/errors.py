"""Error types that name the place: ``file:line:col: message`` plus the source line and a caret."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SourceLoc:
    """A position in an ``.ecas`` text: 1-based line and column."""

    file: str
    line: int
    col: int


class EinscadeError(Exception):
    """Base class of every error einscade raises on bad input."""


class LocatedError(EinscadeError):
    """An error at a source position; ``str()`` gives ``file:line:col: msg`` and a caret line."""

    def __init__(self, message: str, loc: SourceLoc | None = None, source: str | None = None):
        self.message = message
        self.loc = loc
        self.source = source
        super().__init__(self._render())

    def _render(self) -> str:
        if self.loc is None:
            return self.message
        head = f"{self.loc.file}:{self.loc.line}:{self.loc.col}: {self.message}"
        if self.source is None:
            return head
        lines = self.source.splitlines()
        if not 1 <= self.loc.line <= len(lines):
            return head
        text = lines[self.loc.line - 1]
        # Keep tabs so the caret lines up under the same column as in the source line.
        pad = "".join(c if c == "\t" else " " for c in text[: self.loc.col - 1])
        return f"{head}\n  {text}\n  {pad.ljust(self.loc.col - 1)}^"


class ParseError(LocatedError):
    """The text is not a well-formed cascade."""


class VerifyError(LocatedError):
    """The cascade is well formed but breaks a rule of the IR (SSA, ranks, reductions...)."""


class BindError(EinscadeError):
    """Run-time tensors or parameters do not fit the cascade (shapes, sizes, missing inputs)."""
