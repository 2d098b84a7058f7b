"""The ``torch`` target: a CPU lowering that executes a cascade's block layout.

Masked softmax attention (the softmax family and the local families) runs block-sparse:
per query tile only its visited key tiles are read (gathered, or viewed in place when they
are evenly spaced token ranges), scores come from batched matmuls over whole groups of
tiles, the element mask is applied only where a tile is partial, and the softmax is
two-stage per query tile. Never the dense N x N problem. Other cascades run densely
through the reference executor (exact) with a one-time warning.

    program = TorchProgram(cascade)
    out = program(Q=q, K=k, V=v)
    program.stats.computed_elements  # score elements the last call computed
"""

from einscade.codegen.torch_lowering.plan import LayoutChoice, Plan, TileGroup, pick_layout
from einscade.codegen.torch_lowering.program import CallStats, TorchProgram
from einscade.codegen.torch_lowering.recognize import SoftmaxForm, Unsupported, recognize

__all__ = [
    "CallStats",
    "LayoutChoice",
    "Plan",
    "SoftmaxForm",
    "TileGroup",
    "TorchProgram",
    "Unsupported",
    "pick_layout",
    "recognize",
]
