"""Load an ONNX model safely: parse, check its structure, confine external data to its folder.

Order matters for safety: the protobuf is parsed with ``load_external_data=False``, every
tensor's external-data ``location`` is checked (relative, no ``..``, no symlink on the way,
inside the model folder, offset/length inside the file), and only then are tensors bound to
that folder, lazily, through onnx-ir. Nothing outside the model folder is ever opened.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from einscade.frontends.onnx.errors import OnnxModelError
from einscade.frontends.onnx.function_shapes import annotate_functions

# Domains onnxruntime implements besides the ONNX ones (any version is accepted for them).
RUNTIME_DOMAINS = frozenset(
    {"com.microsoft", "com.microsoft.nchwc", "com.microsoft.experimental", "ai.onnx.contrib"}
)
_ONNX_DEFAULT = ("", "ai.onnx")
_INSIDE = "only paths inside the model folder are allowed"


@dataclass(frozen=True)
class LoadedModel:
    """A checked model: onnx-ir graph with inferred shapes, weights read lazily from ``path``."""

    path: Path
    model: ir.Model
    data_files: frozenset[Path]  # external data files the model reads (resolved paths)
    notes: tuple[str, ...] = ()


def load_model(path: str | os.PathLike) -> LoadedModel:
    """Parse and check ``path``; raise :class:`OnnxModelError` with a one-line reason."""
    path = Path(path)
    proto = read_proto(path)
    check_opsets(proto, path)
    check_graph(proto.graph, path)
    data_files = check_external_data(proto, path)
    notes: list[str] = []
    try:
        proto = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except Exception as error:  # a model we can still read; matching just sees fewer shapes
        notes.append(f"shape inference failed: {' '.join(str(error).split())[:200]}")
    proto = _infer_through_contrib_ops(proto, notes)
    proto = annotate_functions(proto)
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as error:
        raise OnnxModelError(f"{path}: cannot read the model: {error}") from error
    _bind_external_tensors(model, path.parent)
    _restore_function_input_types(proto, model)
    return LoadedModel(path, model, data_files, tuple(notes))


def _infer_through_contrib_ops(proto: onnx.ModelProto, notes: list[str]) -> onnx.ModelProto:
    """onnx stops at com.microsoft ops (no schemas): onnxruntime's symbolic shape inference
    knows them, so types and shapes reach the values after them."""
    if not any(node.domain == "com.microsoft" for node in proto.graph.node):
        return proto
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        # It would read external data relative to the working folder, not the model's.
        notes.append("com.microsoft ops and external data: onnxruntime's shape inference skipped")
        return proto
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    try:
        # When incomplete it saves sym_shape_infer_temp.onnx in the working folder: let it
        # write into a temporary one instead (nothing but the output may be written).
        with tempfile.TemporaryDirectory() as scratch, contextlib.chdir(scratch):
            return SymbolicShapeInference.infer_shapes(
                proto, auto_merge=True, guess_output_rank=True
            )
    except Exception as error:
        notes.append(f"onnxruntime's shape inference failed: {' '.join(str(error).split())[:200]}")
        return proto


def read_proto(path: Path) -> onnx.ModelProto:
    """The ModelProto without external data; truncated or non-ONNX files are errors."""
    if not path.is_file():
        raise OnnxModelError(f"{path}: no such file")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except (DecodeError, ValueError, RuntimeError) as error:
        raise OnnxModelError(
            f"{path}: not a valid ONNX file (truncated or not protobuf: {error})"
        ) from error
    if not proto.HasField("graph") or not proto.opset_import or proto.ir_version <= 0:
        raise OnnxModelError(
            f"{path}: not an ONNX model (missing {_missing_part(proto)}; truncated file?)"
        )
    if proto.ir_version > onnx.IR_VERSION:
        raise OnnxModelError(
            f"{path}: IR version {proto.ir_version} is newer than this onnx supports "
            f"({onnx.IR_VERSION})"
        )
    return proto


def _missing_part(proto: onnx.ModelProto) -> str:
    if not proto.HasField("graph"):
        return "graph"
    return "opset_import" if not proto.opset_import else "ir_version"


# -- opsets ----------------------------------------------------------------------------------


def _onnx_domain_versions() -> dict[str, int]:
    """Highest opset version of every domain this onnx defines schemas for."""
    versions: dict[str, int] = {}
    for schema in onnx.defs.get_all_schemas_with_history():
        domain = "" if schema.domain == "ai.onnx" else schema.domain
        versions[domain] = max(versions.get(domain, 1), schema.since_version)
    versions[""] = max(versions.get("", 1), onnx.defs.onnx_opset_version())
    return versions


def check_opsets(proto: onnx.ModelProto, path: Path) -> None:
    """Imported ONNX opsets must exist; every node's domain must be imported and known."""
    known = _onnx_domain_versions()
    local = {f.domain for f in proto.functions}
    imported: dict[str, int] = {}
    for opset in proto.opset_import:
        domain = "" if opset.domain in _ONNX_DEFAULT else opset.domain
        imported[domain] = opset.version
        if domain in known and not 1 <= opset.version <= known[domain]:
            name = domain or "ai.onnx"
            raise OnnxModelError(
                f"{path}: unknown opset version {name} {opset.version} "
                f"(this onnx knows 1..{known[domain]})"
            )
    for node in _all_nodes(proto):
        domain = "" if node.domain in _ONNX_DEFAULT else node.domain
        where = f"node '{node.name or node.op_type}' ({node.op_type})"
        if domain not in imported and domain not in local:
            raise OnnxModelError(
                f"{path}: {where} uses opset domain '{domain}' that the model does not import"
            )
        if domain not in known and domain not in RUNTIME_DOMAINS and domain not in local:
            raise OnnxModelError(
                f"{path}: {where} uses unknown opset domain '{domain}' (neither onnx, "
                "onnxruntime nor a model-local function defines it)"
            )


