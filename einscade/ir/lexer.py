"""Tokens of the ``.ecas`` text form, each with its line and column."""

from __future__ import annotations

import re
from dataclasses import dataclass

from einscade.ir.errors import ParseError, SourceLoc

_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\r\n]+|\#[^\n]*)
  | (?P<number>(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>::|->|//|==|!=|<=|>=|[-+*/%<>=()\[\]{},:@])
    """,
    re.VERBOSE,
)


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # "number", "ident", "op" or "eof"
    text: str
    loc: SourceLoc


def tokenize(source: str, filename: str = "<string>") -> list[Token]:
    tokens: list[Token] = []
    pos, line, line_start = 0, 1, 0
    while pos < len(source):
        match = _TOKEN.match(source, pos)
        loc = SourceLoc(filename, line, pos - line_start + 1)
        if match is None:
            raise ParseError(f"unexpected character {source[pos]!r}", loc, source)
        kind = match.lastgroup or ""
        text = match.group()
        if kind != "ws":
            tokens.append(Token(kind, text, loc))
        newlines = text.count("\n")
        if newlines:
            line += newlines
            line_start = match.start() + text.rindex("\n") + 1
        pos = match.end()
    # End of input sits right after the last token, so "expected '}'" points at a real line.
    last = tokens[-1].loc if tokens else SourceLoc(filename, 1, 1)
    end_col = last.col + len(tokens[-1].text) if tokens else 1
    tokens.append(Token("eof", "", SourceLoc(filename, last.line, end_col)))
    return tokens
