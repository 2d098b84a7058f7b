"""einscade: attention as cascades of extended Einsums, compiled to fused kernels.

import einscade
cascade = einscade.neighborhood_attention(grid=(56, 56), kernel=(7, 7))
print(einscade.print_cascade(cascade))
out = einscade.reference(cascade, Q=q, K=k, V=v)
"""

from einscade.codegen.reference import reference
from einscade.compiler.api import compile as compile  # noqa: A004  (einscade.compile)
from einscade.frontends import (
    agent_attention,
    channel_attention,
    halo_attention,
    linear_attention,
    maxvit_attention,
    neighborhood_attention,
    sigmoid_attention,
    softmax_attention,
    softplus_attention,
    triplet_attention,
)
from einscade.ir import Cascade, load, loads, parse, print_cascade, verify

__all__ = [
    "Cascade",
    "agent_attention",
    "channel_attention",
    "halo_attention",
    "linear_attention",
    "load",
    "loads",
    "maxvit_attention",
    "neighborhood_attention",
    "parse",
    "print_cascade",
    "reference",
    "sigmoid_attention",
    "softmax_attention",
    "softplus_attention",
    "triplet_attention",
    "verify",
]
