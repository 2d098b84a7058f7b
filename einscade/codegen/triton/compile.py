"""Build, cache, load and launch generated kernels; compile them ahead of time for a GPU.

``build_kernel`` fuses and tiles a cascade (unless it is tiled already), emits the Triton
source, writes it to a cache folder under a name keyed by the hash of the tiled cascade's
text and the options (Triton reads kernel source from files), and returns a
``GeneratedKernel``: call it with the input tensors by name. CPU tensors run under
Triton's interpreter, CUDA tensors natively.

``compile_for_gpu`` compiles the same source for an NVIDIA architecture (``sm_90a``,
``sm_80``) without a GPU and returns Triton's compiled object; ``report.py`` reads the
registers, spills, shared memory and tensor-core instructions off it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import torch

from einscade.codegen.triton.kernel import KernelSource, emit_kernel, pad
from einscade.codegen.triton.launch import LaunchResult, launch
from einscade.codegen.triton.plan import KernelError
from einscade.compiler import knobs
from einscade.ir import print_cascade
from einscade.ir.cascade import Cascade, Einsum, Iterate
from einscade.ir.expr import Access
from einscade.ir.scope import Scope

FUSE_AND_TILE = "defer-div,online-softmax,tile{{p={p},m={m}}},dce"
_DTYPE_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}
_LOAD_LOCK = threading.Lock()
_MODULES: dict[tuple[Path, bool], ModuleType] = {}


def default_cache_dir() -> Path:
    """Where generated kernel files live: ``EINSCADE_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/einscade/triton``."""
    from einscade.compiler import knobs

    configured = knobs.cache_dir()
    if configured:
        return Path(configured) / "triton"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "einscade" / "triton"


@dataclass(frozen=True)
class BuildOptions:
    """Options that change the generated kernel (all of them are part of its cache key)."""

    block_p: str
    block_m: int
    dtype: str
    num_warps: int = 4
    num_stages: int = 2


@dataclass
class GeneratedKernel:
    """A generated kernel: its tiled cascade, source text, file, and launchers."""

    cascade: Cascade
    source: KernelSource
    options: BuildOptions
    key: str
    path: Path
    cache_dir: Path
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
            source = emit_kernel(self.cascade, dtype=self.options.dtype, dot_upcast=True)
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
        )  # fmt: skip

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
    block_p: int | tuple[int, ...] | str = 64,
    block_m: int = 32,
    dtype: object = "float16",
    num_warps: int = 4,
    num_stages: int = 2,
    cache_dir: str | os.PathLike[str] | None = None,
) -> GeneratedKernel:
    """Generate (or find in the cache) the Triton kernel of ``cascade``.

    ``cascade`` is a frontend cascade (fused with ``defer-div,online-softmax`` and tiled with
    ``tile{p=block_p,m=block_m}`` here), a fused one (only tiled) or a tiled one (kept).
    ``block_p`` is a query-tile size, or a box (``(8, 8)`` or ``"8x8"``) on a grid.
    ``dtype`` is the storage dtype of the float inputs and outputs (fp16, bf16 or fp32).
    """
    options = BuildOptions(_block_spec(block_p), block_m, _dtype_name(dtype), num_warps, num_stages)
    tiled = fuse_and_tile(cascade, block_p, block_m)
    text = print_cascade(tiled)
    key = hashlib.sha256(f"{text}\n{options}".encode()).hexdigest()[:20]
    source = emit_kernel(tiled, dtype=options.dtype)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = _write(folder, source, key)
    _debug(source)
    return GeneratedKernel(tiled, source, options, key, path, folder)


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
    their own ``@jit`` functions must stay compilable for ``compile_for_gpu``."""
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


# -- ahead-of-time compilation -----------------------------------------------------------------

_POINTER_TYPES = {"float16": "*fp16", "bfloat16": "*bf16", "float32": "*fp32"}


