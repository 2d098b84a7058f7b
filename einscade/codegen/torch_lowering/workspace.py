"""Scratch buffers reused across chunks and calls (one set per thread).

Allocating a fresh score buffer per chunk costs more than the softmax on it: large blocks
come straight from the kernel (page faults on first touch) and arrive cold in the caches.
The executor writes scores, gathered tiles and results into these buffers with ``out=``
and runs the softmax in place. Each thread has its own buffers, so concurrent calls never
share one; :func:`release` frees the calling thread's.

Buffers are allocated outside inference mode even when a call runs inside it: a tensor
created under ``torch.inference_mode()`` is an inference tensor, and a later call outside
inference mode (plain, or under ``torch.no_grad()``) could not write into it. A normal
tensor may be written in both modes.
"""

from __future__ import annotations

import math
import threading

import torch

_LOCAL = threading.local()


def buffer(name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A contiguous ``shape`` view of this thread's buffer ``name`` (grown when needed).

    The contents are garbage; a later request for the same name reuses the memory."""
    store: dict[tuple[str, torch.dtype], torch.Tensor] = _LOCAL.__dict__.setdefault("store", {})
    size = math.prod(shape)
    current = store.get((name, dtype))
    if current is None or current.numel() < size:
        with torch.inference_mode(False):
            current = torch.empty(size, dtype=dtype)
        store[(name, dtype)] = current
    return current[:size].view(shape)


def release() -> None:
    """Free the calling thread's buffers."""
    _LOCAL.__dict__.pop("store", None)
