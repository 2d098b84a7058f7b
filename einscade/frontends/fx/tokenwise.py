"""Token-wise stretches of a graph, and the pure layout chains that move tokens around them.

A window attention reads its Q, K and V from *windowed tokens*: a tensor ``[windows, N, C]``
(or ``[windows, WH, WW, C]``, as timm's MaxViT keeps them) that a chain of layout ops
(view, permute, roll, ...) cut out of the token grid. Between
those tokens and the attention the model applies ops that act on every token alone (the
q/k/v ``Linear``, the view to heads, transposes); after it the same kind of ops (the output
projection) lead to the chain that puts the tokens back.

Token-wise ops commute with any reordering of the tokens, so they can run on the grid
instead. This module finds such stretches (:func:`operand_segment`, :func:`output_segment`),
tracks where the two token dims (the window and the position inside it) sit in each tensor
along the way (:class:`Tokens`), and re-emits a stretch on other token dims
(:func:`reemit`). Layout chains are read by running them on index tensors
(:func:`run_chain`), so any spelling of a permutation is read the same way.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.fx import Graph, Node
from torch.fx.node import map_arg

from einscade.frontends.fx import ops
from einscade.frontends.fx.forms import NoMatch

# Pure layout: the output is a data-independent rearrangement (or crop) of the input.
_LAYOUT_METHODS = frozenset(
    {"view", "reshape", "permute", "transpose", "contiguous", "flatten", "unflatten", "roll"}
)
_LAYOUT_FUNCTIONS = frozenset(
    {torch.reshape, torch.permute, torch.transpose, torch.flatten, torch.roll, torch._C._nn.pad,
     F.pad, operator.getitem}
)  # fmt: skip
# Act on each token alone: on the last dims only, or elementwise.
_UNARY = frozenset(
    {torch._C._nn.gelu, F.gelu, F.relu, torch.relu, F.silu, torch.sigmoid, torch.tanh, F.mish,
     F.hardswish}
)  # fmt: skip
_BINARY = frozenset({"mul", "div", "add", "sub"})
_SPLITS = frozenset({"unbind", "chunk", "split"})


class NotWindowed(Exception):
    """The operands do not come from a window partition at all (no reason is reported)."""


@dataclass(frozen=True)
class Tokens:
    """Positions of the token dims in a tensor: the window dim and the in-window dims
    (``span`` consecutive dims from ``position`` on, row-major: 2 for ``[.., WH, WW, ..]``)."""

    window: int
    position: int
    span: int = 1

    @property
    def dims(self) -> tuple[int, ...]:
        return (self.window, *range(self.position, self.position + self.span))

    def permuted(self, perm: tuple[int, ...]) -> Tokens:
        start = perm.index(self.position)
        if any(perm.index(self.position + i) != start + i for i in range(1, self.span)):
            raise NoMatch(f"the permute {perm} reorders the window's position dims")
        return Tokens(perm.index(self.window), start, self.span)


@dataclass(frozen=True)
class Segment:
    """Token-wise nodes from ``start`` to ``end`` in graph order (``start`` excluded)."""

    start: Node
    nodes: tuple[Node, ...]
    end: Node
    tokens: Tokens  # at ``end``


def is_layout(node: object) -> bool:
    """A pure layout op: view / permute / roll / zero pad / slice of one tensor."""
    if not isinstance(node, Node) or not node.args or not isinstance(node.args[0], Node):
        return False
    if node.op == "call_method" and node.target in _LAYOUT_METHODS:
        return True
    if node.op != "call_function" or node.target not in _LAYOUT_FUNCTIONS:
        return False
    if node.target is operator.getitem:  # a slice of a tensor, not an item of a tuple
        return isinstance(ops.meta(node.args[0]), torch.Tensor)
    return True


def _is_split_item(node: Node) -> bool:
    """``unbind(...)[i]`` / ``chunk(...)[i]``: one item of a split into a tuple."""
    if node.op != "call_function" or node.target is not operator.getitem:
        return False
    source = node.args[0]
    return isinstance(source, Node) and _split_name(source) is not None


def _split_name(node: Node) -> str | None:
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    return name if node.op in ("call_method", "call_function") and name in _SPLITS else None


def _is_tokenwise_compute(node: Node) -> bool:
    family = ops.kind(node)
    if node.op != "call_function" and node.op != "call_method":
        return False
    if node.target in (torch._C._nn.linear, F.layer_norm) or node.target in _UNARY:
        return True
    if family == "dropout":
        return ops.is_identity_dropout(node)
    return family == "cast" and ops.is_cast(node) or family in _BINARY


def operand_segment(operand: Node) -> tuple[Segment, tuple[Node, ...], Node]:
    """(the token-wise segment ending at ``operand``, the layout chain before it, its source).

    Walks back from a site operand through token-preserving layout (the view to heads)
    and token-wise compute (the ``Linear``); the first layout op met after a compute op ends
    the segment: it is the last op of the partition chain, which continues back through
    layout ops to the first other node, the source. The tracking of the token dims is
    done forward afterwards (:func:`track`).

    Raises :class:`NotWindowed` when nothing like a window partition lies behind, and
    :class:`NoMatch` with the reason when one does but the path is not token-wise.
    """
    walked: list[Node] = []
    node, computed = operand, False
    while True:
        splits = isinstance(node, Node) and _split_name(node) is not None
        if splits or _is_split_item(node) or (is_layout(node) and not computed):
            walked.append(node)
            node = node.args[0]
        elif is_layout(node):
            break
        elif isinstance(node, Node) and _is_tokenwise_compute(node):
            computed = True
            walked.append(node)
            node = _data_input(node)
        else:
            if _partition_behind(node):
                raise NoMatch(
                    f"'{ops.name(node)}' ({_label(node)}) between the window partition and "
                    "the attention is not token-wise"
                )
            raise NotWindowed
    chain = [node]
    while is_layout(chain[-1].args[0]):
        chain.append(chain[-1].args[0])
    chain.reverse()
    if not _looks_partitioned(chain):
        raise NotWindowed
    start = node
    tokens = window_tokens(start)
    nodes = tuple(reversed(walked))
    return (
        Segment(start, nodes, operand, track(start, nodes, tokens)),
        tuple(chain),
        chain[0].args[0],
    )


def _label(node: object) -> str:
    target = getattr(node, "target", None)
    return target if isinstance(target, str) else getattr(target, "__name__", str(target))


def window_tokens(start: Node) -> Tokens:
    """The token dims of windowed tokens ``[windows, N, C]`` or ``[windows, WH, WW, C]``."""
    dims = ops.shape(start)
    if dims is None or len(dims) not in (3, 4):
        raise NoMatch(
            f"the windowed tokens '{start.name}' are not [windows, N, C] or "
            f"[windows, WH, WW, C] ({dims})"
        )
    return Tokens(0, 1, len(dims) - 2)


def _partition_behind(node: object, depth: int = 16) -> bool:
    """Whether a window partition (a roll, or a permute of a 5-D or larger view) lies within
    ``depth`` nodes up the first-argument chain."""
    for _ in range(depth):
        if not isinstance(node, Node) or not node.args:
            return False
        if is_layout(node) and _looks_partitioned([node]):
            return True
        node = node.args[0]
    return False


def _looks_partitioned(chain: list[Node]) -> bool:
    for node in chain:
        if node.target in (torch.roll, "roll"):
            return True
        if ops.kind(node) in ("permute", "transpose") and (ops.rank(node) or 0) >= 5:
            return True
    return False


def _data_input(node: Node) -> object:
    """The input of a token-wise op that carries the tokens (the other ones are weights)."""
    if ops.kind(node) not in _BINARY:
        return node.args[0]
    data = [a for a in node.args[:2] if isinstance(a, Node) and _carries_data(a)]
    if len(data) != 1:
        if not any(_partition_behind(a) for a in data):
            raise NotWindowed  # e.g. rotary embeddings (q * cos + rotate(q) * sin): no windows
        raise NoMatch(f"'{node.name}' combines two computed tensors: not token-wise")
    return data[0]


def _carries_data(node: Node) -> bool:
    return node.op not in ("placeholder", "get_attr")


def output_segment(output: Node, tokens: Tokens) -> Segment:
    """The token-wise nodes after a site's ``output`` (each the only reader of the one
    before), up to the first node that moves tokens: the start of the reverse chain."""
    nodes: list[Node] = []
    node = output
    while len(node.users) == 1:
        (user,) = node.users
        try:
            following = track(node, (user,), tokens)
        except NoMatch:
            break
        nodes.append(user)
        node, tokens = user, following
    return Segment(output, tuple(nodes), node, tokens)


def track(start: Node, nodes: tuple[Node, ...], tokens: Tokens) -> Tokens:
    """The token dims after ``nodes`` (each reading the one before) given those of ``start``.

    Raises :class:`NoMatch` naming the first node that does not act on every token alone.
    """
    previous = start
    for node in nodes:
        tokens = _step(node, previous, tokens)
        previous = node
    return tokens


def _step(node: Node, previous: Node, tokens: Tokens) -> Tokens:
    kind = ops.kind(node)
    shape_in, shape_out = ops.shape(previous), ops.shape(node)
    if _split_name(node) is not None:
        return _split_step(node, tokens, shape_in)
    if node.op == "call_function" and node.target is operator.getitem:
        if _is_split_item(node):
            return tokens
        raise NoMatch(f"'{node.name}' slices the tokens")
    if shape_in is None or shape_out is None:
        raise NoMatch(f"'{node.name}' has no static shape")
    if kind == "contiguous":
        return tokens
    if kind in ("permute", "transpose"):
        perm = ops.transpose_perm(node)
        if perm is None:
            raise NoMatch(f"'{node.name}' permutes by a dynamic order")
        return tokens.permuted(perm)
    if kind == "reshape":
        return _reshape_step(node, tokens, shape_in, shape_out)
    if not _is_tokenwise_compute(node) or _data_input(node) is not previous:
        raise NoMatch(f"'{node.name}' is not token-wise")
    if shape_in != shape_out and node.target is not torch._C._nn.linear:
        raise NoMatch(f"'{node.name}' broadcasts the tokens to {shape_out}")
    last = len(shape_in) - _feature_dims(node)
    if max(tokens.dims) >= last:
        raise NoMatch(f"'{node.name}' mixes along a token dim")
    if kind in _BINARY:
        _check_weight(node, previous, shape_in, tokens)
    return tokens


def _split_step(node: Node, tokens: Tokens, shape: tuple | None) -> Tokens:
    dim = ops.arg(node, 1, "dim", 0) if _split_name(node) == "unbind" else ops.arg(node, 2, "dim")
    if not isinstance(dim, int) or shape is None:
        raise NoMatch(f"'{node.name}' splits along a dynamic dim")
    dim %= len(shape)
    if dim in tokens.dims:
        raise NoMatch(f"'{node.name}' splits the tokens")
    if _split_name(node) != "unbind":
        return tokens
    return Tokens(*(d - (d > dim) for d in (tokens.window, tokens.position)), tokens.span)


def _reshape_step(node: Node, tokens: Tokens, shape_in: tuple, shape_out: tuple) -> Tokens:
    """A view keeping every dim up to the last token dim, regrouping only the dims after;
    or (the window dim first) keeping the dims before the position, and regrouping the
    position dims into consecutive dims of the same size (``N <-> WH, WW``): row-major
    order keeps each token's position and features where the two prefixes align."""
    kept = max(tokens.dims) + 1
    if len(shape_out) >= kept and tuple(shape_out[:kept]) == tuple(shape_in[:kept]):
        return tokens
    start, end = tokens.position, tokens.position + tokens.span
    if tokens.window < start and tuple(shape_out[:start]) == tuple(shape_in[:start]):
        size = math.prod(shape_in[start:end])
        for span in range(1, len(shape_out) - start + 1):
            grouped = math.prod(shape_out[start : start + span])
            if grouped == size:
                return Tokens(tokens.window, start, span)
            if grouped > size:
                break
    raise NoMatch(f"'{node.name}' regroups the tokens ({shape_in} -> {shape_out})")


