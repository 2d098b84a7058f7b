"""ONNX frontend: find attention in exported models, lift it into cascades, rewrite offline.

``load`` (safe loading; ``function_shapes`` shapes inside local functions), ``patterns``
(onnxscript rewriter patterns), ``sites`` (discovery and lifting; ``records``, ``masks``
constant masks as predicates, ``microsoft`` and ``group_query`` com.microsoft ops),
``misses`` (why a Softmax matched nothing), ``rewrite`` (function / Attention-op / ort modes;
``layouts``, ``opset``, ``ort``, ``repeats``), ``validate`` (checker, shape inference,
onnxruntime comparison), ``progress`` (bars on large models), ``report`` (rich tables),
``commands`` (the CLI verbs), ``zoo`` and ``compare_ort`` (real models, and the comparison
with onnxruntime's optimizer); see docs/onnx.md.
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
