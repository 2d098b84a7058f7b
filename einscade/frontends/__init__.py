"""Frontends: the attention library (Python builders) and, later, torch.fx and ONNX capture."""

from einscade.frontends.local import halo_attention, maxvit_attention, neighborhood_attention
from einscade.frontends.softmax import softmax_attention
from einscade.frontends.variants import (
    agent_attention,
    channel_attention,
    linear_attention,
    sigmoid_attention,
    softplus_attention,
    triplet_attention,
)

__all__ = [
    "agent_attention",
    "channel_attention",
    "halo_attention",
    "linear_attention",
    "maxvit_attention",
    "neighborhood_attention",
    "sigmoid_attention",
    "softmax_attention",
    "softplus_attention",
    "triplet_attention",
]
