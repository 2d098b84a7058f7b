"""Build, cache, load and launch generated kernels; compile them ahead of time for a GPU.

``build_kernel`` fuses and tiles a cascade (unless it is tiled already), emits the Triton
source, writes it to a cache folder under a name keyed by the hash of the tiled cascade's
text and the options (Triton reads kernel source from files), and returns a
``GeneratedKernel``: call it with the input tensors by name. CPU tensors run under
Triton's interpreter, CUDA tensors natively.

``aot.py`` compiles the same source for an NVIDIA GPU without one; ``report.py`` reads
what the compiled kernel costs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import math
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch

from einscade.codegen.bind import bind
from einscade.codegen.triton.config import KernelConfig, choose_config
from einscade.codegen.triton.kernel import KernelSource, emit_kernel
from einscade.codegen.triton.launch import LaunchResult, launch
from einscade.codegen.triton.layout import KEY_MODES, LayoutArrays, LayoutSource, layout_source
from einscade.codegen.triton.plan import KernelError, KernelPlan
from einscade.codegen.triton.sparsity import sparse_loop
from einscade.compiler import knobs
from einscade.ir import print_cascade
from einscade.ir.cascade import Cascade, Einsum, Iterate
from einscade.ir.expr import Access
from einscade.ir.scope import Scope

FUSE_AND_TILE = "defer-div,online-softmax,tile{{p={p},m={m}}},dce"
SCHEDULES = ("auto", "block_sparse", "dense")
_DTYPE_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}
_LOAD_LOCK = threading.Lock()
_MODULES: dict[tuple[Path, bool], ModuleType] = {}


def default_cache_dir() -> Path:
    """Where generated kernel files live: ``<cache root>/triton`` (see
    :func:`einscade.compiler.knobs.cache_root`)."""
    from einscade.compiler import knobs

    return knobs.cache_root() / "triton"


@dataclass(frozen=True)
class BuildOptions:
    """Options that change the generated kernel (all of them are part of its cache key)."""

    block_p: str
    block_m: int
    dtype: str
    num_warps: int = 4
    num_stages: int = 2
    schedule: str = "dense"  # or "block_sparse" (resolved from build_kernel's "auto")
    count_visits: bool = False
    key_mode: str = "grid"  # block-sparse key tiles: "grid" (1-D) or "box" (chunks of boxes)
    arch: int = 90  # the architecture the configuration was chosen for (config.py)
    head_dims: tuple[tuple[str, int], ...] = ()  # head sizes it was chosen for (E, F, ...)
    why: str = "given"  # why config.py chose the tiles, warps and stages

    @property
    def config(self) -> KernelConfig:
        """The kernel configuration: tiles, warps, stages and why."""
        return KernelConfig(self.block_p, self.block_m, self.num_warps, self.num_stages, self.why)


@dataclass
class GeneratedKernel:
    """A generated kernel: its tiled cascade, source text, file, and launchers."""

    cascade: Cascade
    source: KernelSource
    options: BuildOptions
    key: str
    path: Path
    cache_dir: Path
    layout: LayoutSource | None = None  # the block layout of a block-sparse kernel
    _variants: dict[bool, tuple[KernelSource, Path]] = field(default_factory=dict, repr=False)

    @property
    def text(self) -> str:
        return self.source.text

    def variant(self, interpret: bool) -> tuple[KernelSource, Path]:
        """The source to run: the interpreter multiplies bf16 blocks wrongly, so under it
        bf16 ``tl.dot`` operands are widened to fp32 (exact: bf16 values are fp32 values)."""
        if not (interpret and self.options.dtype == "bfloat16"):
            return self.source, self.path
        if interpret not in self._variants:
            source = _emit(self.cascade, self.options, self.layout, dot_upcast=True)
            path = _write(self.cache_dir, source, self.key + "-interpret")
            self._variants[interpret] = (source, path)
        return self._variants[interpret]

    def kernel(self, interpret: bool = False):  # type: ignore[no-untyped-def]
        """The kernel function: a ``JITFunction``, or an interpreted one for CPU tensors."""
        source, path = self.variant(interpret)
        return getattr(_load(path, interpret), source.name)

    def run(self, **arguments: object) -> LaunchResult:
        """Launch on the inputs (tensors by name, params and free sizes as keywords)."""
        tensors = [v for v in arguments.values() if isinstance(v, torch.Tensor)]
        if not tensors:
            raise KernelError("no input tensors given")
        interpret = tensors[0].device.type != "cuda"
        source, _ = self.variant(interpret)
        return launch(
            self.kernel(interpret), source, self.cascade, dict(arguments),
            num_warps=self.options.num_warps, num_stages=self.options.num_stages,
            layout=self.layout,
        )  # fmt: skip

    def layout_arrays(self, **arguments: object) -> LayoutArrays:
        """The block layout a launch on these arguments reads (block-sparse kernels)."""
        if self.layout is None:
            raise KernelError(f"{self.source.name} visits every key tile: it has no layout")
        tensors = {k: v for k, v in arguments.items() if isinstance(v, torch.Tensor)}
        scalars = {k: v for k, v in arguments.items() if not isinstance(v, torch.Tensor)}
        binding = bind(self.cascade, tensors, scalars)
        device = next(iter(tensors.values())).device
        return self.layout.arrays(binding.sizes, binding.params, tensors, device)

    def __call__(self, **arguments: object):  # type: ignore[no-untyped-def]
        """The output tensor (a tuple if the cascade has several), like ``reference``."""
        outputs = tuple(self.run(**arguments).outputs.values())
        return outputs[0] if len(outputs) == 1 else outputs


def _dtype_name(dtype: object) -> str:
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPE_NAMES:
            raise KernelError(f"unsupported dtype {dtype}; use fp16, bf16 or fp32")
        return _DTYPE_NAMES[dtype]
    return str(dtype)


def _block_spec(block_p: object) -> str:
    if isinstance(block_p, tuple | list):
        return "x".join(str(int(b)) for b in block_p)
    return str(block_p)


def fuse_and_tile(cascade: Cascade, block_p: object, block_m: int) -> Cascade:
    """The cascade fused to one pass and tiled; a cascade that has its key loop already is
    only tiled, one whose outputs are already untiled from query tiles is kept as is."""
    from einscade.compiler.pipeline import run_pipeline

    spec = FUSE_AND_TILE.format(p=_block_spec(block_p), m=block_m)
    if any(isinstance(s, Iterate) for s in cascade.body):
        if _query_tiled(cascade):
            return cascade
        spec = spec[spec.index("tile{") :]
    return run_pipeline(cascade, spec, dump_dir="").cascade


def _query_tiled(cascade: Cascade) -> bool:
    """Whether every output is an untile read of a tensor with one more rank."""
    scope = Scope(cascade)
    defs = {s.target: s for s in cascade.body if isinstance(s, Einsum)}
    for output in cascade.outputs:
        stmt = defs.get(output)
        if stmt is None or not isinstance(stmt.value, Access):
            return False
        source = scope.tensors.get(stmt.value.tensor)
        if source is None or len(source.ranks) != len(stmt.indices) + 1:
            return False
    return True


def build_kernel(
    cascade: Cascade,
    *,
    block_p: int | tuple[int, ...] | str | None = None,
    block_m: int | None = None,
    dtype: object = "float16",
    num_warps: int | None = None,
    num_stages: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    schedule: str = "auto",
    count_visits: bool = False,
    key_mode: str = "auto",
    head_dims: dict[str, int] | None = None,
    arch: int | None = None,
) -> GeneratedKernel:
    """Generate (or find in the cache) the Triton kernel of ``cascade``.

    ``cascade`` is a frontend cascade (fused with ``defer-div,online-softmax`` and tiled with
    ``tile{p=block_p,m=block_m}`` here), a fused one (only tiled) or a tiled one (kept).
    ``block_p`` is a query-tile size, or a box (``(8, 8)`` or ``"8x8"``) on a grid.
    ``dtype`` is the storage dtype of the float inputs and outputs (fp16, bf16 or fp32).
    ``schedule``: ``"block_sparse"`` visits the key tiles of the mask's block layout only
    (partial ones with the mask, full ones without), ``"dense"`` every tile with the mask;
    ``"auto"`` is block-sparse for a masked cascade whose loop allows it (``sparsity.py``).
    ``key_mode`` of a block-sparse kernel: ``"grid"`` visits 1-D key tiles of ``block_m``
    tokens, ``"box"`` chunks of ``block_m`` keys of each query tile's key box on the key
    grid (``layout.py``); ``"auto"`` takes boxes on a key grid of 2 or 3 axes.
    ``count_visits`` adds a debug output: the key tiles each program visited.
    ``block_p``, ``block_m``, ``num_warps`` and ``num_stages`` left out come from
    ``config.choose_config`` for ``head_dims`` (head sizes by symbol, ``{"E": 192, "F":
    128}``; 64 each if not given), the dtype and ``arch`` (the current CUDA device's, else
    90); ``GeneratedKernel.options.config`` tells what was chosen and why.
    """
    if schedule not in SCHEDULES:
        raise KernelError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if key_mode not in ("auto", *KEY_MODES):
        raise KernelError(f"key_mode must be auto, grid or box, got {key_mode!r}")
    dtype_name = _dtype_name(dtype)
    target = default_arch() if arch is None else arch
    heads = tuple(sorted((head_dims or {}).items()))
    given = {"block_p": block_p, "block_m": block_m, "num_warps": num_warps,
             "num_stages": num_stages}  # fmt: skip
    given = {k: v for k, v in given.items() if v is not None}
    if len(given) == 4:
        config = KernelConfig(_block_spec(block_p), block_m, num_warps, num_stages)  # type: ignore[arg-type]
    else:
        chosen = choose_config(
            tuple(v for _, v in heads), dtype_name, target,
            query_axes=_grid_axes(cascade, "p"), box_keys=_box_keys(cascade, schedule, key_mode),
        )  # fmt: skip
        config = _override(chosen, given)
    tiled = fuse_and_tile(cascade, config.block_p, config.block_m)
    layout = _layout(cascade, tiled, config.block_p, config.block_m, schedule, key_mode)
    options = BuildOptions(
        config.block_p, config.block_m, dtype_name, config.num_warps, config.num_stages,
        "dense" if layout is None else "block_sparse", count_visits,
        "grid" if layout is None else layout.key_mode, target, heads, config.why,
    )  # fmt: skip
    text = print_cascade(tiled)
    key = hashlib.sha256(f"{text}\n{options}".encode()).hexdigest()[:20]
    source = _emit(tiled, options, layout)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = _write(folder, source, key)
    _debug(source)
    return GeneratedKernel(tiled, source, options, key, path, folder, layout)


def default_arch() -> int:
    """The architecture configurations are chosen for: the current CUDA device's compute
    capability (``sm_86`` -> 86), else 90 (sm_90a)."""
    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return 10 * major + minor
    return 90


def _grid_axes(cascade: Cascade, rank: str) -> int:
    """Axes of the grid of ``rank`` (1 where it is a plain sequence)."""
    return len(Scope(cascade).grids.get(rank, (rank,)))


def _box_keys(cascade: Cascade, schedule: str, key_mode: str) -> bool:
    """Whether the kernel will likely read key boxes (``_layout`` decides for sure)."""
    if schedule == "dense" or key_mode == "grid":
        return False
    return key_mode == "box" or _grid_axes(cascade, "m") > 1


def _override(chosen: KernelConfig, given: dict[str, object]) -> KernelConfig:
    """The chosen configuration with the caller's values in place of its own."""
    if not given:
        return chosen
    values = {k: v for k, v in given.items()}
    if "block_p" in values:
        values["block_p"] = _block_spec(values["block_p"])
    why = f"given: {', '.join(sorted(given))}; else {chosen.why}"
    return dataclasses.replace(chosen, **values, why=why)  # type: ignore[arg-type]


