"""``python -m einscade.codegen.native [--force]``: build the native kernel into the cache."""

from __future__ import annotations

import sys
import time

from einscade.codegen.native.library import build


def main(argv: list[str]) -> int:
    began = time.perf_counter()
    try:
        path = build(force="--force" in argv)
    except RuntimeError as why:
        print(f"einscade native kernel not built (the torch target will not use it): {why}")
        return 0  # not fatal: the torch lowering falls back to its matmul kernel
    print(f"einscade native kernel: {path} ({time.perf_counter() - began:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
