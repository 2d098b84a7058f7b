"""Fresh names for what a rewrite introduces (stable: the same input gives the same names)."""

from __future__ import annotations


def fresh_name(base: str, taken: set[str]) -> str:
    """``base``, else ``base2``, ``base3``... (``m1_2`` after a digit); the result is taken."""
    sep = "_" if base[-1:].isdigit() else ""
    name, k = base, 2
    while name in taken:
        name, k = f"{base}{sep}{k}", k + 1
    taken.add(name)
    return name
