"""Kernel parameters and where the launcher takes their values from."""

from __future__ import annotations

from dataclasses import dataclass

# Roles whose values are fixed when the kernel is compiled (``tl.constexpr``).
CONSTEXPR_ROLES = ("constant", "head", "pad")


@dataclass(frozen=True)
class KernelArg:
    """One kernel parameter and where its value comes from at launch.

    role: ``pointer`` (tensor), ``stride`` (tensor, dim), ``size`` (a bound size symbol),
    ``param``, ``constant`` (constexpr fixed by the cascade: ``value``), ``head`` (constexpr
    head size bound at launch), ``pad`` (constexpr: the head size ``tensor`` rounded up to a
    power of two, at least 16). A block-sparse schedule adds ``layout`` (an int32 array of
    the block layout named by ``tensor``) and ``layout_scalar`` (an int of the layout named
    by ``tensor``: rows per unit of a batch rank, an index array's row length, a stride of
    the key grid); ``visits`` is the int32 debug output counting the tiles each program
    visits.
    """

    name: str
    role: str
    tensor: str = ""
    dim: int = -1
    value: int | None = None

    @property
    def constexpr(self) -> bool:
        return self.role in CONSTEXPR_ROLES
