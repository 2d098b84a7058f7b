"""``einscade onnx inspect`` and ``einscade onnx rewrite``: load, find, rewrite, validate, write.

The output is written atomically: into a fresh temporary folder beside it, validated there,
then moved with ``os.replace`` (data file first, model last). On any failure the temporary
folder is removed and nothing else is touched; the input is only ever read.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx_ir as ir
from rich.console import Console

from einscade.frontends.onnx.errors import OnnxModelError
from einscade.frontends.onnx.load import LoadedModel, load_model
from einscade.frontends.onnx.opset import ATTENTION_OPSET, raise_opset
from einscade.frontends.onnx.progress import Steps, is_large
from einscade.frontends.onnx.report import (
    op_counts,
    print_inspection,
    print_rewrite_report,
    summary_line,
)
from einscade.frontends.onnx.rewrite import Decision, expressible, rewrite_sites
from einscade.frontends.onnx.sites import Discovery, find_sites
from einscade.frontends.onnx.validate import (
    Comparison,
    check_site_shapes,
    checker_error,
    compare,
)
from einscade.ir.errors import EinscadeError

# Protobuf cannot serialize 2 GiB; keep a margin for the graph itself.
_EMBED_LIMIT = 1_800_000_000
# Tensors up to this size stay in the model file (shape inference reads Reshape shapes there).
_INLINE = 1024


@dataclass(frozen=True)
class RewriteResult:
    out: Path
    decisions: tuple[Decision, ...]
    comparison: Comparison
    notes: tuple[str, ...]


def inspect_model(
    path: str | os.PathLike, console: Console, *, progress: bool | None = None
) -> Discovery:
    """Print the sites of the model at ``path`` with their cascades; return them.
    ``progress``: show bars (None: on large models, see :mod:`.progress`)."""
    loaded = load_model(path)
    with _steps(loaded, progress) as steps:
        found = find_sites(loaded.model, steps)
    print_inspection(loaded.path, loaded.model, found, console)
    for note in loaded.notes:
        console.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)
    return found


def rewrite_model(
    source: str | os.PathLike,
    out: str | os.PathLike,
    mode: str = "function",
    *,
    report: bool = False,
    console: Console | None = None,
    progress: bool | None = None,
    progress_console: Console | None = None,
) -> RewriteResult:
    """Rewrite the attention sites of ``source`` in ``mode`` and write ``out`` if it validates.

    ``progress``: progress bars on ``progress_console`` (default stderr) for discovery and
    validation; None shows them on large models only (:mod:`.progress`)."""
    source, out = Path(source), Path(out)
    _check_output_path(source, out)
    loaded = load_model(source)
    before = op_counts(loaded.model)
    with _steps(loaded, progress, progress_console) as steps:
        model, decisions, notes = _rewrite_in_memory(loaded.model, mode, steps)
        after = op_counts(model)
        comparison = _write_validated(loaded, model, out, decisions, steps)
    result = RewriteResult(out, decisions, comparison, (*loaded.notes, *notes))
    if console is not None:
        if report:
            print_rewrite_report(before, after, decisions, comparison, console)
        for note in result.notes:
            console.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)
        console.print(
            summary_line(out, decisions, comparison), highlight=False, markup=False, soft_wrap=True
        )
    return result


def _check_output_path(source: Path, out: Path) -> None:
    if out.resolve() == source.resolve() or (out.exists() and out.samefile(source)):
        raise OnnxModelError(f"{out}: the output would overwrite the input model")
    if not out.parent.is_dir():
        raise OnnxModelError(f"{out}: folder {out.parent} does not exist")
    if out.is_dir():
        raise OnnxModelError(f"{out}: is a folder")


def _steps(loaded: LoadedModel, progress: bool | None, console: Console | None = None) -> Steps:
    if progress is None:
        progress = is_large(loaded.model, [loaded.path, *loaded.data_files])
    return Steps(progress, console)


def _rewrite_in_memory(
    model: ir.Model, mode: str, steps: Steps
) -> tuple[ir.Model, tuple[Decision, ...], list]:
    """The model to write (rewritten in place, or a converted copy), decisions, notes."""
    found = find_sites(model, steps)
    if mode != "onnx-attention" or not any(expressible(s) for s in found.sites):
        return model, rewrite_sites(model, found.sites, mode), []
    # Attention needs opset 23; convert a copy so a failed conversion leaves nothing behind.
    converted, blocked = raise_opset(model)
    if blocked is not None:
        return model, tuple(Decision(s, False, "kept", blocked) for s in found.sites), [blocked]
    notes = [] if converted is model else [f"opset converted to {ATTENTION_OPSET}"]
    found = find_sites(converted, steps) if converted is not model else found
    return converted, rewrite_sites(converted, found.sites, mode), notes


def _write_validated(
    loaded: LoadedModel, model: ir.Model, out: Path, decisions, steps: Steps
) -> Comparison:
    """Save into a temporary folder beside ``out``, validate, then move into place."""
    data_name = _data_file_name(loaded, out)
    rewritten = tuple(d.site for d in decisions if d.rewritten)
    sites = tuple(d.site for d in decisions)
    folder = Path(tempfile.mkdtemp(prefix=".einscade-", dir=out.parent))
    stage = steps.stage("validating", total=5)
    try:
        staged = folder / out.name
        stage.step("writing")
        try:
            _inline_small_external_tensors(model)
            ir.save(model, staged, external_data=data_name, size_threshold_bytes=_INLINE)
        except Exception as error:
            raise OnnxModelError(f"{out}: cannot serialize the rewritten model: {error}") from error
        stage.step("onnx checker")
        _check_with_onnx(staged, loaded.path)
        stage.step("shape inference")
        check_site_shapes(staged, rewritten)
        comparison = compare(loaded.path, model, staged, sites, stage=stage)
        if data_name is not None:
            os.replace(folder / data_name, out.parent / data_name)
        os.replace(staged, out)
        return comparison
    finally:
        stage.done()
        shutil.rmtree(folder, ignore_errors=True)


def _inline_small_external_tensors(model: ir.Model) -> None:
    """Read small external tensors into memory: ``ir.save`` would otherwise keep their old,
    input-relative locations (it only moves tensors above its threshold)."""
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if isinstance(tensor, ir.ExternalTensor) and tensor.nbytes <= _INLINE:
            value.const_value = ir.tensor(tensor.numpy(), name=tensor.name)
    graphs = [model.graph, *model.functions.values()]
    for node in (n for g in graphs for n in ir.traversal.RecursiveGraphIterator(g)):
        for attr in node.attributes.values():
            if not attr.is_ref() and isinstance(attr.value, ir.ExternalTensor):
                tensor = attr.value
                node.attributes[attr.name] = ir.AttrTensor(attr.name, ir.tensor(tensor.numpy()))


def _data_file_name(loaded: LoadedModel, out: Path) -> str | None:
    """A fresh external data file for outputs of models that had one or are too large."""
    size = sum(
        v.const_value.nbytes for v in loaded.model.graph.initializers.values() if v.const_value
    )
    if not loaded.data_files and size < _EMBED_LIMIT:
        return None
    name = f"{out.name}.data"
    if (out.parent / name).resolve() in loaded.data_files:
        raise OnnxModelError(f"{out}: its data file {name} is the input's data file")
    return name


def _check_with_onnx(staged: Path, source: Path) -> None:
    """The checker must accept the output unless it rejects the input as well."""
    error = checker_error(staged)
    if error is not None and checker_error(source) is None:
        raise OnnxModelError(f"the onnx checker rejects the rewritten model: {error}")


def run_cli(args: argparse.Namespace, rest: list[str], console: Console) -> None:
    """The ``einscade onnx`` verbs; every failure becomes a one-line :class:`OnnxModelError`."""
    if rest:
        raise OnnxModelError(f"unexpected arguments {' '.join(rest)}")
    try:
        if args.onnx_command == "inspect":
            inspect_model(args.model, console)
        else:
            rewrite_model(args.model, args.output, args.to, report=args.report, console=console)
    except (EinscadeError, OSError):
        raise
    except Exception as error:  # a bug or a library failure: still one line, no traceback
        if os.environ.get("EINSCADE_DEBUG"):
            raise
        text = " ".join(str(error).split())[:300]
        raise OnnxModelError(
            f"{args.model}: {type(error).__name__}: {text} (EINSCADE_DEBUG=1 shows a traceback)"
        ) from error


def add_parser(sub) -> None:  # type: ignore[no-untyped-def]
    """``einscade onnx inspect IN.onnx`` and ``einscade onnx rewrite IN.onnx -o OUT.onnx``."""
    onnx_cmd = sub.add_parser("onnx", help="find attention in ONNX models and rewrite them")
    onnx_cmd.set_defaults(handler=run_cli)
    verbs = onnx_cmd.add_subparsers(dest="onnx_command", required=True)
    inspect_cmd = verbs.add_parser("inspect", help="list attention sites and their cascades")
    inspect_cmd.add_argument("model", metavar="IN.onnx")
    rewrite_cmd = verbs.add_parser("rewrite", help="rewrite attention sites, validated")
    rewrite_cmd.add_argument("model", metavar="IN.onnx")
    rewrite_cmd.add_argument("-o", "--output", required=True, metavar="OUT.onnx")
    rewrite_cmd.add_argument(
        "--to", choices=("function", "onnx-attention", "ort"), default="function",
        help="function: local einscade functions carrying the cascade (default); "
        "onnx-attention: the opset-23 Attention op; ort: com.microsoft MultiHeadAttention / "
        "GroupQueryAttention (onnxruntime)",
    )  # fmt: skip
    rewrite_cmd.add_argument("--report", action="store_true", help="print the rewrite tables")
