"""Ahead-of-time compilation of generated kernels for NVIDIA GPUs, without a GPU.

``compile_for_gpu`` compiles a ``GeneratedKernel``'s source for ``sm_90a`` or ``sm_80``
(``triton.compile`` with ``GPUTarget("cuda", arch, 32)``) and returns Triton's compiled
object: ``.asm`` holds ttir, ttgir, llir, ptx and cubin, ``.metadata`` the shared memory and
warps. The signature assumes contiguous inputs (innermost stride 1, a constexpr; other
strides multiples of 16) and int32 block-layout arrays; ``report.py`` reads the registers,
spills, shared memory, tensor-core instructions and load widths off the result.
"""

from __future__ import annotations

from einscade.codegen.triton.compile import GeneratedKernel
from einscade.codegen.triton.kernel import pad
from einscade.codegen.triton.plan import KernelError, KernelPlan

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
        elif arg.role in ("layout", "visits"):
            signature[arg.name] = "*i32"
            attrs[(index,)] = [["tt.divisibility", 16]]
        elif arg.role == "layout_scalar":
            signature[arg.name] = "i32"
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
    shared memory and warps). ``head_dims`` binds the head sizes: by default those the
    kernel's configuration was chosen for (``build_kernel(head_dims=...)``), else 64.
    The tiles were chosen for ``generated.options.arch``: build for the arch you compile."""
    import triton
    from triton.backends.compiler import GPUTarget

    heads = {a.name: 64 for a in generated.source.args if a.role == "head"}
    heads |= {a.tensor: 64 for a in generated.source.args if a.role == "pad"}
    heads.update(dict(generated.options.head_dims))
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