def _all_nodes(proto: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    yield from _graph_nodes(proto.graph)
    for function in proto.functions:
        for node in function.node:
            yield node
            yield from _subgraph_nodes(node)


def _graph_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        yield from _subgraph_nodes(node)


def _subgraph_nodes(node: onnx.NodeProto) -> Iterator[onnx.NodeProto]:
    for attr in node.attribute:
        if attr.HasField("g"):
            yield from _graph_nodes(attr.g)
        for graph in attr.graphs:
            yield from _graph_nodes(graph)


# -- graph structure -------------------------------------------------------------------------


def check_graph(graph: onnx.GraphProto, path: Path) -> None:
    """Every input defined, every value defined once, no cycle (order may be unsorted)."""
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer} | {""}
    defined |= {t.values.name for t in graph.sparse_initializer}
    producer: dict[str, int] = {}
    for k, node in enumerate(graph.node):
        for name in node.output:
            if name and (name in producer or name in defined):
                raise OnnxModelError(
                    f"{path}: value '{name}' is defined twice (again by node "
                    f"'{node.name or node.op_type}')"
                )
            if name:
                producer[name] = k
    for node in graph.node:
        for name in node.input:
            if name not in defined and name not in producer:
                raise OnnxModelError(
                    f"{path}: node '{node.name or node.op_type}' reads value '{name}' that "
                    "nothing defines (truncated or incomplete graph?)"
                )
    cycle = _find_cycle(graph, producer)
    if cycle:
        raise OnnxModelError(f"{path}: the graph has a cycle through nodes {' -> '.join(cycle)}")


def _find_cycle(graph: onnx.GraphProto, producer: dict[str, int]) -> list[str]:
    """Node names along one cycle, or [] if the graph is acyclic (Kahn's algorithm)."""
    nodes = list(graph.node)
    preds = [{producer[i] for i in node.input if i in producer} for node in nodes]
    succs: list[list[int]] = [[] for _ in nodes]
    for k, sources in enumerate(preds):
        for source in sources:
            succs[source].append(k)
    waiting = [len(sources) for sources in preds]
    ready = [k for k, count in enumerate(waiting) if count == 0]
    done = 0
    while ready:
        k = ready.pop()
        done += 1
        for nxt in succs[k]:
            waiting[nxt] -= 1
            if waiting[nxt] == 0:
                ready.append(nxt)
    if done == len(nodes):
        return []
    # Walk backwards through unfinished predecessors until a node repeats.
    start = next(k for k, count in enumerate(waiting) if count > 0)
    seen: list[int] = []
    while start not in seen:
        seen.append(start)
        start = next(p for p in preds[start] if waiting[p] > 0)
    loop = seen[seen.index(start) :][::-1]
    return [nodes[k].name or f"#{k} {nodes[k].op_type}" for k in loop + loop[:1]]


