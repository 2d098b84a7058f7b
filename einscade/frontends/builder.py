"""A small helper for the attention library: assemble a cascade from readable pieces.

Builders write statements in the ``.ecas`` syntax (so library code reads like the IR dumps
a researcher sees) and get back a verified ``Cascade``::

    b = CascadeBuilder("attention", inputs=["Q[b, h, p, e]", "K[b, h, m, e]"])
    b.param("scale", "float", "1 / sqrt(E)")
    b.stmt("QK[b, h, m, p] = Q[b, h, p, e] * K[b, h, m, e] :: sum(e)")
    b.output("QK")
    cascade = b.build()
"""

from __future__ import annotations

from einscade.ir import parse
from einscade.ir.cascade import Cascade
from einscade.ir.printer import print_cascade
from einscade.ir.verifier import verify


class CascadeBuilder:
    """Collects declarations and statements as text, then parses and verifies them once."""

    def __init__(self, name: str, inputs: list[str]):
        self.name = name
        self.inputs = list(inputs)
        self.decls: list[str] = []
        self.lines: list[str] = []
        self.outputs: list[str] = []
        self._depth = 1

    def input(self, decl: str) -> CascadeBuilder:
        self.inputs.append(decl)
        return self

    def size(self, name: str, value: object) -> CascadeBuilder:
        self.decls.append(f"size {name} = {value}")
        return self

    def param(self, name: str, kind: str, default: object = None) -> CascadeBuilder:
        suffix = "" if default is None else f" = {default}"
        self.decls.append(f"param {name}: {kind}{suffix}")
        return self

    def grid(self, rank: str, axes: list[str] | tuple[str, ...]) -> CascadeBuilder:
        self.decls.append(f"grid {rank} = ({', '.join(axes)})")
        return self

    def let(self, name: str, value: str) -> CascadeBuilder:
        self.decls.append(f"let {name} = {value}")
        return self

    def stmt(self, text: str) -> CascadeBuilder:
        self.lines.append("  " * self._depth + text)
        return self

    def begin_iterate(self, rank: str) -> CascadeBuilder:
        self.lines.append("  " * self._depth + f"iterate {rank} {{")
        self._depth += 1
        return self

    def end_iterate(self) -> CascadeBuilder:
        self._depth -= 1
        self.lines.append("  " * self._depth + "}")
        return self

    def output(self, *names: str) -> CascadeBuilder:
        self.outputs.extend(names)
        return self

    def text(self) -> str:
        head = f"cascade @{self.name}({', '.join(self.inputs)}) -> ({', '.join(self.outputs)}) {{"
        body = [f"  {d}" for d in self.decls] + self.lines
        return "\n".join([head, *body, "}"]) + "\n"

    def build(self) -> Cascade:
        """Parse and verify; errors point into the generated text, shown in full."""
        source = self.text()
        filename = f"<builder {self.name}>"
        return verify(parse(source, filename), source)


def render(cascade: Cascade) -> str:
    """Shorthand for the printed form."""
    return print_cascade(cascade)
