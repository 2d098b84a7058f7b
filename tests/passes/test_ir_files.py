"""IR text tests: every ``tests/passes/ir/**/*.ecas`` file runs a pipeline and checks its output.

File format (a normal ``.ecas`` file: the checks are comments, so ``einscade opt FILE
--pipeline SPEC`` and ``einscade check FILE`` work on it as-is)::

    # RUN: dce                                    <- first line: the pipeline spec
    # any other comment lines describe the case
    cascade @a(X[n]) -> (Y) {                     <- the input cascade
      ...
    }
    # NOTE: rewrite: removed T (1 Einsum): ...    <- optional: the exact notes, in order,
    # NOTE: decline: ...                              of all passes; `# NOTE: none` for none
    # EXPECT:                                     <- last section: the printed result, each
    # cascade @a(X[n]) -> (Y) {                      line behind '# ' ('#' for a blank line)
    #   ...
    # }

The result must print exactly as the EXPECT block, and both the input and the expected
cascade must verify and satisfy ``parse(print(c)) == c``. To test a new pass, drop files
named ``<pass>_<case>.ecas`` (or a sub-folder) here; nothing else needs registering.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from einscade.compiler.pipeline import run_pipeline
from einscade.ir import loads, parse, print_cascade
from einscade.passes.base import Note

IR_DIR = Path(__file__).parent / "ir"
CASES = sorted(IR_DIR.rglob("*.ecas"))


@dataclass(frozen=True)
class IRCase:
    pipeline: str
    source: str
    notes: tuple[Note, ...] | None  # None: notes are not checked
    expected: str


def read_case(text: str, filename: str) -> IRCase:
    """Split an IR test file into its RUN spec, NOTE lines and EXPECT block."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith("# RUN:"):
        raise ValueError(f"{filename}:1: the first line must be '# RUN: <pipeline spec>'")
    if "# EXPECT:" not in lines:
        raise ValueError(f"{filename}: no '# EXPECT:' line")
    split = lines.index("# EXPECT:")
    expected = [
        _uncomment(line, filename, split + 2 + k) for k, line in enumerate(lines[split + 1 :])
    ]
    note_lines = [
        line[len("# NOTE:") :].strip() for line in lines[:split] if line.startswith("# NOTE:")
    ]
    return IRCase(
        pipeline=lines[0][len("# RUN:") :].strip(),
        source="\n".join(lines[:split]) + "\n",
        notes=_notes(note_lines) if note_lines else None,
        expected="\n".join(expected) + "\n",
    )


def _uncomment(line: str, filename: str, number: int) -> str:
    if line == "#":
        return ""
    if not line.startswith("# "):
        raise ValueError(f"{filename}:{number}: lines after '# EXPECT:' must start with '# '")
    return line[2:]


def _notes(lines: list[str]) -> tuple[Note, ...]:
    if lines == ["none"]:
        return ()
    return tuple(Note(*(part.strip() for part in line.split(":", 1))) for line in lines)


def assert_round_trips(text: str, filename: str) -> None:
    cascade = loads(text, filename)
    assert parse(print_cascade(cascade)) == cascade, f"{filename}: print/parse round trip"


@pytest.mark.parametrize("path", CASES, ids=[str(p.relative_to(IR_DIR)) for p in CASES])
def test_ir_file(path: Path) -> None:
    case = read_case(path.read_text(), str(path))
    assert_round_trips(case.source, str(path))
    assert_round_trips(case.expected, f"{path} (EXPECT)")
    result = run_pipeline(loads(case.source, str(path)), case.pipeline, debug=0, dump_dir="")
    assert print_cascade(result.cascade) == case.expected
    if case.notes is not None:
        assert tuple(n for r in result.records for n in r.notes) == case.notes


def test_the_folder_holds_the_dce_cases() -> None:
    names = {p.name for p in CASES}
    assert {"dce_dead_chain.ecas", "dce_iterate_partly_dead.ecas", "dce_nothing_dead.ecas"} <= names


def test_reader_names_malformed_files() -> None:
    with pytest.raises(ValueError, match=r"x\.ecas:1: the first line must be '# RUN:"):
        read_case("cascade @a(X[n]) -> (Y) {\n}\n", "x.ecas")
    with pytest.raises(ValueError, match=r"x\.ecas:4: lines after '# EXPECT:' must start"):
        read_case("# RUN: dce\ncascade @a(X[n]) -> (Y) {}\n# EXPECT:\nY\n", "x.ecas")
    case = read_case("# RUN: dce{}\n# NOTE: none\nc\n# EXPECT:\n# a\n#\n# b\n", "x.ecas")
    assert (case.pipeline, case.notes, case.expected) == ("dce{}", (), "a\n\nb\n")
