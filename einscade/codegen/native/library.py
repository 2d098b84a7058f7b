"""Build, cache and load the native CPU attention kernel (``attend.cpp``).

The kernel is plain C++ (no torch headers: it compiles in about two seconds) built with
the system's C++ compiler for this machine's CPU (``-march=native``) into the einscade
cache (``<cache root>/native``, see :func:`einscade.compiler.knobs.cache_root`), keyed by a
hash of the source, the flags, the compiler's version and the CPU's feature flags.
``make venv`` builds it ahead of time (``python -m einscade.codegen.native``) so that no
first call pays for it; a missing build is made on first use. Where there is no compiler,
or the build fails, :func:`load` returns None with the reason in
:func:`unavailable_reason`, and the torch lowering runs its matmul kernel instead.
``EINSCADE_NATIVE=0`` turns the kernel off.

The library is loaded with ctypes, which releases the GIL for the call. The kernel runs
its work items on torch's OpenMP thread pool: threads of its own would compete for the
cores with torch's workers, which spin for a while after every torch op (measured: the 2-D
bench row took 2x as long right after an SDPA call with its own threads, 1.2x with torch's).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from einscade.compiler import knobs

SOURCE = Path(__file__).with_name("attend.cpp")
# -fopenmp: the kernel's threads are torch's OpenMP workers (the process has loaded torch's
# libgomp.so.1 already, and the kernel's libgomp.so.1 resolves to it): one thread pool.
FLAGS = ("-O3", "-march=native", "-std=gnu++17", "-ffp-contract=fast", "-fno-math-errno",
         "-fPIC", "-shared", "-pthread", "-fopenmp")  # fmt: skip
_LOCK = threading.Lock()
_STATE: dict[str, object] = {}


class Problem(ctypes.Structure):
    _fields_ = [  # noqa: RUF012 (ctypes layout)
        ("q", ctypes.c_void_p), ("k", ctypes.c_void_p), ("v", ctypes.c_void_p),
        ("out", ctypes.c_void_p), ("kv_heads", ctypes.c_int64), ("heads", ctypes.c_int64),
        ("queries", ctypes.c_int64), ("keys", ctypes.c_int64), ("qk_dim", ctypes.c_int64),
        ("v_dim", ctypes.c_int64),
    ]  # fmt: skip


class Group(ctypes.Structure):
    _fields_ = [  # noqa: RUF012 (ctypes layout)
        ("query_tokens", ctypes.c_void_p), ("key_tokens", ctypes.c_void_p),
        ("allowed", ctypes.c_void_p), ("tiles", ctypes.c_int64),
        ("tile_queries", ctypes.c_int64), ("tile_keys", ctypes.c_int64),
        ("mask_tiles", ctypes.c_int64), ("mask_from", ctypes.c_int64),
    ]  # fmt: skip


def compiler() -> str | None:
    """The C++ compiler used (``CXX``, else ``g++``, else ``c++``), or None."""
    for name in (os.environ.get("CXX"), "g++", "c++"):
        if name and shutil.which(name):
            return name
    return None


def library_path(cxx: str, flags: tuple[str, ...] = FLAGS) -> Path:
    """Where the build for this source, flags, compiler and CPU lives."""
    digest = hashlib.blake2b(digest_size=12)
    digest.update(SOURCE.read_bytes())
    digest.update(" ".join(flags).encode())
    digest.update(_version(cxx).encode())
    digest.update(platform.machine().encode())
    digest.update(_cpu_flags().encode())
    return knobs.cache_root() / "native" / digest.hexdigest() / "libeinscade_attend.so"


def build(force: bool = False, flags: tuple[str, ...] = FLAGS) -> Path:
    """Compile the kernel into the cache (atomically: concurrent builds are safe).
    ``flags`` other than :data:`FLAGS` build variants (tests build the AVX2 one)."""
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX, or install g++)")
    target = library_path(cxx, flags)
    if target.exists() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".so", delete=False) as tmp:
        partial = Path(tmp.name)
    command = [cxx, *flags, str(SOURCE), "-o", str(partial)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr.strip()}")
    os.replace(partial, target)
    return target


def load() -> ctypes.CDLL | None:
    """The loaded kernel library (built on first use if needed), or None when it is
    turned off or cannot be built (see :func:`unavailable_reason`)."""
    with _LOCK:
        if "library" not in _STATE:
            _STATE["library"], _STATE["reason"] = _load()
        return _STATE["library"]  # type: ignore[return-value]


def unavailable_reason() -> str:
    """Why :func:`load` returns None ("" when the kernel is available)."""
    load()
    return str(_STATE["reason"])


def _load() -> tuple[ctypes.CDLL | None, str]:
    if knobs.NATIVE.get() == "0":
        return None, "EINSCADE_NATIVE=0"
    try:
        return open_library(build()), ""
    except (RuntimeError, OSError) as why:
        return None, f"native kernel unavailable: {why}"


def open_library(path: Path) -> ctypes.CDLL:
    """Load a built kernel and declare its entry point's signature."""
    library = ctypes.CDLL(str(path))
    function = library.einscade_attend
    function.restype = ctypes.c_int
    function.argtypes = [ctypes.POINTER(Problem), ctypes.POINTER(Group), ctypes.c_int64,
                         ctypes.c_float, ctypes.c_int64]  # fmt: skip
    return library


def _version(cxx: str) -> str:
    result = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False)
    return result.stdout.splitlines()[0] if result.stdout else cxx


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()
