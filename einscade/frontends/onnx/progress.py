"""Progress bars (rich) for the slow steps on large models: discovery and validation.

A model is *large* when its graph and functions hold more than :data:`LARGE_NODES` nodes or
its files (model and external data) pass :data:`LARGE_BYTES`. Bars are transient and go to
stderr, so stdout keeps only the report; on a console that is not a terminal rich draws
nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

import onnx_ir as ir
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

LARGE_NODES = 2000
LARGE_BYTES = 200 * 2**20

T = TypeVar("T")


def is_large(model: ir.Model, files: Iterable[Path]) -> bool:
    """More than LARGE_NODES nodes, or more than LARGE_BYTES in ``files``."""
    nodes = len(model.graph) + sum(len(f) for f in model.functions.values())
    if nodes > LARGE_NODES:
        return True
    return sum(os.path.getsize(f) for f in files if Path(f).is_file()) > LARGE_BYTES


class Steps:
    """Reports progress of the steps of one command; silent unless enabled."""

    def __init__(self, enabled: bool, console: Console | None = None):
        self._progress = None
        if enabled:
            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), console=console or Console(stderr=True), transient=True,
            )  # fmt: skip

    def __enter__(self) -> Steps:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()

    def track(self, items: Iterable[T], total: int, description: str) -> Iterator[T]:
        """``items``, advancing a bar of ``total`` steps as they are consumed."""
        if self._progress is None:
            yield from items
            return
        task = self._progress.add_task(description, total=total)
        self._progress.refresh()  # show it now: a short loop may end before the next refresh
        for item in items:
            yield item
            self._progress.advance(task)
        self._progress.remove_task(task)

    def stage(self, description: str, total: int) -> Stage:
        """A bar advanced by hand (``stage.next("what now")``)."""
        return Stage(self._progress, description, total)


class Stage:
    """One bar of named steps: ``stage.step("what now")`` finishes the previous step."""

    def __init__(self, progress: Progress | None, description: str, total: int):
        self._progress, self._description, self._started = progress, description, False
        self._task = None if progress is None else progress.add_task(description, total=total)

    def step(self, what: str) -> None:
        if self._progress is None:
            return
        if self._started:
            self._progress.advance(self._task)
        self._started = True
        self._progress.update(self._task, description=f"{self._description}: {what}")
        self._progress.refresh()  # a step may end before rich's next timed refresh

    def done(self) -> None:
        if self._progress is not None:
            self._progress.remove_task(self._task)


QUIET = Steps(False)
