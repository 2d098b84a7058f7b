"""The einsum-cascade IR: dataclasses, text form (printer and parser) and verifier."""

from einscade.ir.cascade import (
    Cascade,
    Einsum,
    Grid,
    Iterate,
    Let,
    Param,
    Reduce,
    SizeDef,
    Statement,
    TensorDecl,
    size_symbol,
)
from einscade.ir.errors import BindError, EinscadeError, ParseError, SourceLoc, VerifyError
from einscade.ir.expr import Access, Binary, Call, Expr, Name, Num, Unary
from einscade.ir.parser import parse, parse_einsum, parse_expr, parse_file
from einscade.ir.printer import print_cascade, print_einsum, print_expr
from einscade.ir.scope import Scope, TensorInfo
from einscade.ir.verifier import verify


def load(path) -> Cascade:  # type: ignore[no-untyped-def]
    """Parse and verify an ``.ecas`` file."""
    from pathlib import Path

    source = Path(path).read_text()
    return verify(parse(source, str(path)), source)


def loads(source: str, filename: str = "<string>") -> Cascade:
    """Parse and verify ``.ecas`` text."""
    return verify(parse(source, filename), source)


__all__ = [
    "Access",
    "Binary",
    "BindError",
    "Call",
    "Cascade",
    "EinscadeError",
    "Einsum",
    "Expr",
    "Grid",
    "Iterate",
    "Let",
    "Name",
    "Num",
    "Param",
    "ParseError",
    "Reduce",
    "Scope",
    "SizeDef",
    "SourceLoc",
    "Statement",
    "TensorDecl",
    "TensorInfo",
    "Unary",
    "VerifyError",
    "load",
    "loads",
    "parse",
    "parse_einsum",
    "parse_expr",
    "parse_file",
    "print_cascade",
    "print_einsum",
    "print_expr",
    "size_symbol",
    "verify",
]
