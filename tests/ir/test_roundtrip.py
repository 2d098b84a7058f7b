"""Every cascade text in the repository verifies and survives print -> parse unchanged.

Covers each ``*.ecas`` file under ``examples/`` and ``tests/`` and each ``ecas`` code block
of ``docs/ir.md`` (so the IR reference cannot drift from what the parser accepts).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from einscade.ir import Cascade, parse, print_cascade, verify

REPO = Path(__file__).resolve().parents[2]
ECAS_FILES = sorted({*REPO.glob("examples/**/*.ecas"), *REPO.glob("tests/**/*.ecas")})
IR_DOC = REPO / "docs" / "ir.md"
FENCED_ECAS = re.compile(r"^```ecas\n(.*?)^```", re.DOTALL | re.MULTILINE)


def doc_blocks() -> list[tuple[str, str]]:
    """(id, text) of each ``ecas`` block in docs/ir.md, the id naming its cascade."""
    blocks = FENCED_ECAS.findall(IR_DOC.read_text())
    return [(re.search(r"@(\w+)", text).group(1), text) for text in blocks]  # type: ignore[union-attr]


def assert_round_trip(cascade: Cascade, source: str) -> None:
    verify(cascade, source)
    printed = print_cascade(cascade)
    reparsed = parse(printed, "<printed>")
    assert reparsed == cascade
    assert print_cascade(reparsed) == printed
    verify(reparsed, printed)


def test_the_examples_are_found() -> None:
    names = {path.name for path in ECAS_FILES}
    assert {"attention_1pass.ecas", "attention_2pass.ecas", "attention_3pass.ecas"} <= names


@pytest.mark.parametrize("path", ECAS_FILES, ids=[str(p.relative_to(REPO)) for p in ECAS_FILES])
def test_ecas_file_round_trips(path: Path) -> None:
    source = path.read_text()
    assert_round_trip(parse(source, str(path)), source)


DOC_BLOCKS = doc_blocks()


def test_the_doc_examples_are_found() -> None:
    ids = [name for name, _ in DOC_BLOCKS]
    assert len(ids) >= 6 and len(set(ids)) == len(ids)


@pytest.mark.parametrize("source", [t for _, t in DOC_BLOCKS], ids=[n for n, _ in DOC_BLOCKS])
def test_doc_example_round_trips(source: str) -> None:
    assert_round_trip(parse(source, "docs/ir.md"), source)


@pytest.mark.parametrize("name", ["attention_1pass", "attention_2pass", "attention_3pass"])
def test_doc_copies_the_example_files(name: str) -> None:
    """The 3/2/1-pass cascades on the IR page are the example files, not paraphrases."""
    documented = dict(DOC_BLOCKS)[name]
    assert parse(documented) == parse((REPO / "examples" / f"{name}.ecas").read_text())


def test_equality_ignores_locations_but_not_structure() -> None:
    source = (REPO / "examples" / "attention_3pass.ecas").read_text()
    spaced = source.replace("  QK[m, p] =", "\n\n      QK[m, p]   =")
    assert parse(spaced) == parse(source)
    assert parse(source.replace(":: max(m)", ":: min(m)")) != parse(source)
