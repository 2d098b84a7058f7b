"""Independent test oracles for einscade.

Deliberately simple, loop-based implementations written straight from the published
formulas (see ``/work/shared/docs/neighborhood.md``). They must never import ``einscade``:
they exist to check the compiler's reference executor, so they may not share code with it.

- :mod:`.windows`: boolean attention masks ``mask[q, k]`` (True = query q attends key k).
- :mod:`.attention`: float64 masked softmax attention and linear attention.
"""

from .attention import (
    causal_linear_attention_loop,
    feature_map_fn,
    linear_attention_dense,
    masked_softmax_attention,
)
from .windows import (
    causal_mask,
    document_mask,
    halo_mask,
    maxvit_mask,
    natten_axis_window,
    natten_mask,
    prefix_lm_mask,
    sinks_or,
    sliding_window_mask,
)

__all__ = [
    "causal_linear_attention_loop",
    "causal_mask",
    "document_mask",
    "feature_map_fn",
    "halo_mask",
    "linear_attention_dense",
    "masked_softmax_attention",
    "maxvit_mask",
    "natten_axis_window",
    "natten_mask",
    "prefix_lm_mask",
    "sinks_or",
    "sliding_window_mask",
]