def gpu_signature(
    generated: GeneratedKernel, head_dims: dict[str, int], lookup_type: str = "*i64"
) -> tuple[dict[str, str], dict[str, object], dict[tuple[int, ...], list]]:
    """Triton signature, constexprs and divisibility hints for contiguous inputs whose
    innermost stride is 1 (a constexpr) and whose other strides are multiples of 16."""
    source = generated.source
    lookups = _lookups(generated)
    signature: dict[str, str] = {}
    constexprs: dict[str, object] = {}
    attrs: dict[tuple[int, ...], list] = {}
    ranks = _tensor_ranks(generated)
    for index, arg in enumerate(source.args):
        if arg.role == "pointer":
            kind = "*fp32" if source.lse and arg.tensor == source.lse[0] else None
            kind = kind or (lookup_type if arg.tensor in lookups else _POINTER_TYPES[source.dtype])
            signature[arg.name] = kind
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif arg.role == "stride" and arg.dim == len(ranks[arg.tensor]) - 1:
            signature[arg.name], constexprs[arg.name] = "constexpr", 1
        elif arg.role in ("stride", "size"):
            signature[arg.name] = "i32"
            if arg.role == "stride" and all(d % 16 == 0 for d in head_dims.values()):
                attrs[(index,)] = [["tt.divisibility", 16]]
        elif arg.role == "param":
            kind = generated.cascade.param(arg.name).kind  # type: ignore[union-attr]
            signature[arg.name] = "i32" if kind == "int" else "fp32"
        else:
            signature[arg.name] = "constexpr"
            constexprs[arg.name] = _constexpr(arg, head_dims)
    return signature, constexprs, attrs


def _constexpr(arg, head_dims: dict[str, int]) -> int:  # type: ignore[no-untyped-def]
    if arg.role == "constant":
        return arg.value
    symbol = arg.tensor if arg.role == "pad" else arg.name
    if symbol not in head_dims:
        raise KernelError(f"compile_for_gpu needs head_dims[{symbol!r}]")
    return pad(head_dims[symbol]) if arg.role == "pad" else head_dims[symbol]


def _lookups(generated: GeneratedKernel) -> frozenset[str]:
    from einscade.codegen.triton.plan import KernelPlan

    return KernelPlan(generated.cascade).lookups


def _tensor_ranks(generated: GeneratedKernel) -> dict[str, tuple[str, ...]]:
    ranks = {d.name: d.ranks for d in generated.cascade.inputs}
    ranks.update(dict(generated.source.outputs))
    if generated.source.lse is not None:
        ranks[generated.source.lse[0]] = generated.source.lse[1]
    return ranks


def compile_for_gpu(
    generated: GeneratedKernel,
    arch: int = 90,
    *,
    head_dims: dict[str, int] | None = None,
    num_warps: int | None = None,
    num_stages: int | None = None,
):  # type: ignore[no-untyped-def]
    """Compile for ``sm_<arch>`` (90 means sm_90a) without a GPU; returns Triton's
    ``CompiledKernel`` (``.asm`` holds ttir, ttgir, llir, ptx, cubin; ``.metadata`` the
    shared memory and warps). ``head_dims`` binds the head sizes (default 64 each)."""
    import triton
    from triton.backends.compiler import GPUTarget

    heads = {a.name: 64 for a in generated.source.args if a.role == "head"}
    heads |= {a.tensor: 64 for a in generated.source.args if a.role == "pad"}
    heads.update(head_dims or {})
    signature, constexprs, attrs = gpu_signature(generated, heads)
    fn = generated.kernel(interpret=False)
    source = triton.compiler.ASTSource(
        fn=fn, signature=signature, constexprs=constexprs, attrs=attrs
    )
    target = GPUTarget("cuda", arch, 32)
    backend = triton.compiler.make_backend(target)
    options = backend.parse_options({
        "num_warps": num_warps or generated.options.num_warps,
        "num_stages": num_stages or generated.options.num_stages,
    })  # fmt: skip
    return triton.compile(source, target=target, options=options.__dict__)
