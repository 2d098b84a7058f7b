"""What fuses: einscade's ONNX rewrite vs onnxruntime's transformers optimizer, same files.

Exports every model of :mod:`einscade.frontends.onnx.zoo` (random weights, no downloads)
with every exporter that applies, then for each file counts

- our attention sites and how many each ``--to`` mode rewrites (each rewrite validated in
  onnxruntime against the original, as ``einscade onnx rewrite`` does);
- the attention ops ``onnxruntime.transformers.optimizer.optimize_model`` fuses
  (com.microsoft ``Attention``, ``MultiHeadAttention``, ``GroupQueryAttention``, ...), at
  ``opt_level=0`` (its fusions on the graph as exported) and at its default level, with the
  largest output difference of the optimized model against the original.

Run offline from the repository root (timm models need timm and torchvision importable)::

    python -m einscade.frontends.onnx.compare_ort --out /tmp/zoo [--models bert-sdpa ...]

It prints a Markdown table (the one in docs/onnx.md) and the time each step took.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import re
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from einscade.frontends.onnx import zoo
from einscade.frontends.onnx.commands import rewrite_model
from einscade.frontends.onnx.load import load_model
from einscade.frontends.onnx.rewrite import MODES
from einscade.frontends.onnx.sites import find_sites
from einscade.frontends.onnx.validate import random_inputs

_FUSED = frozenset(
    {"Attention", "MultiHeadAttention", "GroupQueryAttention", "PackedAttention",
     "PackedMultiHeadAttention", "DecoderMaskedMultiHeadAttention"}
)  # fmt: skip


@dataclass
class Row:
    """One exported file: our counts per mode and the optimizer's, with timings."""

    model: str
    exporter: str
    nodes: int = 0
    sites: int = 0
    misses: int = 0
    ours: dict[str, str] = field(default_factory=dict)  # mode -> "2/2 MultiHeadAttention"
    theirs: dict[str, str] = field(default_factory=dict)  # "opt 0" / "default" -> "2 Attention"
    seconds: dict[str, float] = field(default_factory=dict)
    error: str = ""


def compare_file(path: Path, model: zoo.ZooModel, row: Row, work: Path) -> Row:
    """Fill ``row`` for the exported file at ``path``."""
    loaded = load_model(path)
    found = find_sites(loaded.model)
    row.nodes, row.sites, row.misses = len(loaded.model.graph), len(found.sites), len(found.misses)
    for mode in MODES:
        start = time.perf_counter()
        try:
            result = rewrite_model(path, work / f"{path.stem}-{mode}.onnx", mode)
        except Exception as error:  # a failed validation is a result to show
            row.ours[mode] = f"fails: {_short(error)}"
            continue
        finally:
            row.seconds[mode] = time.perf_counter() - start
        done = [d for d in result.decisions if d.rewritten]
        ops = sorted({d.action.split(" ")[0] for d in done})
        as_ops = f" {'+'.join(ops)}" if ops else ""
        kept = [d.reason for d in result.decisions if not d.rewritten]
        why = f" (kept: {kept[0].split(':')[0][:48]})" if kept else ""
        row.ours[mode] = f"{len(done)}/{len(result.decisions)}{as_ops}{why}"
    for label, level in (("opt 0", 0), ("default", None)):
        start = time.perf_counter()
        row.theirs[label] = _optimizer(path, model, level, work / f"{path.stem}-ort-{label}.onnx")
        row.seconds[f"ort {label}"] = time.perf_counter() - start
    return row


def _optimizer(path: Path, model: zoo.ZooModel, level: int | None, out: Path) -> str:
    """What the transformers optimizer fuses in ``path``, and its output difference."""
    from onnxruntime.transformers.optimizer import optimize_model

    try:
        with _quiet():
            optimized = optimize_model(
                str(path), model_type=model.ort_type, num_heads=model.num_heads,
                hidden_size=model.hidden_size, opt_level=level,
            )  # fmt: skip
            optimized.save_model_to_file(str(out))
    except Exception as error:
        return f"fails: {_short(error)}"
    graph = onnx.load(str(out), load_external_data=False).graph
    fused = Counter(n.op_type for n in graph.node if n.domain == "com.microsoft")
    fused = {op: n for op, n in fused.items() if op in _FUSED}
    text = ", ".join(f"{n} {op}" for op, n in sorted(fused.items())) or "0"
    try:
        return f"{text} (diff {_difference(path, out):.1g})"
    except Exception as error:  # the optimizer's output may not load
        why = " ".join(str(error).split()).rsplit(":", 1)[-1].strip()
        why = re.sub(r"^[0-9]+ ", "", why)[:80]
        return f"{text}, but onnxruntime cannot load the result ({why})"


def _difference(original: Path, optimized: Path) -> float:
    """Largest difference of the first output on the same random inputs."""
    feeds = random_inputs(load_model(original).model, seed=0)
    runs = []
    for path in (original, optimized):
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        runs.append(session.run(None, feeds)[0])
    return float(np.abs(runs[0].astype(np.float64) - runs[1]).max())


def _short(error: Exception) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:80]}"


@contextlib.contextmanager
def _silent_fds():
    """Send file descriptors 1 and 2 to /dev/null (the legacy exporter prints its whole
    graph from C++ when it fails)."""
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


@contextlib.contextmanager
def _quiet():
    """Silence the exporters' and optimizer's warnings, logs and printed graphs."""
    sink = io.StringIO()
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore")
            with contextlib.redirect_stderr(sink):
                yield
    finally:
        logging.disable(logging.NOTSET)


def run(names: list[str], out: Path) -> list[Row]:
    """Export and compare every model in ``names`` with every exporter that applies."""
    rows = []
    for name in names:
        model = zoo.MODELS[name]
        for exporter in zoo.exporters_for(name):
            row = Row(name, exporter)
            start = time.perf_counter()
            try:
                with _quiet(), _silent_fds():
                    path = zoo.export(name, exporter, out)
            except Exception as error:
                row.error = f"export fails: {_short(error)}"
                rows.append(row)
                continue
            row.seconds["export"] = time.perf_counter() - start
            rows.append(compare_file(path, model, row, out))
    return rows


def markdown(rows: list[Row]) -> str:
    """The comparison table."""
    head = ["model", "exporter", "nodes", "sites", *(f"--to {m}" for m in MODES),
            "ORT optimizer, opt_level=0", "ORT optimizer, default level"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r.error:
            cells = [r.model, r.exporter, r.error] + [""] * (len(head) - 3)
        else:
            sites = f"{r.sites}" + (f" ({r.misses} missed)" if r.misses else "")
            cells = [r.model, r.exporter, str(r.nodes), sites, *(r.ours[m] for m in MODES),
                     r.theirs["opt 0"], r.theirs["default"]]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def timings(rows: list[Row]) -> str:
    """Seconds per step, one line per file."""
    return "\n".join(
        f"{r.model:14} {r.exporter:9} "
        + " ".join(f"{step} {sec:.1f}s" for step, sec in r.seconds.items())
        for r in rows
        if not r.error
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the exported files")
    parser.add_argument("--models", nargs="*", default=None, choices=sorted(zoo.MODELS))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    names = args.models or [n for n in zoo.MODELS if not zoo.MODELS[n].needs_timm]
    if args.models is None and zoo.timm_available():
        names += [n for n in zoo.MODELS if zoo.MODELS[n].needs_timm]
    rows = run(names, args.out)
    print(markdown(rows))
    print()
    print(timings(rows))


if __name__ == "__main__":
    main()
