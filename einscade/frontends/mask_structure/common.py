"""What a recognised mask is (:class:`MaskStructure`) and the helpers every family's fit uses.

Trust rule of the package: every candidate is rebuilt as a boolean matrix from its own
formulas and compared with the constant element by element (:func:`matches`); a near miss
gives None, never a wrong structure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from einscade.frontends.local import halo_attention, maxvit_attention, neighborhood_attention
from einscade.frontends.softmax import softmax_attention
from einscade.ir.cascade import Cascade
from einscade.ir.expr import Expr, substitute
from einscade.ir.printer import print_expr

MASKED_AT = -1e4
"""Additive mask values at or below this hide their key (exp(-1e4) underflows in float32)."""

# Candidate matrices are checked on this many spread-out query rows before the full matrix,
# so a family that does not fit is rejected without building a [P, M] tensor.
SAMPLE_ROWS = 16

_SEQUENCE_FAMILIES = ("full", "causal", "sliding_window", "causal_window", "sinks", "prefix_lm")
_BUILDERS: dict[str, Callable[..., Cascade]] = {
    **dict.fromkeys((*_SEQUENCE_FAMILIES, "documents"), softmax_attention),
    **dict.fromkeys(("blocked", "maxvit_grid"), maxvit_attention),
    "halo": halo_attention,
    "neighborhood": neighborhood_attention,
}

Rows = Callable[[torch.Tensor], torch.Tensor]  # query indices [R] -> candidate rows [R, M]


@dataclass(frozen=True, slots=True)
class MaskStructure:
    """A recognised mask: its family, parameters, and how to build the equal cascade."""

    family: str
    params: tuple[tuple[str, object], ...]
    kwargs: tuple[tuple[str, object], ...]

    def param(self, name: str) -> object:
        """One parameter by name (``structure.param("left")``)."""
        return dict(self.params)[name]

    def builder_kwargs(self) -> dict[str, object]:
        """Keyword arguments of :attr:`builder` giving a cascade with exactly this mask."""
        return dict(self.kwargs)

    @property
    def builder(self) -> Callable[..., Cascade]:
        """The attention-library builder of this family."""
        return _BUILDERS[self.family]

    def lookup_tensors(self) -> dict[str, torch.Tensor]:
        """Input tensors the built cascade reads in its predicate (``doc`` for documents)."""
        if self.family != "documents":
            return {}
        return {"doc": torch.tensor(self.param("doc_ids"), dtype=torch.int64)[None]}

    def build(self, **options: object) -> Cascade:
        """``builder(**builder_kwargs(), **options)``; options such as ``scale``."""
        return self.builder(**self.builder_kwargs(), **options)

    def predicate_text(self) -> str:
        """The mask as one IR predicate, lets and constants inlined ("" for ``full``).

        Written in the built cascade's names: ``p``/``m`` with sizes ``P``/``M``, or the
        grid axes ``px, mx, ...`` of ``grid p = (px, ...)``.
        """
        cascade = self.build()
        qk = next(s for s in cascade.einsums() if s.target == "QK")
        if qk.predicate is None:
            return ""
        return print_expr(_inline_constants(qk.predicate, cascade))


def _inline_constants(expr: Expr, cascade: Cascade) -> Expr:
    bindings: dict[str, Expr] = {let.name: let.value for let in cascade.lets}
    bindings |= {s.name: s.value for s in cascade.sizes}
    bindings |= {
        p.name: p.default for p in cascade.params if p.kind == "int" and p.default is not None
    }
    for _ in range(len(bindings) + 1):  # lets name lets and sizes name sizes: to a fixpoint
        inlined = substitute(expr, bindings)
        if inlined == expr:
            break
        expr = inlined
    return expr


def structure(family: str, params: dict[str, object], kwargs: dict[str, object]) -> MaskStructure:
    return MaskStructure(family, tuple(params.items()), tuple(kwargs.items()))


def matches(attend: torch.Tensor, rows: Rows) -> bool:
    """Whether the candidate equals ``attend`` everywhere: sampled rows first, then all."""
    n = attend.shape[0]
    sample = spread(n, SAMPLE_ROWS)
    if not torch.equal(rows(sample), attend[sample]):
        return False
    return torch.equal(rows(torch.arange(n)), attend)


def spread(n: int, count: int) -> torch.Tensor:
    """Up to ``count`` row indices spread over ``0 .. n - 1``, both ends included."""
    return torch.linspace(0, n - 1, min(n, count)).round().long().unique()


def first_true(matrix: torch.Tensor) -> torch.Tensor:
    """Column of the first True per row (0 for an empty row)."""
    return matrix.to(torch.uint8).argmax(1)


def last_true(matrix: torch.Tensor) -> torch.Tensor:
    """Column of the last True per row (``cols - 1`` for an empty row)."""
    return matrix.shape[1] - 1 - first_true(matrix.flip(1))


def run_lengths(values: torch.Tensor) -> set[int]:
    return {int(n) for n in torch.unique_consecutive(values, return_counts=True)[1]}
