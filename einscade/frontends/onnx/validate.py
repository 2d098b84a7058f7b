"""Validate a rewritten model before it is moved into place.

Three checks, each failure a one-line :class:`OnnxModelError` that names the site when one
is to blame: ``onnx.checker.check_model(path, full_check=True)`` (path based, so models over
2 GB work), strict shape inference (each site's output keeps its inferred shape), and
onnxruntime on random inputs, where every site's output is exposed as an extra graph output
in both models so a difference is traced to the site that made it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from einscade.frontends.onnx.errors import OnnxModelError
from einscade.frontends.onnx.progress import Stage
from einscade.frontends.onnx.sites import Site

SYMBOLIC_SIZE = 4  # size picked for every symbolic dim of a model input
_TOLERANCES = {  # (atol, rtol) by dtype of the output
    np.dtype(np.float16): (1e-2, 1e-2),
    np.dtype(np.float32): (1e-4, 1e-3),
    np.dtype(np.float64): (1e-8, 1e-6),
}
_LOOSE = (1e-2, 1e-2)  # bfloat16 and anything else


@dataclass(frozen=True)
class Comparison:
    """Max abs differences, rewritten vs original, per model output and per site output."""

    outputs: tuple[tuple[str, float], ...]
    sites: tuple[tuple[int, float], ...]

    @property
    def max_abs_diff(self) -> float:
        return max((d for _, d in self.outputs), default=0.0)


def checker_error(path: Path) -> str | None:
    """The onnx checker's complaint about the file at ``path``, or None."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as error:  # ValidationError, InferenceError, OSError
        return " ".join(str(error).split())[:300]
    return None


def check_site_shapes(path: Path, sites: tuple[Site, ...]) -> None:
    """Strict shape inference on the written model; each site's output keeps its shape."""
    proto = onnx.load(str(path), load_external_data=False)
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True, data_prop=True)
    except Exception as error:
        raise OnnxModelError(f"shape inference fails on the rewritten model: {error}") from error
    shapes = {vi.name: _dims(vi) for vi in inferred.graph.value_info}
    shapes.update({vi.name: _dims(vi) for vi in inferred.graph.output})
    for site in sites:
        before = site.values.output.shape
        after = shapes.get(site.output)
        if before is None or after is None or not before.is_static():
            continue
        if list(before) != after and None not in after:
            raise OnnxModelError(
                f"{site.name}: shape inference gives {after} after the rewrite, "
                f"{list(before)} before"
            )


def _dims(value_info: onnx.ValueInfoProto) -> list[int | None] | None:
    tensor = value_info.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]


def compare(
    original: Path,
    model: ir.Model,
    rewritten: Path,
    sites: tuple[Site, ...],
    seed: int = 0,
    stage: Stage | None = None,
) -> Comparison:
    """Run both files in onnxruntime on the same random inputs; raise if they disagree."""
    probes = [s for s in sites if s.container == "graph"]
    feeds = random_inputs(model, seed)
    if stage is not None:
        stage.step("onnxruntime on the original")
    before = _run(original, probes, feeds, "the original model")
    if stage is not None:
        stage.step("onnxruntime on the rewritten model")
    after = _run(rewritten, probes, feeds, "the rewritten model")
    outputs = tuple((o.name, _max_diff(before[o.name], after[o.name])) for o in model.graph.outputs)
    site_diffs = tuple((s.index, _max_diff(before[s.output], after[s.output])) for s in probes)
    for site in probes:
        _require_close(before[site.output], after[site.output], site.name)
    for output in model.graph.outputs:
        _require_close(before[output.name], after[output.name], f"model output '{output.name}'")
    return Comparison(outputs, site_diffs)


