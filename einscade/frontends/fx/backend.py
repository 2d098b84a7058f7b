"""The ``torch.compile`` backend ``"einscade"``: attention sites become cascades, the rest of
the graph goes to Inductor (or runs eagerly).

Installed packages register it through the ``torch_dynamo_backends`` entry point, so
``torch.compile(model, backend="einscade")`` needs no import of einscade. Options arrive
as ``torch.compile(..., options={...})``, which Dynamo passes to the backend as the keyword
``options`` (and ``mode=`` as ``mode``):

- ``fallback``: ``"inductor"`` (default) or ``"eager"``: what compiles the rest.
- ``target``: how the cascades execute (:data:`einscade.frontends.fx.runtime.TARGETS`).
- ``dump_dir``: write each graph before and after, and each captured cascade (``.ecas``);
  default ``EINSCADE_DUMP_DIR``.

``EINSCADE_DEBUG=1`` prints one line per site (captured as which cascade, or skipped and
why); ``=2`` adds each captured cascade's IR. :func:`record_sites` collects the same facts
for programs and tests.

In grad mode, when a site's inputs require grad, the site is left to the fallback: the
custom op has no backward yet.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch.fx import GraphModule, Node

from einscade.compiler import knobs
from einscade.frontends.fx import ops
from einscade.frontends.fx.constants import Constants
from einscade.frontends.fx.forms import NoMatch
from einscade.frontends.fx.lift import lift
from einscade.frontends.fx.patterns import Match, find_sites
from einscade.frontends.fx.regrid import plan_window_site, replace_window_site, window_kernel
from einscade.frontends.fx.replace import kernel_for, replace_site
from einscade.frontends.fx.runtime import TARGETS
from einscade.frontends.fx.tokenwise import NotWindowed
from einscade.ir.cascade import Cascade
from einscade.ir.errors import EinscadeError
from einscade.ir.printer import print_cascade

FALLBACKS = ("inductor", "eager")


@dataclass(frozen=True)
class Options:
    """The backend's options (``torch.compile(..., options={...})``)."""

    fallback: str = "inductor"
    target: str = "auto"
    dump_dir: str | None = None

    @staticmethod
    def parse(options: dict[str, object] | None) -> Options:
        options = dict(options or {})
        known = {"fallback", "target", "dump_dir"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise EinscadeError(
                f"torch.compile backend 'einscade': unknown option {unknown[0]!r}; "
                f"known: {', '.join(sorted(known))}"
            )
        parsed = Options(**options)  # type: ignore[arg-type]
        if parsed.fallback not in FALLBACKS:
            raise EinscadeError(
                f"torch.compile backend 'einscade': fallback {parsed.fallback!r} is not one "
                f"of {', '.join(FALLBACKS)}"
            )
        if parsed.target not in TARGETS:
            raise EinscadeError(
                f"torch.compile backend 'einscade': target {parsed.target!r} is not one of "
                f"{', '.join(TARGETS)}"
            )
        return parsed


@dataclass(frozen=True)
class SiteRecord:
    """What the backend did with one softmax or SDPA call of one graph."""

    graph: int  # which backend call (one per Dynamo graph, recompilations included)
    anchor: str  # the softmax / SDPA node's name in the graph
    family: str  # "sdpa", "softmax"
    captured: bool
    summary: str  # "softmax_attention(causal, scale=0.25)"; "" when skipped
    reason: str  # why it was skipped, or notes on the capture
    cascade: Cascade | None = field(default=None, repr=False)

    def line(self) -> str:
        """The ``EINSCADE_DEBUG=1`` line."""
        where = f"einscade: graph {self.graph} '{self.anchor}'"
        if not self.captured:
            return f"{where} skipped: {self.reason}"
        notes = f" ({self.reason})" if self.reason else ""
        return f"{where} [{self.family}] captured as {self.summary}{notes}"


_GRAPHS = itertools.count()
_RECORDERS: list[list[SiteRecord]] = []


@contextmanager
def record_sites() -> Iterator[list[SiteRecord]]:
    """Collect a :class:`SiteRecord` for every site the backend meets inside the block.

    Dynamo compiles on the first call, so run the compiled model inside the block.
    """
    records: list[SiteRecord] = []
    _RECORDERS.append(records)
    try:
        yield records
    finally:
        _RECORDERS.remove(records)


def einscade_backend(
    gm: GraphModule,
    example_inputs: list[object],
    *,
    options: dict[str, object] | None = None,
    mode: str | None = None,
) -> Callable[..., object]:
    """Dynamo backend: capture attention sites in ``gm``, then compile it with the fallback."""
    parsed = Options.parse(options)
    graph_id = next(_GRAPHS)
    dump_dir = parsed.dump_dir or knobs.dump_dir()
    dump = Path(dump_dir) if dump_dir else None
    if dump is not None:
        dump.mkdir(parents=True, exist_ok=True)
        (dump / f"graph{graph_id}_before.py").write_text(gm.code)
    records = capture(gm, example_inputs, target=parsed.target, graph_id=graph_id)
    _report(records, graph_id, dump)
    if dump is not None:
        (dump / f"graph{graph_id}_after.py").write_text(gm.code)
    return _fallback(gm, example_inputs, parsed.fallback, mode)


def capture(
    gm: GraphModule, example_inputs: list[object], *, target: str = "auto", graph_id: int = 0
) -> list[SiteRecord]:
    """Find, lift and replace every attention site of ``gm`` (changed in place)."""
    order = {node: i for i, node in enumerate(gm.graph.nodes)}
    constants = Constants(gm, example_inputs)
    matches, skips = find_sites(gm.graph, constants.scalar)
    found = [(order[s.anchor], _skipped(graph_id, s.anchor, s.reason)) for s in skips]
    renamed: dict[Node, Node] = {}
    for match in matches:
        anchor = order[match.anchor]
        reason = _grad_reason(match)
        if reason:
            found.append((anchor, _skipped(graph_id, match.anchor, reason, match.family)))
            continue
        match = _renamed(match, renamed)
        record, note = _capture_window(gm, match, constants, target, graph_id)
        if record is not None:
            found.append((anchor, record))
            continue
        if note:
            match = replace(match, notes=(*match.notes, note))
        try:
            lifted = lift(match, constants)
            renamed[match.output] = replace_site(gm, lifted, kernel_for(lifted, target))
        except (EinscadeError, ValueError, TypeError) as error:
            found.append((anchor, _skipped(graph_id, match.anchor, str(error), match.family)))
            continue
        record = SiteRecord(
            graph_id, match.anchor.name, match.family, True, lifted.summary,
            "; ".join(lifted.notes), lifted.cascade,
        )  # fmt: skip
        found.append((anchor, record))
    gm.graph.lint()
    gm.recompile()
    return [record for _, record in sorted(found, key=lambda pair: pair[0])]


def _capture_window(
    gm: GraphModule, match: Match, constants: Constants, target: str, graph_id: int
) -> tuple[SiteRecord | None, str]:
    """(the record, "") when the site is a window attention lifted onto its token grid;
    (None, why not) when it is one that stays per window; (None, "") otherwise."""
    try:
        site = plan_window_site(match, constants)
        replace_window_site(gm, site, window_kernel(site, target))
    except NotWindowed:
        return None, ""
    except (NoMatch, EinscadeError, ValueError, TypeError) as error:
        return None, f"window layout not lifted: {error}"
    record = SiteRecord(
        graph_id, match.anchor.name, match.family, True, site.summary, "; ".join(site.notes),
        site.cascade,
    )  # fmt: skip
    return record, ""


def _skipped(graph_id: int, anchor: Node, reason: str, family: str = "") -> SiteRecord:
    return SiteRecord(graph_id, anchor.name, family or (ops.kind(anchor) or ""), False, "", reason)


def _grad_reason(match: Match) -> str:
    """Why grad mode keeps the site as it is ('' when it does not)."""
    if not torch.is_grad_enabled():
        return ""
    reads = [match.q.node, match.k.node, match.v.node, *(t.node for t in match.terms)]
    if any(getattr(ops.meta(n), "requires_grad", False) for n in reads):
        return "grad mode: its inputs require grad and it has no backward yet (left as it is)"
    return ""


def _renamed(match: Match, renamed: dict[Node, Node]) -> Match:
    """The match reading replaced outputs of earlier sites through their replacements."""
    if not renamed:
        return match

    def fix(node: Node) -> Node:
        return renamed.get(node, node)

    return replace(
        match,
        q=replace(match.q, node=fix(match.q.node)),
        k=replace(match.k, node=fix(match.k.node)),
        v=replace(match.v, node=fix(match.v.node)),
        terms=tuple(replace(t, node=fix(t.node)) for t in match.terms),
    )


def _report(records: list[SiteRecord], graph_id: int, dump: Path | None) -> None:
    for record in records:
        for recorder in _RECORDERS:
            recorder.append(record)
    level = knobs.debug_level()
    for record in records:
        if level >= 1:
            print(record.line(), file=sys.stderr)
        if level >= 2 and record.cascade is not None:
            print(print_cascade(record.cascade), file=sys.stderr)
    if dump is None:
        return
    lines = "".join(record.line() + "\n" for record in records)
    (dump / f"graph{graph_id}_sites.txt").write_text(lines)
    for index, record in enumerate(r for r in records if r.cascade is not None):
        (dump / f"graph{graph_id}_site{index}.ecas").write_text(print_cascade(record.cascade))


def _fallback(
    gm: GraphModule, example_inputs: list[object], fallback: str, mode: str | None
) -> Callable[..., object]:
    if fallback == "eager":
        return gm.forward
    from torch._inductor import list_mode_options
    from torch._inductor.compile_fx import compile_fx

    patches = list_mode_options(mode) if mode else {}
    return compile_fx(gm, example_inputs, config_patches=patches)
