"""Every built-in cascade at a size the reference executor runs in milliseconds (12 tokens)."""

import torch

from einscade.frontends.library import BUILTINS

SMALL = {
    "neighborhood_1d": {"grid": (12,), "kernel": (5,)},
    "neighborhood_2d": {"grid": (4, 3), "kernel": (3, 3)},
    "neighborhood_3d": {"grid": (2, 3, 2), "kernel": (1, 3, 1)},
    "swin_windows": {"grid": (2, 6), "window": (2, 3), "shift": (1, 1)},
    "halo": {"grid": (4, 3), "block": 2, "halo": 1},
    "maxvit_block": {"grid": (2, 6), "size": 2},
    "maxvit_grid": {"grid": (2, 6), "size": 2},
    "sliding_window": {"window": (3, 0), "sinks": 1},
    "agent": {"n_agents": 5},
}
EXTENTS = {"b": 1, "h": 2, "hk": 2, "p": 12, "m": 12, "e": 4, "f": 3, "a": 5, "l": 6,
           "n": 12, "c": 4, "d": 4, "i": 6, "j": 6}  # fmt: skip


def small(name):
    """The built-in ``name`` at the small size."""
    return BUILTINS[name].build(**SMALL.get(name, {}))


def small_inputs(cascade, seed=1):
    """Positive float64 inputs (and two documents of 5 and 7 tokens) at ``EXTENTS``."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for decl in cascade.inputs:
        shape = [EXTENTS[r] for r in decl.ranks]
        if decl.name == "doc":
            tensors[decl.name] = torch.tensor([[0] * 5 + [1] * 7]).expand(*shape).clone()
        else:
            tensors[decl.name] = torch.rand(*shape, generator=g, dtype=torch.float64) + 0.1
    return tensors