# -- external data ---------------------------------------------------------------------------


def check_external_data(proto: onnx.ModelProto, path: Path) -> frozenset[Path]:
    """Check every external-data reference before anything is read; the files it uses."""
    folder = Path(os.path.realpath(path.parent))
    files: set[Path] = set()
    for tensor in _all_tensors(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = {entry.key: entry.value for entry in tensor.external_data}
        files.add(_check_location(entries, tensor.name, folder, path))
    return frozenset(files)


def _check_location(entries: dict[str, str], name: str, folder: Path, path: Path) -> Path:
    location = entries.get("location", "")
    where = f"{path}: tensor '{name}' external data location '{location}'"
    if not location:
        raise OnnxModelError(f"{where} is empty")
    parts = re.split(r"[\\/]", location)
    if os.path.isabs(location) or location[0] in "/\\" or re.match(r"^[A-Za-z]:", location):
        raise OnnxModelError(f"{where} is absolute; {_INSIDE}")
    if ".." in parts:
        raise OnnxModelError(f"{where} contains '..'; {_INSIDE}")
    current = folder
    for part in (p for p in parts if p not in ("", ".")):
        current = current / part
        if current.is_symlink():
            raise OnnxModelError(f"{where} goes through a symbolic link ({current.name})")
    resolved = Path(os.path.realpath(current))
    if os.path.commonpath([resolved, folder]) != str(folder):
        raise OnnxModelError(f"{where} resolves outside the model folder")
    if not resolved.is_file():
        raise OnnxModelError(f"{where} does not name an existing file")
    _check_extent(entries, where, resolved.stat().st_size)
    return resolved


def _check_extent(entries: dict[str, str], where: str, size: int) -> None:
    try:
        offset = int(entries.get("offset", "0"))
        length = int(entries["length"]) if "length" in entries else size - offset
    except ValueError as error:
        raise OnnxModelError(f"{where} has a non-integer offset or length") from error
    if offset < 0 or length < 0 or offset + length > size:
        raise OnnxModelError(
            f"{where}: bytes {offset}..{offset + length} lie outside the file ({size} bytes)"
        )


def _all_tensors(proto: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every TensorProto in the model: initializers, attributes, subgraphs, functions."""
    yield from _graph_tensors(proto.graph)
    for function in proto.functions:
        for node in function.node:
            yield from _node_tensors(node)


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node: onnx.NodeProto) -> Iterator[onnx.TensorProto]:
    for attr in node.attribute:
        if attr.HasField("t"):
            yield attr.t
        yield from attr.tensors
        if attr.HasField("sparse_tensor"):
            yield attr.sparse_tensor.values
            yield attr.sparse_tensor.indices
        if attr.HasField("g"):
            yield from _graph_tensors(attr.g)
        for graph in attr.graphs:
            yield from _graph_tensors(graph)


def _restore_function_input_types(proto: onnx.ModelProto, model: ir.Model) -> None:
    """Apply a FunctionProto's value_info to its inputs (onnx-ir 1.1 reads it only for node
    outputs), so a site inside a local function sees the shapes of Q, K and V."""
    for function_proto in proto.functions:
        key = (function_proto.domain, function_proto.name, function_proto.overload)
        function = model.functions.get(key)
        if function is None:
            continue
        infos = {info.name: info for info in function_proto.value_info}
        for value in function.inputs:
            if value.name in infos and value.shape is None and value.type is None:
                ir.serde.deserialize_value_info_proto(infos[value.name], value)


def _bind_external_tensors(model: ir.Model, folder: Path) -> None:
    """Point lazily read external tensors (graph, subgraphs, functions) at the model folder."""
    ir.external_data.set_base_dir(model.graph, folder)
    for function in model.functions.values():
        for node in ir.traversal.RecursiveGraphIterator(function):
            for attr in node.attributes.values():
                if not attr.is_ref() and isinstance(attr.value, ir.ExternalTensor):
                    attr.value.base_dir = folder