def _emit(
    tiled: Cascade, options: BuildOptions, layout: LayoutSource | None, dot_upcast: bool = False
) -> KernelSource:
    return emit_kernel(
        tiled, dtype=options.dtype, dot_upcast=dot_upcast, count_visits=options.count_visits,
        layout_ranks=None if layout is None else layout.ranks, key_mode=options.key_mode,
        key_axes=1 if layout is None else layout.key_axes,
    )  # fmt: skip


def _layout(
    cascade: Cascade, tiled: Cascade, block_p: str, block_m: int, schedule: str, key_mode: str
) -> LayoutSource | None:
    """The layout source of a block-sparse kernel; None for a dense one. ``"auto"`` falls
    back to dense where the loop or the mask does not allow block sparsity, and for a
    cascade without a mask."""
    if schedule == "dense":
        return None
    try:
        plan = KernelPlan(tiled)
        loop = sparse_loop(plan)
        query_tile = tuple(int(extent) for extent in block_p.split("x"))
        if math.prod(query_tile) != plan.block_size(plan.row_rank) or block_m != (
            plan.block_size(plan.key_rank)
        ):
            raise KernelError(
                f"@{cascade.name} is tiled already with other tiles than "
                f"block_p={block_p}, block_m={block_m}: no block layout for it"
            )
        query = plan.stores[0].query
        source = layout_source(cascade, query, loop.key, plan.batch, query_tile, block_m)
        if key_mode == "box" or (key_mode == "auto" and source.key_axes > 1):
            source = layout_source(cascade, query, loop.key, plan.batch, query_tile, block_m, "box")
    except KernelError:
        if schedule == "block_sparse":
            raise
        return None
    if schedule == "auto" and source.mask.predicate is None:
        return None
    return source


