"""Run passes by spec string, verify after each one, and show or dump what happened.

    result = run_pipeline(cascade, "dce,tile{p=128,m=64}")
    result.cascade                     # the final cascade
    [r.name for r in result.records]   # one record per pass: time, changed?, notes, IR after

After every pass that changed the cascade, its IR is printed, parsed back and verified, so a
broken pass fails at once with ``pass 'tile' failed (after 'dce') on: <IR>``.

``EINSCADE_DEBUG`` (or ``debug=``) prints to stderr: 1 one line per pass, 2 the IR after each
changing pass (and the input), 3 every note (rewrites and declined matches with reasons).
``EINSCADE_DUMP_DIR`` (or ``dump_dir=``; ``""`` turns it off) writes ``00-input.ecas``,
``01-<pass>.ecas``, ... and ``repro.py``, a script that re-runs the pipeline on the input
and checks it reproduces the last dump: the folder is a self-contained bug report.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import einscade.passes  # noqa: F401  (registers every pass; read through REGISTRY at call time)
from einscade.compiler import knobs
from einscade.ir import parse, print_cascade, verify
from einscade.ir.cascade import Cascade
from einscade.ir.errors import EinscadeError, LocatedError, SourceLoc
from einscade.passes.base import REGISTRY, Note, Pass, PassResult

# -- spec strings ------------------------------------------------------------------------------

_PASS_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_OPTION_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPTION_VALUE = re.compile(r"[^,{}=\s]+")


# What `einscade opt` and the compiler run when no pipeline is given: reassociate linear
# attention, chunk its recurrence, fuse softmax stages to one pass, drop what is unread.
# chunk-linear runs before online-softmax so that it only sees the builders' recurrences.
DEFAULT_PIPELINE = "defer-div,associate,chunk-linear,online-softmax,dce"


class _SpecReader:
    """Reads ``name{key=value,...},name,...``; errors point at a column of the spec."""

    def __init__(self, spec: str):
        self.spec = spec
        self.pos = 0

    def error(self, message: str, pos: int | None = None) -> LocatedError:
        col = (self.pos if pos is None else pos) + 1
        return LocatedError(message, SourceLoc("<pipeline>", 1, col), self.spec)

    def peek(self) -> str:
        while self.pos < len(self.spec) and self.spec[self.pos].isspace():
            self.pos += 1
        return self.spec[self.pos] if self.pos < len(self.spec) else ""

    def describe(self) -> str:
        char = self.peek()
        return repr(char) if char else "end of pipeline"

    def take(self, pattern: re.Pattern[str], what: str) -> str:
        self.peek()
        match = pattern.match(self.spec, self.pos)
        if match is None:
            raise self.error(f"expected {what}, got {self.describe()}")
        self.pos = match.end()
        return match.group()

    def expect(self, char: str) -> None:
        if self.peek() != char:
            raise self.error(f"expected {char!r}, got {self.describe()}")
        self.pos += 1

    def passes(self) -> tuple[Pass, ...]:
        if not self.peek():
            return ()
        found = [self.item()]
        while self.peek():
            if self.peek() != ",":
                raise self.error(f"expected ',' or end of pipeline, got {self.describe()}")
            self.pos += 1
            found.append(self.item())
        return tuple(found)

    def item(self) -> Pass:
        self.peek()
        start = self.pos
        name = self.take(_PASS_NAME, "a pass name")
        cls = REGISTRY.get(name)
        if cls is None:
            known = ", ".join(sorted(REGISTRY)) or "none registered"
            raise self.error(f"unknown pass {name!r} (known: {known})", start)
        options = self.options() if self.peek() == "{" else {}
        try:
            return cls.from_options(options)
        except EinscadeError as error:
            raise self.error(str(error), start) from None

    def options(self) -> dict[str, str]:
        opened = self.pos
        self.pos += 1
        options: dict[str, str] = {}
        if self.peek() == "}":
            self.pos += 1
            return options
        while True:
            key_pos = self.pos
            key = self.take(_OPTION_KEY, "an option name")
            self.expect("=")
            value = self.take(_OPTION_VALUE, f"a value for {key!r}")
            if key in options:
                raise self.error(f"option {key!r} given twice", key_pos)
            options[key] = value
            char = self.peek()
            if char == "}":
                self.pos += 1
                return options
            if not char:
                raise self.error(f"unclosed '{{' (opened at column {opened + 1})")
            if char != ",":
                raise self.error(f"expected ',' or '}}', got {self.describe()}")
            self.pos += 1


def parse_pipeline(spec: str) -> tuple[Pass, ...]:
    """``"defer-div,tile{p=128,m=64}"`` -> the passes, options converted by field type.

    Raises ``LocatedError`` (``<pipeline>:1:COL: message`` and a caret) for an unknown pass
    (listing the known ones), a bad option, or malformed braces and commas.
    """
    return _SpecReader(spec).passes()


def pipeline_spec(passes: Sequence[Pass]) -> str:
    """The spec string that ``parse_pipeline`` reads back into ``passes``."""
    return ",".join(p.spec() for p in passes)


# -- results and failures ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PassRecord:
    """What one pass did: its time, whether the cascade changed, its notes, the IR after it."""

    name: str
    spec: str
    seconds: float
    changed: bool
    notes: tuple[Note, ...]
    cascade: Cascade

    @property
    def rewrites(self) -> int:
        return sum(1 for n in self.notes if n.kind == "rewrite")


@dataclass(frozen=True, slots=True)
class PipelineResult:
    """The final cascade and one record per pass, in order."""

    cascade: Cascade
    spec: str
    records: tuple[PassRecord, ...]

    @property
    def changed(self) -> bool:
        return any(r.changed for r in self.records)

    @property
    def rewrites(self) -> int:
        return sum(r.rewrites for r in self.records)


class PassFailure(EinscadeError):
    """A pass raised, or produced IR that does not verify (the cause is chained)."""

    def __init__(
        self,
        pass_name: str,
        previous: str | None,
        before: Cascade,
        after: Cascade | None,
        cause: BaseException,
    ):
        self.pass_name = pass_name
        self.previous = previous
        self.before = before
        self.after = after
        self.cause = cause
        super().__init__(self._render())

    @property
    def where(self) -> str:
        return "first pass" if self.previous is None else f"after {self.previous!r}"

    @property
    def cause_text(self) -> str:
        text = str(self.cause)
        if isinstance(self.cause, EinscadeError):
            return text
        return f"{type(self.cause).__name__}: {text}" if text else type(self.cause).__name__

    @property
    def summary(self) -> str:
        """One line: the pass, the pass before it and the first line of the cause."""
        return f"pass {self.pass_name!r} failed ({self.where}): {self.cause_text.splitlines()[0]}"

    def _render(self) -> str:
        parts = [f"pass {self.pass_name!r} failed ({self.where}) on:", print_cascade(self.before)]
        if self.after is not None:
            parts += ["it produced IR that does not verify:", _printable(self.after)]
        parts.append(self.cause_text)
        return "\n".join(part.rstrip("\n") for part in parts)


def _printable(cascade: Cascade) -> str:
    try:
        return print_cascade(cascade)
    except Exception as error:  # a broken pass may build IR the printer rejects
        return f"<cannot print: {type(error).__name__}: {error}>"


def check_pass_output(cascade: Cascade, pass_name: str) -> None:
    """Print, parse back and verify ``cascade``; errors point into the printed text."""
    text = print_cascade(cascade)
    reparsed = verify(parse(text, f"<after {pass_name}>"), text)
    if reparsed != cascade:
        raise EinscadeError("its printed IR does not parse back to the same cascade")


# -- running -----------------------------------------------------------------------------------


def run_pipeline(
    cascade: Cascade,
    spec_or_passes: str | Sequence[Pass],
    *,
    dump_dir: str | os.PathLike[str] | None = None,
    debug: int | None = None,
) -> PipelineResult:
    """Run the passes in order, verifying after each; see the module docstring.

    ``debug`` and ``dump_dir`` default to the ``EINSCADE_DEBUG`` and ``EINSCADE_DUMP_DIR``
    knobs; ``dump_dir=""`` turns dumping off whatever the knob says. Raises ``PassFailure``
    naming the failing pass and the one before it.
    """
    if isinstance(spec_or_passes, str):
        passes, spec = parse_pipeline(spec_or_passes), spec_or_passes
    else:
        passes, spec = tuple(spec_or_passes), pipeline_spec(spec_or_passes)
    level = knobs.debug_level() if debug is None else debug
    folder = knobs.dump_dir() if dump_dir is None else (os.fspath(dump_dir) or None)
    try:
        verify(cascade)
    except EinscadeError as error:
        raise EinscadeError(f"pipeline input @{cascade.name} does not verify: {error}") from error
    _log_start(level, spec, cascade)
    if folder is not None:
        _start_dump(Path(folder), spec, cascade)
    records: list[PassRecord] = []
    current = cascade
    for index, pass_ in enumerate(passes, start=1):
        previous = records[-1].name if records else None
        try:
            record = _run_one(pass_, current, previous)
        except PassFailure as failure:
            if folder is not None:
                _dump_failure(Path(folder), index, failure)
            raise
        _log_record(level, record)
        if folder is not None:
            _dump_step(Path(folder), index, record)
        records.append(record)
        current = record.cascade
    return PipelineResult(current, spec, tuple(records))


def _run_one(pass_: Pass, cascade: Cascade, previous: str | None) -> PassRecord:
    start = time.perf_counter()
    try:
        result = pass_.run(cascade)
        if not isinstance(result, PassResult):
            raise TypeError(f"run() returned {type(result).__name__}, not a PassResult")
    except Exception as error:
        raise PassFailure(pass_.name, previous, cascade, None, error) from error
    seconds = time.perf_counter() - start
    changed = result.cascade != cascade
    if changed:
        try:
            check_pass_output(result.cascade, pass_.name)
        except Exception as error:
            raise PassFailure(pass_.name, previous, cascade, result.cascade, error) from error
    after = result.cascade if changed else cascade  # an equal result keeps the original object
    return PassRecord(pass_.name, pass_.spec(), seconds, changed, result.notes, after)


def fixpoint(pass_: Pass, cascade: Cascade, max_steps: int = 50) -> PassResult:
    """Re-run ``pass_`` until the cascade stops changing; all notes, in order.

    Runs at most ``max_steps`` times and raises ``EinscadeError`` if the last run still
    changed the cascade (a rewrite that undoes another, or one that never runs out of work).
    """
    if max_steps < 1:
        raise ValueError(f"max_steps must be at least 1, got {max_steps}")
    notes: list[Note] = []
    current = cascade
    result = PassResult(cascade)
    for _ in range(max_steps):
        result = pass_.run(current)
        notes.extend(result.notes)
        if result.cascade == current:
            return PassResult(current, tuple(notes))
        current = result.cascade
    last = "; ".join(n.message for n in result.notes) or "no notes"
    raise EinscadeError(
        f"pass {pass_.spec()!r} still changes the cascade after {max_steps} runs (last run: {last})"
    )


# -- debug output ------------------------------------------------------------------------------


def _log(line: str) -> None:
    # sys.stderr is looked up per call so redirection (and pytest's capsys) sees the output.
    print(f"[einscade] {line}", file=sys.stderr)


def _log_start(level: int, spec: str, cascade: Cascade) -> None:
    if level >= 1:
        _log(f"pipeline {spec!r} on @{cascade.name}")
    if level >= 2:
        sys.stderr.write(print_cascade(cascade))


def _log_record(level: int, record: PassRecord) -> None:
    if level < 1:
        return
    status = "unchanged"
    if record.changed:
        plural = "" if record.rewrites == 1 else "s"
        status = f"changed ({record.rewrites} rewrite{plural})"
    _log(f"pass {record.spec} {record.seconds * 1e3:.1f} ms {status}")
    if level >= 3:
        for note in record.notes:
            _log(f"  {note.kind}: {note.message}")
    if level >= 2 and record.changed:
        sys.stderr.write(print_cascade(record.cascade))


# -- dump folder -------------------------------------------------------------------------------

# Files this module writes; only these are cleared from a reused folder.
_DUMP_FILE = re.compile(r"\d+-[A-Za-z0-9_-]+(\.ecas|\.failed\.txt)")

_REPRO = '''\
"""Re-run an einscade pipeline on 00-input.ecas and check it reproduces the last dump.