def _feature_dims(node: Node) -> int:
    """How many trailing dims the op mixes: 1 for a Linear, the normalized ones for
    LayerNorm, 0 for elementwise ops."""
    if node.target is torch._C._nn.linear:
        return 1
    if node.target is F.layer_norm:
        normalized = ops.arg(node, 1, "normalized_shape")
        return len(normalized) if isinstance(normalized, list | tuple) else 1
    return 0


def _check_weight(node: Node, previous: Node, shape: tuple, tokens: Tokens) -> None:
    """The other operand of a binary op must not vary along the token dims."""
    other = next((a for a in node.args[:2] if a is not previous), None)
    dims = ops.shape(other) if isinstance(other, Node) else ()
    if dims is None:
        raise NoMatch(f"'{node.name}' combines the tokens with a tensor of unknown shape")
    offset = len(shape) - len(dims)
    for dim in tokens.dims:
        if dim - offset >= 0 and dims[dim - offset] != 1:
            raise NoMatch(f"'{node.name}' combines the tokens with a tensor that varies by token")


# -- running layout chains on index tensors ---------------------------------------------------


def run_chain(chain: tuple[Node, ...], source: Node, value: torch.Tensor) -> torch.Tensor:
    """The value of ``chain[-1]`` when ``source`` holds ``value`` (every op of the chain is
    pure layout, so index tensors show where each element goes)."""
    env: dict[Node, object] = {source: value}
    for node in chain:
        env[node] = _run(node, env)
    result = env[chain[-1]] if chain else value
    assert isinstance(result, torch.Tensor)
    return result


