"""Spellings of two parts of an attention site that take more than a table lookup.

- einsum equations for the score product and for ``A @ V`` (any letters and dim order,
  no ellipsis), read as permutations to and from SDPA layout;
- K and V repeated per query head for grouped-query attention (transformers' ``repeat_kv``,
  ``repeat_interleave``), read through to the unrepeated tensors.
"""

from __future__ import annotations

from torch.fx import Node

from einscade.frontends.fx import ops


class NoMatch(Exception):
    """Raised while reading a site; the message is the reason it is skipped."""


# -- einsum equations ------------------------------------------------------------------------


def einsum_parts(node: Node) -> tuple[str, list[object]]:
    """(equation without spaces, operands) of an einsum with an explicit output."""
    equation, rest = node.args[0], list(node.args[1:])
    if len(rest) == 1 and isinstance(rest[0], list | tuple):
        rest = list(rest[0])
    if not isinstance(equation, str) or "..." in equation or "->" not in equation:
        raise NoMatch(f"einsum '{node.name}' has no explicit output ({equation!r})")
    return equation.replace(" ", ""), rest


def einsum_qk(equation: str, node: Node) -> tuple[tuple | None, tuple | None]:
    """Permutations taking the operands of ``"<q>,<k>-><batch>pm"`` to [batch, p, e] and
    [batch, m, e]."""
    inputs, out = equation.split("->")
    x, y = inputs.split(",")
    contracted = (set(x) & set(y)) - set(out)
    if len(out) < 2 or len(contracted) != 1:
        raise NoMatch(f"einsum '{node.name}' ({equation}) is not one contraction Q.K")
    p, m, (e,), batch = out[-2], out[-1], contracted, out[:-2]
    if sorted(x) != sorted(batch + p + e) or sorted(y) != sorted(batch + m + e):
        raise NoMatch(f"einsum '{node.name}' ({equation}) is not [..p e],[..m e]->[..p m]")
    return _perm(x, batch + p + e), _perm(y, batch + m + e)


def einsum_av(equation: str, node: Node) -> tuple[tuple | None, tuple | None]:
    """(V's permutation to [batch, m, f], the output's from [batch, p, f]) of A @ V."""
    inputs, out = equation.split("->")
    a, w = inputs.split(",")
    if len(a) < 2:
        raise NoMatch(f"einsum '{node.name}' ({equation}) does not read [.., p, m] weights")
    batch, p, m = a[:-2], a[-2], a[-1]
    f = "".join(c for c in w if c not in a)
    if len(f) != 1 or sorted(w) != sorted(batch + m + f) or sorted(out) != sorted(batch + p + f):
        raise NoMatch(f"einsum '{node.name}' ({equation}) is not [..p m],[..m f]->[..p f]")
    return _perm(w, batch + m + f), _perm(batch + p + f, out)


def _perm(source: str, target: str) -> tuple[int, ...] | None:
    perm = tuple(source.index(c) for c in target)
    return None if ops.is_identity(perm) else perm


# -- grouped-query attention: K and V repeated per query head ---------------------------------


def read_through_repeat(k: Node, v: Node) -> tuple[Node, Node, bool]:
    """(K, V, True) unrepeated when both are repeated the same way, else as given."""
    rk, rv = _repeated(k), _repeated(v)
    if rk is None or rv is None or rk[1] != rv[1]:
        return k, v, False
    return rk[0], rv[0], True


def _repeated(node: Node) -> tuple[Node, int] | None:
    """(x, groups) for ``repeat_interleave(x, g, dim=1)`` or transformers' ``repeat_kv``."""
    if ops.kind(node) == "repeat_interleave":
        source, groups = node.args[0], ops.arg(node, 1, "repeats")
        dim = ops.arg(node, 2, "dim")
        n = ops.rank(node)
        if isinstance(source, Node) and isinstance(groups, int) and n == 4 and dim in (1, -3):
            return source, groups
        return None
    if ops.kind(node) != "reshape" or ops.kind(node.args[0]) != "expand":
        return None
    expanded = node.args[0]
    unsqueezed = expanded.args[0]
    if ops.kind(unsqueezed) not in ("unsqueeze", "getitem") or not isinstance(unsqueezed, Node):
        return None
    source = unsqueezed.args[0]
    src, mid, big, out = (ops.shape(x) for x in (source, unsqueezed, expanded, node))
    if None in (src, mid, big, out) or len(src) != 4 or len(mid) != 5 or len(out) != 4:
        return None
    groups = ops.static(big[2])
    inserted = mid[:2] + mid[3:] == src and ops.static(mid[2]) == 1
    same = big[:2] + big[3:] == src and out[0] == src[0] and out[2:] == src[2:]
    heads, kv_heads = ops.static(out[1]), ops.static(src[1])
    if heads is None or kv_heads is None or heads != kv_heads * (groups or 0):
        return None
    if not (inserted and same and groups) or not _is_plain_unsqueeze(unsqueezed):
        return None
    return source, groups


def _is_plain_unsqueeze(node: Node) -> bool:
    if ops.kind(node) == "unsqueeze":
        return ops.arg(node, 1, "dim") in (2, -3)
    index = node.args[1]
    full = slice(None, None, None)
    return (
        isinstance(index, tuple)
        and index[:3] == (full, full, None)
        and all(i == full or i is Ellipsis for i in index[3:])
    )
