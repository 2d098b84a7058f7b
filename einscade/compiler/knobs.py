"""Every environment switch of einscade, in one typed registry (prefix ``EINSCADE_``).

Read them through ``knobs`` at use time, never with ``os.environ`` elsewhere, so that the
list below is the whole story.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Knob:
    name: str
    default: str
    help: str

    def get(self) -> str:
        return os.environ.get(self.name, self.default)


DEBUG = Knob(
    "EINSCADE_DEBUG",
    "0",
    "1: one line per pass (time, changed?); 2: IR after each changing pass; "
    "3: every rewrite and declined match with its reason; 4: generated source",
)
DUMP_DIR = Knob(
    "EINSCADE_DUMP_DIR", "", "write numbered per-pass .ecas files, kernels and a repro script"
)

CACHE_DIR = Knob(
    "EINSCADE_CACHE_DIR", "", "where generated kernels are cached (default: ~/.cache/einscade)"
)

NATIVE = Knob(
    "EINSCADE_NATIVE",
    "1",
    "0: the torch target never uses the native C++ CPU kernel (einscade/codegen/native)",
)

ALL: tuple[Knob, ...] = (DEBUG, DUMP_DIR, CACHE_DIR, NATIVE)


def debug_level() -> int:
    raw = DEBUG.get()
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"EINSCADE_DEBUG must be an integer 0..4, got {raw!r}") from None


def dump_dir() -> str | None:
    return DUMP_DIR.get() or None


def cache_dir() -> str | None:
    return CACHE_DIR.get() or None


def cache_root() -> Path:
    """The root of every on-disk cache: ``EINSCADE_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/einscade`` (``~/.cache/einscade``)."""
    configured = cache_dir()
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "einscade"
