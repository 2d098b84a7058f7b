"""What runs in place of an attention site: the custom op ``einscade::site``.

Each replaced site becomes one call ``torch.ops.einscade.site(q, k, v, bias, guards, key)``.
A window site lifted onto its token grid (:mod:`.regrid`) calls ``einscade::window_site``
instead, on grid-ordered tokens.
``key`` names a :class:`SiteKernel` registered at compile time (the cascade and the callable
that executes it). A custom op is opaque to Inductor and AOT autograd: they keep the call as
an external kernel and read its output shape from the fake implementation, so the rest of
the graph compiles around it.

Inputs arrive as the model holds them: any number of leading (batch, head) dims, possibly
broadcast. :func:`_to_cascade_layout` views them as the cascade's ``[b, h, n, d]`` and the
result is viewed back, so the graph needs no layout nodes of its own.

:func:`site_callable` is the one place that picks how a cascade executes.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from einscade.codegen.reference import reference
from einscade.compiler.api import compile as einscade_compile
from einscade.frontends.fx.constants import buffer_fingerprint
from einscade.ir.cascade import Cascade
from einscade.ir.errors import EinscadeError

TARGETS = ("auto", "torch", "triton", "reference")


def site_callable(
    cascade: Cascade, *, target: str = "auto", device: str = "cpu"
) -> Callable[..., torch.Tensor]:
    """A function ``run(dtype, **inputs) -> AV`` executing ``cascade`` in ``dtype``.

    ``target``: ``"auto"`` (``"triton"`` on a CUDA ``device``, ``"torch"`` otherwise), a
    target of :func:`einscade.compile`, or ``"reference"`` (the reference executor: dense,
    the oracle). The cascade is compiled here, so a cascade the target rejects fails at
    compile time and its site stays as it was.
    """
    if target not in TARGETS:
        raise EinscadeError(
            f"torch.compile backend 'einscade': unknown target {target!r} "
            f"(known: {', '.join(TARGETS)})"
        )
    if target == "reference":
        return lambda dtype, **inputs: reference(cascade, dtype=dtype, **inputs)
    chosen = ("triton" if device == "cuda" else "torch") if target == "auto" else target
    compiled = einscade_compile(cascade, target=chosen)

    def run(dtype: torch.dtype, **inputs: torch.Tensor) -> torch.Tensor:
        return compiled(**{k: _in_dtype(v, dtype) for k, v in inputs.items()})

    return run


def _in_dtype(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return tensor.to(dtype) if tensor.is_floating_point() and tensor.dtype != dtype else tensor


@dataclass(frozen=True)
class SiteKernel:
    """A compiled site: how to call its cascade and what the call must return."""

    cascade: Cascade
    run: Callable[..., torch.Tensor]
    kv_heads: bool
    compute_dtype: torch.dtype | None  # None: the dtype of Q
    out_dtype: torch.dtype
    lookups: tuple[tuple[str, torch.Tensor], ...] = ()  # constant inputs (document ids)
    # (placeholder name, fingerprint) of each buffer the mask structure was read from
    guards: tuple[tuple[str, tuple[int, int]], ...] = ()
    zero_empty_rows: bool = False  # SDPA: a row whose bias is all -inf gives 0, not NaN
    label: str = field(default="", compare=False)


_SITES: dict[str, SiteKernel] = {}
_KEYS = itertools.count()


def register(kernel: SiteKernel) -> str:
    """Keep ``kernel`` for the life of the process; the key the graph passes to the op."""
    key = f"{kernel.cascade.name}#{next(_KEYS)}"
    _SITES[key] = kernel
    return key


def kernel(key: str) -> SiteKernel:
    if key not in _SITES:
        raise EinscadeError(f"einscade::site: no site {key!r} was compiled in this process")
    return _SITES[key]


@torch.library.custom_op("einscade::site", mutates_args=())
def site(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor | None,
    guards: list[torch.Tensor],
    key: str,
) -> torch.Tensor:
    """Run the site ``key`` on Q ``[..., P, E]``, K ``[..., M, E]``, V ``[..., M, F]`` and an
    additive ``bias`` broadcasting to ``[..., P, M]``; returns ``[..., P, F]``."""
    entry = kernel(key)
    lead = _lead_shape(q, k, v, bias, entry.kv_heads)
    inputs = _to_cascade_layout(q, k, v, bias, lead, entry.kv_heads)
    out = _execute(entry, key, guards, q.dtype, {**inputs, **dict(entry.lookups)})
    out = out.reshape(*lead, q.shape[-2], v.shape[-1])
    if entry.zero_empty_rows and bias is not None:
        out = out.masked_fill((bias == -math.inf).all(-1, keepdim=True), 0.0)
    return out.to(entry.out_dtype).contiguous()


@site.register_fake
def _site_fake(q, k, v, bias, guards, key):  # type: ignore[no-untyped-def]
    entry = kernel(key)
    lead = _lead_shape(q, k, v, bias, entry.kv_heads)
    return q.new_empty((*lead, q.shape[-2], v.shape[-1]), dtype=entry.out_dtype)


def _lead_shape(q, k, v, bias, kv_heads: bool) -> tuple:  # type: ignore[no-untyped-def]
    """The broadcast batch dims of the output (for GQA, K/V's head dim is left out)."""
    shapes = [tuple(q.shape[:-2])]
    for kv in (k, v):
        lead = tuple(kv.shape[:-2])
        shapes.append((*lead[:-1], 1) if kv_heads else lead)
    if bias is not None:
        shapes.append(tuple(bias.shape[:-2]))
    return tuple(torch.broadcast_shapes(*shapes))


def _to_cascade_layout(q, k, v, bias, lead: tuple, kv_heads: bool) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    """Expand to the full batch dims and view them as [b, h]: more dims fold into b, fewer
    get b = 1 (and h = 1)."""
    heads = lead[-1] if lead else 1
    folded = (math.prod(lead[:-1]) if len(lead) > 1 else 1, heads)

    def fold(x: torch.Tensor, rows: int, cols: int, head_dim: int | None = None) -> torch.Tensor:
        target = (*lead, rows, cols) if head_dim is None else (*lead[:-1], head_dim, rows, cols)
        x = x.reshape((1,) * (len(target) - x.dim()) + tuple(x.shape)).expand(target)
        batch = folded if head_dim is None else (folded[0], head_dim)
        return x.reshape(*batch, rows, cols)

    p, e = q.shape[-2:]
    m, f = v.shape[-2], v.shape[-1]
    kv_head_dim = k.shape[-3] if kv_heads else None
    inputs = {
        "Q": fold(q, p, e),
        "K": fold(k, m, e, kv_head_dim),
        "V": fold(v, m, f, kv_head_dim),
    }
    if bias is not None:
        inputs["bias"] = fold(bias, p, m)
    return inputs


def _execute(
    entry: SiteKernel, key: str, guards: list[torch.Tensor], q_dtype: torch.dtype, inputs: dict
) -> torch.Tensor:
    """Check the buffer guards, then run the cascade on ``inputs`` (by cascade input name)."""
    _check_guards(entry, guards, key)
    # Run as ordinary (not inference) tensors: the torch target keeps scratch buffers across
    # calls, and one made under torch.inference_mode() cannot be written outside it.
    with torch.inference_mode(False), torch.no_grad():
        return entry.run(entry.compute_dtype or q_dtype, **inputs)


def _check_guards(entry: SiteKernel, guards: list[torch.Tensor], key: str) -> None:
    for (name, fingerprint), tensor in zip(entry.guards, guards, strict=True):
        if buffer_fingerprint(tensor) != fingerprint:
            raise EinscadeError(
                f"einscade::site {key}: buffer '{name}' changed after compilation, and the "
                "site's mask structure was read from it; call torch._dynamo.reset() and "
                "compile again"
            )


# The parameter list repeats ``site``'s: custom_op reads each op's schema from its own
# annotations, and the shared body is :func:`_execute`.
@torch.library.custom_op("einscade::window_site", mutates_args=())
def window_site(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    position_bias: torch.Tensor | None,
    guards: list[torch.Tensor],
    key: str,
) -> torch.Tensor:
    """Run the lifted window site ``key`` on the token grid: Q ``[B, H, P, E]``, K
    ``[B, H, M, E]``, V ``[B, H, M, F]`` (P = M = the grid's tokens, row-major) and the
    relative-position bias ``[H or 1, N, N]`` of one window; returns ``[B, H, P, F]``."""
    entry = kernel(key)
    inputs = {"Q": q, "K": k, "V": v}
    if position_bias is not None:
        inputs["RB"] = position_bias
    return _execute(entry, key, guards, q.dtype, inputs).to(entry.out_dtype).contiguous()


@window_site.register_fake
def _window_site_fake(q, k, v, position_bias, guards, key):  # type: ignore[no-untyped-def]
    entry = kernel(key)
    return q.new_empty((*q.shape[:-1], v.shape[-1]), dtype=entry.out_dtype)
