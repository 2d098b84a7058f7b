"""Recursive-descent parser for the ``.ecas`` text form (grammar in docs/ir.md).

Errors name the place and what was expected: ``attn.ecas:2:25: expected '(', got 'e'``
followed by the source line and a caret.
"""

from __future__ import annotations

from pathlib import Path

from einscade.ir import ops
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
)
from einscade.ir.errors import ParseError
from einscade.ir.expr import Access, Binary, Call, Expr, Name, Num, Unary
from einscade.ir.lexer import Token, tokenize

_COMPARISON_TOKENS = ops.COMPARISONS


class _Parser:
    def __init__(self, source: str, filename: str):
        self.source = source
        self.tokens = tokenize(source, filename)
        self.pos = 0

    # -- token helpers -------------------------------------------------------------------
    @property
    def tok(self) -> Token:
        return self.tokens[self.pos]

    def error(self, message: str, token: Token | None = None) -> ParseError:
        token = token or self.tok
        return ParseError(message, token.loc, self.source)

    def describe(self, token: Token) -> str:
        return "end of input" if token.kind == "eof" else repr(token.text)

    def at(self, text: str) -> bool:
        return self.tok.text == text and self.tok.kind in ("op", "ident")

    def accept(self, text: str) -> Token | None:
        if self.at(text):
            token = self.tok
            self.pos += 1
            return token
        return None

    def expect(self, text: str) -> Token:
        token = self.accept(text)
        if token is None:
            raise self.error(f"expected {text!r}, got {self.describe(self.tok)}")
        return token

    def ident(self, what: str = "a name") -> Token:
        token = self.tok
        if token.kind != "ident" or token.text in ops.KEYWORDS:
            raise self.error(f"expected {what}, got {self.describe(token)}")
        self.pos += 1
        return token

    def comma_list(self, close: str, item):  # type: ignore[no-untyped-def]
        items = []
        if not self.at(close):
            items.append(item())
            while self.accept(","):
                items.append(item())
        self.expect(close)
        return tuple(items)

    # -- cascade structure ---------------------------------------------------------------
    def cascade(self) -> Cascade:
        start = self.expect("cascade")
        self.expect("@")
        name = self.ident("the cascade's name").text
        self.expect("(")
        inputs = self.comma_list(")", self.tensor_decl)
        self.expect("->")
        self.expect("(")
        outputs = self.comma_list(")", lambda: self.ident("an output tensor").text)
        self.expect("{")
        sizes, params, grids, lets = [], [], [], []
        while True:
            if self.at("size"):
                sizes.append(self.size_def())
            elif self.at("param"):
                params.append(self.param())
            elif self.at("grid"):
                grids.append(self.grid())
            elif self.at("let"):
                lets.append(self.let())
            else:
                break
        body = self.statements()
        self.expect("}")
        if self.tok.kind != "eof":
            raise self.error(
                f"expected end of input after the cascade, got {self.describe(self.tok)}"
            )
        return Cascade(
            name, inputs, outputs, body, tuple(sizes), tuple(params), tuple(grids), tuple(lets),
            start.loc,
        )  # fmt: skip

    def tensor_decl(self) -> TensorDecl:
        token = self.ident("an input tensor")
        self.expect("[")
        ranks = self.comma_list("]", lambda: self.ident("a rank name").text)
        return TensorDecl(token.text, ranks, token.loc)

    def size_def(self) -> SizeDef:
        start = self.expect("size")
        name = self.ident("a size symbol").text
        self.expect("=")
        return SizeDef(name, self.expr(), start.loc)

    def param(self) -> Param:
        start = self.expect("param")
        name = self.ident("a parameter name").text
        self.expect(":")
        kind = self.tok.text
        if kind not in ("int", "float"):
            raise self.error(f"expected 'int' or 'float', got {self.describe(self.tok)}")
        self.pos += 1
        default = self.expr() if self.accept("=") else None
        return Param(name, kind, default, start.loc)

    def grid(self) -> Grid:
        start = self.expect("grid")
        rank = self.ident("a rank name").text
        self.expect("=")
        self.expect("(")
        axes = self.comma_list(")", lambda: self.ident("an axis rank").text)
        return Grid(rank, axes, start.loc)

    def let(self) -> Let:
        start = self.expect("let")
        name = self.ident("a let name").text
        self.expect("=")
        return Let(name, self.expr(), start.loc)

    def statements(self) -> tuple[Statement, ...]:
        body: list[Statement] = []
        while not self.at("}") and self.tok.kind != "eof":
            body.append(self.iterate() if self.at("iterate") else self.einsum())
        return tuple(body)

    def iterate(self) -> Iterate:
        start = self.expect("iterate")
        rank = self.ident("the iterated rank").text
        self.expect("{")
        body = []
        while not self.at("}"):
            if self.tok.kind == "eof" or self.at("iterate"):
                raise self.error(f"expected an Einsum or '}}', got {self.describe(self.tok)}")
            body.append(self.einsum())
        self.expect("}")
        return Iterate(rank, tuple(body), start.loc)

    def einsum(self) -> Einsum:
        token = self.ident("a tensor definition")
        self.expect("[")
        indices = self.comma_list("]", self.expr)
        self.expect("=")
        value = self.expr()
        reduce = None
        if self.accept("::"):
            op_token = self.tok
            if op_token.text not in ops.REDUCTIONS:
                names = ", ".join(ops.REDUCTIONS)
                raise self.error(f"expected a reduction ({names}), got {self.describe(op_token)}")
            self.pos += 1
            self.expect("(")
            ranks = self.comma_list(")", lambda: self.ident("a rank name").text)
            reduce = Reduce(op_token.text, ranks)
        predicate = self.expr() if self.accept("if") else None
        return Einsum(token.text, indices, value, reduce, predicate, token.loc)

    # -- expressions, lowest precedence first --------------------------------------------
    def expr(self) -> Expr:
        return self.binary_level(ops.BINARY_PRECEDENCE["or"])

    def binary_level(self, level: int) -> Expr:
        if level == ops.NOT_PRECEDENCE:
            return self.not_expr()
        if level > ops.BINARY_PRECEDENCE["*"]:
            return self.unary()
        lhs = self.binary_level(level + 1)
        compared = False  # a comparison already parsed at this level (not one in parentheses)
        while (
            self.tok.kind in ("op", "ident") and ops.BINARY_PRECEDENCE.get(self.tok.text) == level
        ):
            op_token = self.tok
            self.pos += 1
            if op_token.text in _COMPARISON_TOKENS:
                if compared:
                    raise self.error("comparisons do not chain; use 'and'", op_token)
                compared = True
            rhs = self.binary_level(level + 1)
            lhs = Binary(op_token.text, lhs, rhs, op_token.loc)
        return lhs

    def not_expr(self) -> Expr:
        token = self.accept("not")
        if token is not None:
            return Unary("not", self.not_expr(), token.loc)
        return self.binary_level(ops.NOT_PRECEDENCE + 1)

    def unary(self) -> Expr:
        token = self.accept("-")
        if token is None:
            return self.primary()
        literal = self.tok
        if literal.kind == "number" or (literal.kind == "ident" and literal.text == "inf"):
            number = self.primary()
            assert isinstance(number, Num)
            return Num(-number.value, token.loc)
        return Unary("-", self.unary(), token.loc)

    def primary(self) -> Expr:
        token = self.tok
        if token.kind == "number":
            self.pos += 1
            text = token.text
            is_float = any(c in text for c in ".eE")
            return Num(float(text) if is_float else int(text), token.loc)
        if self.accept("("):
            inner = self.expr()
            self.expect(")")
            return inner
        if token.kind == "ident" and token.text == "inf":
            self.pos += 1
            return Num(float("inf"), token.loc)
        name = self.ident("an expression").text
        if self.accept("["):
            return Access(name, self.comma_list("]", self.expr), token.loc)
        if self.accept("("):
            if name not in ops.MAP_FUNCTIONS:
                raise self.error(f"unknown function {name!r}", token)
            args = self.comma_list(")", self.expr)
            arity = ops.MAP_FUNCTIONS[name]
            if len(args) != arity:
                raise self.error(f"{name}() takes {arity} argument(s), got {len(args)}", token)
            return Call(name, args, token.loc)
        return Name(name, token.loc)


def parse(source: str, filename: str = "<string>") -> Cascade:
    """Parse one cascade from ``.ecas`` text (not verified; see ``verify``)."""
    return _Parser(source, filename).cascade()


def parse_file(path: str | Path) -> Cascade:
    path = Path(path)
    return parse(path.read_text(), str(path))


def parse_expr(source: str, filename: str = "<expr>") -> Expr:
    """Parse a single expression (for builders and tests)."""
    parser = _Parser(source, filename)
    result = parser.expr()
    if parser.tok.kind != "eof":
        raise parser.error(f"unexpected {parser.describe(parser.tok)} after the expression")
    return result


def parse_einsum(source: str, filename: str = "<stmt>") -> Einsum:
    """Parse a single Einsum statement (for builders)."""
    parser = _Parser(source, filename)
    result = parser.einsum()
    if parser.tok.kind != "eof":
        raise parser.error(f"unexpected {parser.describe(parser.tok)} after the statement")
    return result
