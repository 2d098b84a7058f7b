"""What a compiled kernel costs on the GPU, read off Triton's compiled object without a GPU.

Registers and local memory come from the cubin's resource usage (``cuobjdump
--dump-resource-usage``): spilled registers live in local memory and the stack frame, so
both at 0 means no spills. Shared memory and warps come from Triton's metadata. The SASS
(the cubin disassembled by the ``cuobjdump`` shipped in Triton's wheel) gives the
tensor-core instructions, ``HGMMA`` (Hopper warpgroup MMA) and ``HMMA`` (Ampere-style MMA),
and the width of each global load: ``LDG.E.128`` (into registers) and
``LDGSTS.E.BYPASS.128`` (``cp.async`` into shared memory) move 128 bits per thread, a bare
``LDG.E`` 32 bits. Wide loads are the vectorized tile loads; 32-bit ones are scalars such
as a block layout's tile indices.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from einscade.codegen.triton.config import KernelConfig

# Shared memory one block may use, by architecture (bytes; the opt-in maximum).
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
_TENSOR_CORE = re.compile(r"\b(HGMMA|HMMA|IMMA|QGMMA)\b")
_RESOURCES = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")
# Global loads into registers (LDG) or asynchronously into shared memory (LDGSTS); not
# LDGDEPBAR, which only waits for them.
_GLOBAL_LOAD = re.compile(r"\b(LDGSTS|LDG)((?:\.[A-Z0-9_]+)*)(?![A-Z0-9_])")
_WIDTH_SUFFIX = {".128": 128, ".64": 64, ".U16": 16, ".S16": 16, ".U8": 8, ".S8": 8}


@dataclass(frozen=True)
class KernelReport:
    """Resource use of one compiled kernel."""

    arch: int
    registers: int
    stack_bytes: int
    local_bytes: int
    shared_bytes: int
    num_warps: int
    tensor_core: dict[str, int]  # SASS opcode -> count
    global_loads: dict[int, int] = field(default_factory=dict)  # bits per thread -> count
    config: str = ""  # the kernel's configuration and why (``KernelConfig.summary``)

    @property
    def spill_bytes(self) -> int:
        """Stack frame plus local memory per thread: where spilled registers go."""
        return self.stack_bytes + self.local_bytes

    @property
    def widest_load(self) -> int:
        """Bits per thread of the widest global load (0 if none)."""
        return max(self.global_loads, default=0)

    def loads_summary(self) -> str:
        """``128b x24, 32b x8``: global loads by width, widest first."""
        widths = sorted(self.global_loads.items(), reverse=True)
        return ", ".join(f"{bits}b x{count}" for bits, count in widths) or "none"

    def summary(self) -> str:
        mma = ", ".join(f"{k} x{v}" for k, v in sorted(self.tensor_core.items())) or "none"
        return (
            f"sm_{self.arch}: {self.registers} registers, {self.spill_bytes} B stack+local, "
            f"{self.shared_bytes} B shared, {self.num_warps} warps, tensor cores: {mma}, "
            f"global loads: {self.loads_summary()}"
            + (f"; config {self.config}" if self.config else "")
        )


def _cuobjdump(cubin: bytes, *options: str) -> str:
    """Run the wheel's ``cuobjdump`` on a cubin; its stderr (disassembler notes) is kept out
    of the user's terminal and only shown if it fails."""
    import triton

    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        command = [triton.knobs.nvidia.cuobjdump.path, *options, file.name]
        done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"cuobjdump {' '.join(options)} failed:\n{done.stderr}")
    return done.stdout


def resource_usage(cubin: bytes) -> tuple[int, int, int, int]:
    """(registers, stack bytes, static shared bytes, local bytes) of the cubin's kernel."""
    text = _cuobjdump(cubin, "--dump-resource-usage")
    found = _RESOURCES.search(text)
    if found is None:
        raise RuntimeError(f"cannot read the resource usage of the cubin:\n{text}")
    registers, stack, shared, local = (int(g) for g in found.groups())
    return registers, stack, shared, local


def sass(cubin: bytes) -> str:
    """The cubin's SASS listing."""
    return _cuobjdump(cubin, "-sass")


def tensor_core_ops(listing: str) -> dict[str, int]:
    """Count of tensor-core instructions in a SASS listing, by opcode."""
    return dict(Counter(m.group(1) for m in _TENSOR_CORE.finditer(listing)))


def global_load_widths(listing: str) -> dict[int, int]:
    """Count of global loads in a SASS listing by bits per thread (``LDG.E.128`` -> 128)."""
    widths: Counter[int] = Counter()
    for match in _GLOBAL_LOAD.finditer(listing):
        suffixes = re.findall(r"\.[A-Z0-9_]+", match.group(2))
        bits = [_WIDTH_SUFFIX[s] for s in suffixes if s in _WIDTH_SUFFIX]
        widths[bits[-1] if bits else 32] += 1
    return dict(widths)


def kernel_report(  # type: ignore[no-untyped-def]
    compiled, arch: int, config: KernelConfig | None = None
) -> KernelReport:
    """Registers, local memory, shared memory, warps, tensor-core instructions and the
    widths of global loads; ``config`` (a ``KernelConfig``, e.g. ``kernel.options.config``)
    is carried into the summary."""
    cubin = compiled.asm["cubin"]
    registers, stack, _, local = resource_usage(cubin)
    listing = sass(cubin)
    return KernelReport(
        arch, registers, stack, local, int(compiled.metadata.shared),
        int(compiled.metadata.num_warps), tensor_core_ops(listing), global_load_widths(listing),
        config.summary() if config is not None else "",
    )  # fmt: skip