def _write(folder: Path, source: KernelSource, key: str) -> Path:
    """Write the source under its key (atomically; rewritten only if it changed)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{source.name}_{key}.py"
    if not path.exists() or path.read_text() != source.text:
        scratch = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        scratch.write_text(source.text)
        scratch.replace(path)
    dump = knobs.dump_dir()
    if dump is not None:
        Path(dump).mkdir(parents=True, exist_ok=True)
        (Path(dump) / f"kernel-{source.name}-{key}.py").write_text(source.text)
    return path


def _debug(source: KernelSource) -> None:
    if knobs.debug_level() >= 4:
        sys.stderr.write(f"[einscade] generated kernel {source.name}:\n{source.text}")


def _import_triton() -> None:
    """Import Triton, its language and its lazily imported parts with the interpreter off:
    their own ``@jit`` functions must stay compilable for ``aot.compile_for_gpu``."""
    import triton.experimental.gluon  # noqa: F401  (imported lazily by launches otherwise)
    import triton.language  # noqa: F401


def _load(path: Path, interpret: bool) -> ModuleType:
    """Import a kernel file; ``@triton.jit`` makes interpreted functions iff
    ``TRITON_INTERPRET`` is set while the module runs, so it is set just for that."""
    key = (path, interpret)
    _import_triton()
    with _LOAD_LOCK:
        if key in _MODULES:
            return _MODULES[key]
        name = f"einscade_kernels.{path.stem}{'_interpreted' if interpret else ''}"
        saved = os.environ.get("TRITON_INTERPRET")
        os.environ["TRITON_INTERPRET"] = "1" if interpret else "0"
        try:
            spec = importlib.util.spec_from_file_location(name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        finally:
            if saved is None:
                del os.environ["TRITON_INTERPRET"]
            else:
                os.environ["TRITON_INTERPRET"] = saved
        _MODULES[key] = module
        return module