Written by einscade.compiler.pipeline; send this whole folder with a bug report.
Run: python repro.py   (EINSCADE_DEBUG=3 python repro.py shows every pass and rewrite)
If the pipeline failed when the folder was written, this raises the same error.
"""

import difflib
import sys
from pathlib import Path

from einscade.compiler.pipeline import run_pipeline
from einscade.ir import load, print_cascade

PIPELINE = @SPEC@
HERE = Path(__file__).resolve().parent


def main() -> int:
    dumps = sorted(HERE.glob("[0-9]*-*.ecas"), key=lambda p: int(p.name.split("-")[0]))
    # dump_dir="" so this run never overwrites the files it compares against.
    result = run_pipeline(load(HERE / "00-input.ecas"), PIPELINE, dump_dir="")
    got, expected = print_cascade(result.cascade), dumps[-1].read_text()
    if got != expected:
        lines = difflib.unified_diff(
            expected.splitlines(True), got.splitlines(True), dumps[-1].name, "re-run"
        )
        sys.stderr.writelines(lines)
        print(f"repro: the result differs from {dumps[-1].name}", file=sys.stderr)
        return 1
    print(f"repro: ok, {PIPELINE!r} reproduces {dumps[-1].name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''


def _start_dump(folder: Path, spec: str, cascade: Cascade) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.iterdir():
        if _DUMP_FILE.fullmatch(stale.name):
            stale.unlink()
    (folder / "00-input.ecas").write_text(print_cascade(cascade))
    (folder / "repro.py").write_text(_REPRO.replace("@SPEC@", repr(spec)))


def _dump_step(folder: Path, index: int, record: PassRecord) -> None:
    (folder / f"{index:02d}-{record.name}.ecas").write_text(print_cascade(record.cascade))


def _dump_failure(folder: Path, index: int, failure: PassFailure) -> None:
    (folder / f"{index:02d}-{failure.pass_name}.failed.txt").write_text(str(failure) + "\n")