def random_inputs(model: ir.Model, seed: int = 0) -> dict[str, np.ndarray]:
    """Random feeds for the graph inputs: symbolic dims become small sizes, ints are 0/1."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.inputs:
        if value.is_initializer():
            continue
        if value.shape is None or value.dtype is None:
            raise OnnxModelError(
                f"input '{value.name}' has no known type or rank; cannot make test inputs"
            )
        shape = [d if isinstance(d, int) else SYMBOLIC_SIZE for d in value.shape]
        dtype = value.dtype.numpy()
        if value.dtype == ir.DataType.BOOL:
            feeds[value.name] = rng.random(shape) < 0.8  # mostly visible: few empty rows
        elif np.issubdtype(dtype, np.integer):
            feeds[value.name] = rng.integers(0, 2, size=shape).astype(dtype)
        else:
            feeds[value.name] = rng.standard_normal(shape).astype(dtype)
    _group_query_lengths(model, feeds)
    return feeds


def _group_query_lengths(model: ir.Model, feeds: dict[str, np.ndarray]) -> None:
    """GroupQueryAttention's seqlens_k / total_sequence_length, where they are graph inputs,
    get the lengths the fed K implies (random ones make onnxruntime refuse to run)."""
    for given in _group_query_inputs(model):
        inputs = given + [None] * 7
        key = inputs[1] if inputs[1] is not None else inputs[0]
        seqlens, total, past = inputs[5], inputs[6], inputs[3]
        if key is None or key.name not in feeds or seqlens is None or total is None:
            continue
        length = feeds[key.name].shape[1]
        if past is not None and past.name in feeds:
            length += feeds[past.name].shape[2]
        if total.name in feeds:
            feeds[total.name] = np.array(length, dtype=feeds[total.name].dtype)
        if seqlens.name in feeds:
            feeds[seqlens.name] = np.full_like(feeds[seqlens.name], length - 1)


def _group_query_inputs(model: ir.Model) -> Iterator[list[ir.Value | None]]:
    """The graph values each GroupQueryAttention reads: in the graph, or in a local function
    the graph calls (a site wrapped by ``--to function``), mapped through the call."""
    for node in model.graph:
        if (node.domain, node.op_type) == ("com.microsoft", "GroupQueryAttention"):
            yield list(node.inputs)
        function = model.functions.get((node.domain, node.op_type, node.overload))
        if function is None:
            continue
        actual = dict(zip(function.inputs, node.inputs, strict=False))
        for inner in function:
            if (inner.domain, inner.op_type) == ("com.microsoft", "GroupQueryAttention"):
                yield [actual.get(x) if x is not None else None for x in inner.inputs]


def _run(path: Path, probes: list[Site], feeds: dict, what: str) -> dict[str, np.ndarray]:
    """Outputs by name of the model at ``path`` with the probe values added as outputs."""
    proto = onnx.load(str(path), load_external_data=False)
    present = {o.name for o in proto.graph.output}
    for site in probes:
        if site.output not in present:
            proto.graph.output.append(_value_info(site.values.output))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # External data stays where it is: the session reads it from the model's own folder.
    folder = str(path.parent.resolve())
    options.add_session_config_entry("session.model_external_initializers_file_folder_path", folder)
    try:
        session = ort.InferenceSession(
            proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, feeds), strict=True))
    except Exception as error:
        raise OnnxModelError(f"onnxruntime fails on {what}: {error}") from error


def _value_info(value: ir.Value) -> onnx.ValueInfoProto:
    elem = value.dtype.value if value.dtype is not None else onnx.TensorProto.FLOAT
    shape = None
    if value.shape is not None:
        shape = [d if isinstance(d, int) else None for d in value.shape]
    return onnx.helper.make_tensor_value_info(value.name, elem, shape)


def _max_diff(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    if a.dtype.kind not in "fc":
        return float(np.abs(a.astype(np.int64) - b.astype(np.int64)).max(initial=0))
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    both_nan = np.isnan(a64) & np.isnan(b64)
    diff = np.where(both_nan, 0.0, np.abs(a64 - b64))
    return float(np.nan_to_num(diff, nan=np.inf).max(initial=0.0))


def _require_close(before: np.ndarray, after: np.ndarray, what: str) -> None:
    if before.shape != after.shape:
        raise OnnxModelError(
            f"{what}: shape {list(after.shape)} after the rewrite, {list(before.shape)} before"
        )
    if before.dtype.kind not in "fc":
        if not np.array_equal(before, after):
            raise OnnxModelError(f"{what}: integer outputs differ after the rewrite")
        return
    atol, rtol = _TOLERANCES.get(before.dtype, _LOOSE)
    a, b = after.astype(np.float64), before.astype(np.float64)
    if not np.allclose(a, b, atol=atol, rtol=rtol, equal_nan=True):
        raise OnnxModelError(
            f"{what}: onnxruntime outputs differ by {_max_diff(before, after):.3g} after the "
            f"rewrite (tolerance {atol:g} + {rtol:g} * |x|)"
        )
