"""Worker threads that run the executor's chunks side by side.

The chunks of a plan are independent. Run one after another, each operation would split
its work over the intra-op threads and join at its end: on a busy machine every join
waits for the slowest, descheduled thread, once per operation. Workers instead each run
whole chunks with single-threaded operations (ATen releases the GIL inside its kernels),
so a stalled worker holds up nobody until the final join.

A worker makes its operations single-threaded with ``torch.set_num_threads(1)``, which
sets the calling thread's OpenMP and MKL thread counts (both are per thread once a thread
has run parallel work) and a process-wide default for threads that have not; the pool
restores that default once its workers are set up, so other threads keep their setting.
Tasks run under the calling thread's autograd modes (inference mode, grad enabled).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch

Task = Callable[[], None]

_POOLS: dict[int, ThreadPoolExecutor] = {}
_LOCK = threading.Lock()


def run(tasks: list[Task], workers: int) -> None:
    """Run independent tasks: in this thread when ``workers`` <= 1, else on ``workers``
    single-threaded workers, each taking the next task when it is free (a descheduled
    worker leaves the rest to the others); returns when all are done."""
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            task()
        return
    executor = _pool(workers)
    modes = (torch.is_inference_mode_enabled(), torch.is_grad_enabled())
    for future in [executor.submit(_in_modes, task, *modes) for task in tasks]:
        future.result()


def _in_modes(task: Task, inference: bool, grad: bool) -> None:
    """Run ``task`` under the caller's autograd modes, which are per thread: a call under
    ``torch.inference_mode()`` allocates inference tensors (the output) that only code in
    inference mode may write."""
    with torch.inference_mode(inference), torch.set_grad_enabled(grad):
        task()


def _pool(count: int) -> ThreadPoolExecutor:
    with _LOCK:
        if count not in _POOLS:
            _POOLS[count] = _start(count)
        return _POOLS[count]


def _start(count: int) -> ThreadPoolExecutor:
    """A pool of ``count`` threads, each made single-threaded before its first task."""
    default = torch.get_num_threads()
    ready = threading.Barrier(count + 1)
    executor = ThreadPoolExecutor(count, thread_name_prefix="einscade-torch")

    def single_threaded() -> None:
        torch.get_num_threads()  # ATen's lazy per-thread setup first, or it would undo ours
        torch.set_num_threads(1)
        ready.wait()  # each worker blocks here, so every submit starts a new thread

    started = [executor.submit(single_threaded) for _ in range(count)]
    ready.wait()
    for future in started:
        future.result()
    torch.set_num_threads(default)  # the process-wide default for other threads
    return executor
