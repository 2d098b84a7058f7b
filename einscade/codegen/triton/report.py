"""What a compiled kernel costs on the GPU, read off Triton's compiled object without a GPU.

Registers and local memory come from the cubin's resource usage (``cuobjdump
--dump-resource-usage``): spilled registers live in local memory and the stack frame, so
both at 0 means no spills. Shared memory and warps come from Triton's metadata, and the
tensor-core instructions from the SASS (the cubin disassembled by the ``cuobjdump`` and
``nvdisasm`` shipped in Triton's wheel): ``HGMMA`` (Hopper warpgroup MMA) and ``HMMA``
(Ampere-style MMA).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass

# Shared memory one block may use, by architecture (bytes; the opt-in maximum).
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
_TENSOR_CORE = re.compile(r"\b(HGMMA|HMMA|IMMA|QGMMA)\b")
_RESOURCES = re.compile(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)")


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

    @property
    def spill_bytes(self) -> int:
        """Stack frame plus local memory per thread: where spilled registers go."""
        return self.stack_bytes + self.local_bytes

    def summary(self) -> str:
        mma = ", ".join(f"{k} x{v}" for k, v in sorted(self.tensor_core.items())) or "none"
        return (
            f"sm_{self.arch}: {self.registers} registers, {self.spill_bytes} B stack+local, "
            f"{self.shared_bytes} B shared, {self.num_warps} warps, tensor cores: {mma}"
        )


def resource_usage(cubin: bytes) -> tuple[int, int, int, int]:
    """(registers, stack bytes, static shared bytes, local bytes) of the cubin's kernel."""
    import triton

    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        command = [triton.knobs.nvidia.cuobjdump.path, "--dump-resource-usage", file.name]
        text = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    found = _RESOURCES.search(text)
    if found is None:
        raise RuntimeError(f"cannot read the resource usage of the cubin:\n{text}")
    registers, stack, shared, local = (int(g) for g in found.groups())
    return registers, stack, shared, local


def tensor_core_ops(sass: str) -> dict[str, int]:
    """Count of tensor-core instructions in a SASS listing, by opcode."""
    return dict(Counter(m.group(1) for m in _TENSOR_CORE.finditer(sass)))


def kernel_report(compiled, arch: int) -> KernelReport:  # type: ignore[no-untyped-def]
    """Registers, local memory, shared memory, warps and tensor-core instructions."""
    registers, stack, _, local = resource_usage(compiled.asm["cubin"])
    return KernelReport(
        arch, registers, stack, local, int(compiled.metadata.shared),
        int(compiled.metadata.num_warps), tensor_core_ops(compiled.asm["sass"]),
    )  # fmt: skip
