"""ONNX frontend: find attention in exported models, lift it into cascades, rewrite offline.

``load`` (safe loading), ``patterns`` (onnxscript rewriter patterns), ``sites`` (discovery
and lifting), ``misses`` (why a Softmax matched nothing), ``rewrite`` (function /
Attention-op modes), ``validate`` (checker, shape inference, onnxruntime comparison),
``report`` (rich tables), ``commands`` (the CLI verbs); see docs/onnx.md.
"""

from einscade.frontends.onnx.commands import RewriteResult, inspect_model, rewrite_model
from einscade.frontends.onnx.errors import OnnxModelError
from einscade.frontends.onnx.load import LoadedModel, load_model
from einscade.frontends.onnx.misses import Miss
from einscade.frontends.onnx.sites import Discovery, Site, find_sites

__all__ = [
    "Discovery",
    "LoadedModel",
    "Miss",
    "OnnxModelError",
    "RewriteResult",
    "Site",
    "find_sites",
    "inspect_model",
    "load_model",
    "rewrite_model",
]
