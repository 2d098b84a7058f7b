"""The built-in cascades by name, as ``einscade show NAME`` and ``make demo`` know them.

Each entry is a builder plus the options that define the example; command-line options
override them (``--grid 64x64 --kernel 13x13 --dilation 2``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

from einscade.frontends.local import (
    halo_attention,
    maxvit_attention,
    neighborhood_attention,
    window_attention,
)
from einscade.frontends.softmax import softmax_attention
from einscade.frontends.variants import (
    agent_attention,
    channel_attention,
    linear_attention,
    sigmoid_attention,
    softplus_attention,
    triplet_attention,
)
from einscade.ir.cascade import Cascade
from einscade.ir.errors import EinscadeError


@dataclass(frozen=True)
class Builtin:
    """A named example: ``builder(**options)`` with sizes for its summary."""

    builder: Callable[..., Cascade]
    options: dict[str, object] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    summary: str = ""

    def build(self, **overrides: object) -> Cascade:
        accepted = inspect.signature(self.builder).parameters
        unknown = sorted(set(overrides) - set(accepted))
        if unknown:
            names = ", ".join("--" + n.replace("_", "-") for n in accepted)
            raise EinscadeError(f"unknown option --{unknown[0].replace('_', '-')}; known: {names}")
        return self.builder(**{**self.options, **overrides})


_SEQ = {"B": 1, "H": 8, "HK": 8, "P": 4096, "M": 4096, "E": 64, "F": 64}

BUILTINS: dict[str, Builtin] = {
    "softmax": Builtin(softmax_attention, {}, _SEQ, "plain softmax attention"),
    "causal": Builtin(softmax_attention, {"causal": True}, _SEQ, "causal softmax attention"),
    "gqa": Builtin(
        softmax_attention,
        {"causal": True, "kv_heads": True},
        {**_SEQ, "HK": 2},
        "causal grouped-query attention (8 query heads, 2 KV heads)",
    ),  # fmt: skip
    "sliding_window": Builtin(
        softmax_attention,
        {"causal": True, "window": (511, 0), "sinks": 4},
        _SEQ,
        "causal sliding window of 512 keys (the query and 511 before it) plus 4 sinks",
    ),  # fmt: skip
    "documents": Builtin(softmax_attention, {"documents": True}, _SEQ, "document mask"),
    "neighborhood_1d": Builtin(
        neighborhood_attention,
        {"grid": (4096,), "kernel": (63,)},
        _SEQ,
        "1-D neighborhood attention",
    ),  # fmt: skip
    "neighborhood_2d": Builtin(
        neighborhood_attention,
        {"grid": (56, 56), "kernel": (7, 7)},
        _SEQ,
        "2-D neighborhood attention (NATTEN semantics)",
    ),  # fmt: skip
    "neighborhood_3d": Builtin(
        neighborhood_attention,
        {"grid": (16, 32, 32), "kernel": (7, 7, 7)},
        _SEQ,
        "3-D neighborhood attention",
    ),  # fmt: skip
    "halo": Builtin(
        halo_attention, {"grid": (64, 64), "block": 8, "halo": 3}, _SEQ, "HaloNet blocks"
    ),
    "maxvit_block": Builtin(
        maxvit_attention, {"grid": (56, 56), "size": 7, "mode": "block"}, _SEQ, "MaxViT block"
    ),
    "maxvit_grid": Builtin(
        maxvit_attention, {"grid": (56, 56), "size": 7, "mode": "grid"}, _SEQ, "MaxViT grid"
    ),
    "swin_windows": Builtin(
        window_attention,
        {"grid": (56, 56), "window": 7, "shift": 3, "position_bias": True},
        _SEQ,
        "Swin shifted windows with a relative-position bias",
    ),
    "linear": Builtin(linear_attention, {}, _SEQ, "linear attention, elu+1 features"),
    "linear_causal": Builtin(
        linear_attention, {"causal": True}, _SEQ, "causal linear attention (recurrence)"
    ),
    "sigmoid": Builtin(sigmoid_attention, {}, _SEQ, "sigmoid attention"),
    "softplus": Builtin(softplus_attention, {}, _SEQ, "softplus attention, l1-normalised"),
    "agent": Builtin(agent_attention, {"n_agents": 49}, _SEQ, "agent attention, 2 softmaxes"),
    "channel": Builtin(
        channel_attention,
        {},
        {"B": 1, "H": 8, "N": 4096, "C": 64, "D": 64},
        "DaViT channel attention",
    ),  # fmt: skip
    "triplet": Builtin(
        triplet_attention,
        {},
        {"B": 1, "H": 2, "P": 64, "M": 64, "L": 64, "E": 32, "F": 32},
        "2-simplicial (triplet) attention",
    ),  # fmt: skip
}


def builtin(name: str) -> Builtin:
    if name not in BUILTINS:
        known = ", ".join(sorted(BUILTINS))
        raise EinscadeError(f"no built-in cascade {name!r}; known: {known}")
    return BUILTINS[name]
