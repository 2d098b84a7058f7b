"""Triton kernels generated from fused, tiled cascades.

The input is a cascade after ``defer-div,online-softmax,tile{p=P0,m=M0},dce``. The kernel
body is not a template: every IR statement is lowered on its own, and every group of
generated lines is preceded by a comment quoting the statement it implements. A new map
function, normaliser or predicate needs no new kernel code.

How the cascade maps onto the kernel (``plan.py`` finds the roles from the statements):

==================================  =====================================================
IR                                  Triton
==================================  =====================================================
query tile rank ``p1``              ``tl.program_id(0)``
batch ranks ``b, h``                ``tl.program_id(1)``, unflattened row-major
rows ``p0``, key columns ``m0``     ``tl.arange(0, P0)``, ``tl.arange(0, M0)``
head axes ``e, f``                  ``tl.arange(0, E_PAD)``, masked by ``e < E``
``iterate m1 { ... }``              ``for m1 in range(0, M1):`` (``schedule.py``)
``T[0, ...] = v`` / ``T[m1 + 1]``   loop-carried ``T`` / ``T_next``, then ``T = T_next``
statements before / after the loop  prologue / epilogue
loop-invariant work                 hoisted into the prologue (the Q tile load)
``X[idx...]`` of an input           ``tl.load(base + sum(idx * stride), mask=..., other=0)``
``A[x, r] * B[r, y] :: sum(r)``     ``tl.dot(A, B)`` (fp32 accumulation)
other reductions                    ``tl.reduce`` with ``max``/``sum``/``min`` combine
absent points (masks, tails)        the reduction's identity via ``tl.where``
``AV[.., p, ..] = AVT[.., p1, p0]`` ``tl.store`` at each row's query position
running max and sum of a softmax    an extra output: the rows' log-sum-exp
==================================  =====================================================

An IR loop (causal attention, after the passes)::

    iterate m1 {
      RGM[0, b, h, p1, p0] = -inf
      ...
      QK[b, h, m1, m0, p1, p0] = Q[b, h, p1 * P0 + p0, e] * K[b, h, m1 * M0 + m0, e]
                                 :: sum(e) if m1 * M0 + m0 <= p1 * P0 + p0
      S[b, h, m1, m0, p1, p0] = QK[b, h, m1, m0, p1, p0] * scale
      LGM[m1, b, h, p1, p0] = S[b, h, m1, m0, p1, p0] :: max(m0)
      RGM[m1 + 1, b, h, p1, p0] = max(RGM[m1, b, h, p1, p0], LGM[m1, b, h, p1, p0])
      ...
    }

becomes (comments abridged)::

    # RGM[0, b, h, p1, p0] = -inf
    RGM = tl.full([P0], float("-inf"), tl.float32)
    # QK[...] = Q[...] * K[...] :: sum(e) if ...  (loop-invariant part)
    Q_base = Q_ptr + b.to(tl.int64) * Q_stride_b + h.to(tl.int64) * Q_stride_h
    in_P = p1 * P0 + p0 < P
    in_E = e < E
    Q_tile = tl.load(Q_base + (p1 * P0 + p0)[:, None] * Q_stride_p + e[None, :] * Q_stride_e,
                     mask=in_P[:, None] & in_E[None, :], other=0.0)
    for m1 in range(0, M1):
        # QK[...] = Q[...] * K[...] :: sum(e) if ...
        in_M = m1 * M0 + m0 < M
        K_tile = tl.load(K_base + (m1 * M0 + m0)[:, None] * K_stride_m + e[None, :] * K_stride_e,
                         mask=in_M[:, None] & in_E[None, :], other=0.0)
        QK = tl.dot(Q_tile, tl.trans(K_tile))
        # S[...] = QK[...] * scale
        S = QK * scale
        # LGM[m1, b, h, p1, p0] = S[b, h, m1, m0, p1, p0] :: max(m0)
        QK_mask = (m1 * M0 + m0)[None, :] <= (p1 * P0 + p0)[:, None]
        LGM_fiber = in_M[None, :] & QK_mask
        S_masked = tl.where(LGM_fiber, S, float("-inf"))
        LGM = tl.reduce(S_masked, 1, _elementwise_max)
        # RGM[m1 + 1, b, h, p1, p0] = max(RGM[m1, b, h, p1, p0], LGM[m1, b, h, p1, p0])
        RGM_next = tl.maximum(RGM, LGM)
        ...
        RGM = RGM_next

The block layout of the mask drives the loop (``schedule.py``, ``layout.py``,
``sparsity.py``): each query tile visits only the key tiles its layout lists, partial ones
with the element mask and full ones through a second copy of the body without it; empty
tiles are never visited. Key tiles are 1-D ranges of ``M0`` tokens, or on a 2-D / 3-D key
grid chunks of ``M0`` keys of each query tile's key box. A row that visits no key gets
output 0 and log-sum-exp -inf.

Tiles, warps and stages come from one table (``config.py``, ``choose_config``), by head
dims (16 to 256, unequal QK and V ones), dtype and architecture; they are part of the
kernel's cache key.

Entry points: ``build_kernel`` (source, cached file, launcher; CPU tensors run under
Triton's interpreter), ``compile_for_gpu`` (ahead-of-time PTX and cubin for sm_90a/sm_80)
and ``kernel_report`` (registers, spills, shared memory, tensor-core instructions, load
widths; ``einscade kernel-report`` on the command line).
"""

from einscade.codegen.triton.aot import compile_for_gpu
from einscade.codegen.triton.compile import BuildOptions, GeneratedKernel, build_kernel
from einscade.codegen.triton.config import KernelConfig, choose_config
from einscade.codegen.triton.kernel import KernelArg, KernelSource, emit_kernel
from einscade.codegen.triton.launch import LaunchResult
from einscade.codegen.triton.layout import LayoutArrays, LayoutSource
from einscade.codegen.triton.plan import KernelError
from einscade.codegen.triton.report import KernelReport, kernel_report

__all__ = [
    "BuildOptions",
    "GeneratedKernel",
    "KernelArg",
    "KernelConfig",
    "KernelError",
    "KernelReport",
    "KernelSource",
    "LaunchResult",
    "LayoutArrays",
    "LayoutSource",
    "build_kernel",
    "choose_config",
    "compile_for_gpu",
    "emit_kernel",
    "kernel_report",
]
