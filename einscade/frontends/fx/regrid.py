"""Lift a window attention site onto the original token grid (Swin, MaxViT blocks and grids).

Per-window attention reads tokens that view / permute / roll cut into windows; the lifted
site reads them in place on the grid instead::

    grid [B, H*W, C] --q/k/v Linear, view to heads--> Q, K, V [B, heads, H*W, d]
        --window_attention(grid, window, shift, RB)--> [B, heads, H*W, d]
        --transpose, reshape, out Linear--> [B, H*W, C] --reshape--> what the reverse chain gave

:func:`plan_window_site` reads the site (:mod:`.tokenwise` for the token-wise stretches,
:mod:`.windows` for the partition and the terms), every check done element by element;
:func:`replace_window_site` edits the graph. Anything that does not fit raises
:class:`~.forms.NoMatch` with the reason, and the caller captures the site per window.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch.fx import GraphModule, Node

from einscade.frontends.fx import ops, runtime
from einscade.frontends.fx.constants import Constants, buffer_fingerprint
from einscade.frontends.fx.forms import NoMatch
from einscade.frontends.fx.lift import cascade_scale
from einscade.frontends.fx.patterns import Match, Operand
from einscade.frontends.fx.replace import propagate_fake
from einscade.frontends.fx.tokenwise import (
    Segment,
    Tokens,
    is_layout,
    operand_segment,
    output_segment,
    reemit,
    run_chain,
    window_tokens,
)
from einscade.frontends.fx.windows import (
    WindowLayout,
    check_constant_mask,
    position_bias_shape,
    split_terms,
    window_layout,
)
from einscade.frontends.local import maxvit_attention, window_attention
from einscade.ir.cascade import Cascade
from einscade.ir.errors import EinscadeError

_HEADS_LAYOUT = Tokens(0, 2)  # [windows, heads, N, d]


@dataclass(frozen=True)
class Operands:
    """One site operand: its token-wise segment, the partition chain and its source."""

    operand: Operand
    segment: Segment
    source: Node


@dataclass(frozen=True)
class WindowSite:
    """A window site read on the grid, ready to replace."""

    match: Match
    layout: WindowLayout
    cascade: Cascade
    summary: str
    operands: tuple[Operands, ...]  # Q, K, V
    output: Segment  # from the attention output to the windowed [windows, N, C] result
    replaced: Node  # the end of the reverse chain: the grid-ordered result
    bias: tuple[tuple[Node, float, tuple[int, int, int]], ...]  # (term, factor, RB shape)
    guards: tuple[tuple[Node, torch.Tensor], ...]
    notes: tuple[str, ...]


def plan_window_site(match: Match, constants: Constants) -> WindowSite:
    """The site on the grid; :class:`~.tokenwise.NotWindowed` when it is not a window
    attention, :class:`NoMatch` with the reason when it is one that cannot be lifted."""
    read = [_operand(x) for x in (match.q, match.k, match.v)]
    operands = tuple(r[0] for r in read)
    layout = read[0][1]
    if any(_placement(r[1]) != _placement(layout) for r in read[1:]):
        raise NoMatch("Q, K and V come from different window partitions")
    if match.kv_heads or match.causal or match.out_perm is not None:
        raise NoMatch("window attention with GQA, is_causal or a permuted output")
    output = output_segment(match.output, _HEADS_LAYOUT)
    replaced = _reverse_chain(output, layout)
    q_shape = ops.shape(match.q.node)
    heads, n = q_shape[1], layout.tokens_per_window
    split = split_terms(match.terms, (*q_shape[:-1], n), constants)
    check_constant_mask(layout, split.constant)
    bias = tuple((node, factor, position_bias_shape((node, factor, placed), layout, heads))
                 for node, factor, placed in split.runtime)  # fmt: skip
    guards = {
        buffer: constants.example(buffer)
        for node in split.constant_nodes
        for buffer in constants.buffers(node)
    }
    scale = cascade_scale(match.scale, ops.static(q_shape[-1]))
    cascade, summary = _cascade(layout, bool(bias), scale, match.scale)
    grid = " x ".join(map(str, layout.grid))
    kind = "window" if layout.mode == "block" else "grid"
    notes = (*match.notes, f"{kind} partition lifted onto the {grid} token grid")
    return WindowSite(
        match=match, layout=layout, cascade=cascade, summary=summary, operands=operands,
        output=output, replaced=replaced, bias=bias, guards=tuple(guards.items()), notes=notes,
    )  # fmt: skip


def _operand(operand: Operand) -> tuple[Operands, WindowLayout]:
    segment, chain, source = operand_segment(operand.node)
    tokens = segment.tokens if operand.perm is None else segment.tokens.permuted(operand.perm)
    if tokens != _HEADS_LAYOUT or ops.rank(operand.node) != 4:
        raise NoMatch(f"'{operand.node.name}' is not [windows, heads, N, d] of the windows")
    try:
        layout = window_layout(chain, source, segment.start)
    except RuntimeError as error:  # a layout op refused the index tensor
        raise NoMatch(f"the window partition could not be read: {error}") from error
    return Operands(operand, segment, source), layout


def _placement(layout: WindowLayout) -> tuple:
    """The layout without the channels (K and V may have their own)."""
    return layout.batch, layout.grid, layout.window, layout.shift, layout.mode


def _reverse_chain(output: Segment, layout: WindowLayout) -> Node:
    """The last node of the layout chain after the output segment that holds the result in
    grid order (a reshape of ``[B, H * W, C]``): the node the lifted site replaces."""
    dims, tokens = ops.shape(output.end), output.tokens
    if (tokens.window, tokens.position) != (0, 1) or dims is None or len(dims) != 2 + tokens.span:
        raise NoMatch(
            f"the attention result '{output.end.name}' is not [windows, N, C] or "
            "[windows, WH, WW, C]"
        )
    channels = dims[-1]
    probe = layout.token_map()[..., None] * channels + torch.arange(channels)
    probe = probe.reshape(dims)
    chain: list[Node] = []
    node, replaced = output.end, None
    while len(node.users) == 1 and is_layout(next(iter(node.users))):
        node = next(iter(node.users))
        chain.append(node)
        try:
            value = run_chain(tuple(chain), output.end, probe)
        except (RuntimeError, NoMatch):
            break
        if value.numel() == probe.numel() and torch.equal(
            value.reshape(-1), torch.arange(probe.numel())
        ):
            replaced = node
    if replaced is None:
        raise NoMatch(
            f"the windowed result '{output.end.name}' is not put back on the grid by layout ops"
        )
    return replaced


def _cascade(
    layout: WindowLayout, bias: bool, scale: float | None, written: float | None
) -> tuple[Cascade, str]:
    """The cascade of the lifted site and its summary: ``window_attention`` for (shifted)
    blocks, ``maxvit_attention(mode="grid")`` for a strided grid partition."""
    if layout.mode == "grid":
        cascade = maxvit_attention(
            layout.grid, layout.window, "grid", position_bias=bias, scale=scale
        )
        options = [f"grid={layout.grid}", f"size={layout.window}", "mode=grid"]
    else:
        shift = (layout.shift[0] % layout.window[0], layout.shift[1] % layout.window[1])
        cascade = window_attention(
            layout.grid, layout.window, shift, position_bias=bias, scale=scale
        )
        options = [f"grid={layout.grid}", f"window={layout.window}"]
        if any(shift):
            options.append(f"shift={shift}")
    if bias:
        options.append("bias")
    if written is not None:
        options.append(f"scale={written:.6g}")
    return cascade, f"{cascade.name}({', '.join(options)})"


# -- the graph edit ---------------------------------------------------------------------------


def window_kernel(site: WindowSite, target: str) -> runtime.SiteKernel:
    """The run-time record of a lifted window site."""
    value = ops.meta(site.match.q.node)
    device = value.device.type if isinstance(value, torch.Tensor) else "cpu"
    q_dtype, soft = ops.dtype(site.match.q.node), site.match.softmax_dtype
    wider = q_dtype and soft and soft.is_floating_point and q_dtype.is_floating_point
    compute = soft if wider and torch.finfo(soft).bits > torch.finfo(q_dtype).bits else None
    return runtime.SiteKernel(
        cascade=site.cascade,
        run=runtime.site_callable(site.cascade, target=target, device=device),
        kv_heads=False,
        compute_dtype=compute,
        out_dtype=ops.dtype(site.match.output) or torch.float32,
        guards=tuple((b.name, buffer_fingerprint(t)) for b, t in site.guards),
        label=site.summary,
    )


def replace_window_site(gm: GraphModule, site: WindowSite, run: runtime.SiteKernel) -> Node:
    """Compute the site on the grid right before the node it replaces; returns the new node
    holding that node's value. The per-window nodes left unread are removed."""
    key = runtime.register(run)
    graph = gm.graph
    layout = site.layout
    tokens = layout.grid[0] * layout.grid[1]

    def resize(shape: tuple, where: Tokens) -> tuple:
        """The window dim becomes the batch, the position dims the grid's tokens."""
        resized = list(shape)
        resized[where.window] = layout.batch
        resized[where.position : where.position + where.span] = [tokens]
        return tuple(resized)

    before = set(graph.nodes)
    fake_mode = getattr(ops.meta(site.match.q.node), "fake_mode", None)
    with graph.inserting_before(site.replaced):
        env: dict[Node, Node] = {}
        grids: dict[Node, Node] = {}
        qkv = []
        for read in site.operands:
            if read.source not in grids:
                channels = ops.shape(read.segment.start)[-1]
                shape = (layout.batch, tokens, channels)
                grids[read.source] = graph.call_method("reshape", (read.source, shape))
            start = window_tokens(read.segment.start)
            end = reemit(graph, read.segment, grids[read.source], resize, env, start)
            if read.operand.perm is not None:
                end = graph.call_method("permute", (end, read.operand.perm))
            qkv.append(end)
        bias = _position_bias(graph, site.bias)
        guards = [buffer for buffer, _ in site.guards]
        call = graph.call_function(
            torch.ops.einscade.window_site.default, (*qkv, bias, guards, key)
        )
        result = reemit(graph, site.output, call, resize, {}, _HEADS_LAYOUT)
        out = graph.call_method("reshape", (result, tuple(ops.shape(site.replaced))))
    inserted = [node for node in graph.nodes if node not in before]
    try:
        propagate_fake(inserted, fake_mode)
    except Exception as error:  # the site stays per window: undo the insertion
        for node in reversed(inserted):
            graph.erase_node(node)
        raise EinscadeError(f"the lifted window site does not type-check: {error}") from error
    old = site.replaced
    old.replace_all_uses_with(out)
    _remove_unread(graph, old)
    return out


def _position_bias(graph, parts: tuple) -> Node | None:  # type: ignore[no-untyped-def]
    total: Node | None = None
    for node, factor, shape in parts:
        term = graph.call_method("reshape", (node, shape))
        if factor != 1.0:
            term = graph.call_function(operator.mul, (term, factor))
        total = term if total is None else graph.call_function(operator.add, (total, term))
    return total


def _remove_unread(graph, root: Node) -> None:  # type: ignore[no-untyped-def]
    """Erase ``root`` and the nodes it read that nothing reads any more (pure ones only)."""
    ancestors: set[Node] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if node not in ancestors:
            ancestors.add(node)
            stack.extend(node.all_input_nodes)
    for node in reversed(list(graph.nodes)):
        pure = node.op in ("call_function", "call_method") and not node.is_impure()
        if node in ancestors and pure and not node.users:
            graph.erase_node(node)