def _run(node: Node, env: dict[Node, object]) -> object:
    def look(arg: Node) -> object:
        if arg not in env:
            raise NoMatch(f"'{node.name}' reads '{arg.name}' besides the tokens")
        return env[arg]

    args = map_arg(node.args, look)
    kwargs = map_arg(node.kwargs, look)
    if node.op == "call_method":
        return getattr(args[0], str(node.target))(*args[1:], **kwargs)
    return node.target(*args, **kwargs)


# -- re-emitting a segment on other token dims --------------------------------------------------


def reemit(
    graph: Graph,
    segment: Segment,
    new_start: Node,
    resize: Callable[[tuple, Tokens], tuple],
    env: dict[Node, Node],
    tokens: Tokens,
) -> Node:
    """Copy ``segment``'s nodes reading ``new_start`` instead of its start; a view gets the
    shape ``resize(old shape, token dims)``. ``env`` maps old nodes to copies (shared between
    segments so a node read by Q, K and V is copied once). Returns the copy of the end."""
    env[segment.start] = new_start
    previous = segment.start
    for node in segment.nodes:
        tokens = _step(node, previous, tokens)
        previous = node
        if node in env:
            continue
        copy = graph.node_copy(node, lambda arg: env.get(arg, arg))
        copy.meta = {}
        if ops.kind(node) == "reshape":
            copy.args = (env[node.args[0]], resize(ops.shape(node), tokens))
            copy.kwargs = {}
        env[node] = copy
    return env[segment.end]
