"""The pipeline: spec strings, verify after each pass, debug levels, dump folder, fixpoint, CLI."""

from __future__ import annotations

import dataclasses
import os
import re
import runpy
import subprocess
import sys
from dataclasses import dataclass

import pytest

from einscade.compiler.cli import main
from einscade.compiler.pipeline import (
    PassFailure,
    fixpoint,
    parse_pipeline,
    pipeline_spec,
    run_pipeline,
)
from einscade.ir import EinscadeError, VerifyError, loads, parse_einsum, print_cascade
from einscade.ir.cascade import Cascade
from einscade.passes.base import REGISTRY, Note, Pass, PassResult, register
from einscade.passes.dce import DeadCode

SMALL = loads("cascade @a(X[n]) -> (Y) {\n  Y[] = X[n] :: sum(n)\n}\n")
WITH_DEAD = loads(
    "cascade @b(X[n]) -> (Y) {\n"
    "  T[n] = exp(X[n])\n"
    "  U[] = T[n] :: sum(n)\n"
    "  Y[] = X[n] :: sum(n)\n"
    "}\n"
)


# -- test-only passes, registered per test ------------------------------------------------


@dataclass(frozen=True)
class Rename(Pass):
    """Renames the cascade; its fields exercise option conversion."""

    name = "test-rename"
    suffix: str = "_x"
    times: int = 1
    loud: bool = False

    def run(self, cascade: Cascade) -> PassResult:
        note = Note("decline", "kept the name") if self.loud else None
        renamed = dataclasses.replace(cascade, name=cascade.name + self.suffix * self.times)
        return PassResult(renamed if self.times else cascade, (note,) if note else ())


@dataclass(frozen=True)
class NeedsTile(Pass):
    """A required option: a spec without it must say so, not raise TypeError."""

    name = "test-needs"
    tile: int

    def run(self, cascade: Cascade) -> PassResult:
        return PassResult(cascade)


@dataclass(frozen=True)
class Broken(Pass):
    """Adds a statement reading an undefined tensor: the verifier must catch it."""

    name = "test-broken"

    def run(self, cascade: Cascade) -> PassResult:
        bad = parse_einsum("BAD[n] = NOPE[n]")
        return PassResult(dataclasses.replace(cascade, body=cascade.body + (bad,)))


@dataclass(frozen=True)
class Raises(Pass):
    name = "test-raises"

    def run(self, cascade: Cascade) -> PassResult:
        raise KeyError("QK")


@dataclass(frozen=True)
class Grows(Pass):
    """Never reaches a fixpoint: renames on every run."""

    name = "test-grows"

    def run(self, cascade: Cascade) -> PassResult:
        renamed = dataclasses.replace(cascade, name=cascade.name + "x")
        return PassResult(renamed, (Note("rewrite", f"renamed to {renamed.name}"),))


@pytest.fixture(autouse=True)
def test_passes(monkeypatch):
    monkeypatch.delenv("EINSCADE_DEBUG", raising=False)
    monkeypatch.delenv("EINSCADE_DUMP_DIR", raising=False)
    for cls in (Rename, NeedsTile, Broken, Raises, Grows):
        register(cls)
    yield
    for cls in (Rename, NeedsTile, Broken, Raises, Grows):
        REGISTRY.pop(cls.name)


# -- spec strings ---------------------------------------------------------------------------


def test_specs_parse_to_pass_instances_with_converted_options():
    assert parse_pipeline("") == ()
    assert parse_pipeline(" dce , dce ") == (DeadCode(), DeadCode())
    passes = parse_pipeline("dce,test-rename{suffix=_v2,times=2,loud=true},test-rename{}")
    assert passes == (DeadCode(), Rename("_v2", 2, True), Rename())
    assert parse_pipeline(pipeline_spec(passes)) == passes
    assert parse_pipeline("test-needs{tile=64}") == (NeedsTile(64),)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("dce,", "<pipeline>:1:5: expected a pass name, got end of pipeline"),
        ("dce dce", "<pipeline>:1:5: expected ',' or end of pipeline, got 'd'"),
        ("dce}", "<pipeline>:1:4: expected ',' or end of pipeline, got '}'"),
        ("dce{", "<pipeline>:1:5: expected an option name, got end of pipeline"),
        ("test-rename{times=2", "<pipeline>:1:20: unclosed '{' (opened at column 12)"),
        ("test-rename{times=2 x}", "<pipeline>:1:21: expected ',' or '}', got 'x'"),
        ("test-rename{times=}", "<pipeline>:1:19: expected a value for 'times', got '}'"),
        ("test-rename{times 2}", "<pipeline>:1:19: expected '=', got '2'"),
        ("test-rename{times=1,times=2}", "<pipeline>:1:21: option 'times' given twice"),
        ("test-rename{times=two}", "<pipeline>:1:1: pass 'test-rename': option times='two'"),
        ("dce{x=1}", "<pipeline>:1:1: pass 'dce' has no option 'x' (options: none)"),
        ("dce,test-needs", "<pipeline>:1:5: pass 'test-needs' needs option 'tile'"),
    ],
)
def test_spec_errors_name_the_column(spec, message):
    with pytest.raises(EinscadeError) as caught:
        parse_pipeline(spec)
    assert str(caught.value).startswith(message)


def test_an_unknown_pass_lists_the_known_ones_and_points_at_it():
    with pytest.raises(EinscadeError) as caught:
        parse_pipeline("dce,nope")
    head, *caret = str(caught.value).splitlines()
    known = ", ".join(sorted(REGISTRY))
    assert head == f"<pipeline>:1:5: unknown pass 'nope' (known: {known})"
    assert "dce" in known and "test-rename" in known
    assert caret == ["  dce,nope", "      ^"]


# -- running and verifying ------------------------------------------------------------------


def test_records_tell_what_each_pass_did():
    result = run_pipeline(WITH_DEAD, "dce,test-rename{loud=true,times=0},test-rename", debug=0)
    dce, quiet, rename = result.records
    assert (dce.name, dce.spec, dce.changed, dce.rewrites) == ("dce", "dce", True, 2)
    assert [s.target for s in dce.cascade.einsums()] == ["Y"]
    assert (quiet.changed, quiet.rewrites, quiet.notes) == (
        False,
        0,
        (Note("decline", "kept the name"),),
    )
    assert quiet.spec == "test-rename{times=0,loud=True}"  # defaults are left out
    assert rename.changed and rename.cascade is result.cascade
    assert result.cascade.name == "b_x"
    assert all(r.seconds >= 0 for r in result.records)
    assert (result.changed, result.rewrites) == (True, 2)


def test_a_list_of_passes_runs_like_its_spec():
    result = run_pipeline(WITH_DEAD, [DeadCode(), Rename(times=2)], debug=0)
    assert result.spec == "dce,test-rename{times=2}"
    assert result.cascade.name == "b_x_x"


def test_ir_that_does_not_verify_names_the_pass_and_the_one_before():
    with pytest.raises(PassFailure) as caught:
        run_pipeline(SMALL, "dce,test-broken", debug=0)
    text = str(caught.value)
    assert text.startswith("pass 'test-broken' failed (after 'dce') on:\n" + print_cascade(SMALL))
    produced = print_cascade(caught.value.after)
    assert "it produced IR that does not verify:\n" + produced in text
    assert "<after test-broken>:3:12: undefined tensor 'NOPE'\n    BAD[n] = NOPE[n]\n" in text
    assert isinstance(caught.value.__cause__, VerifyError)
    assert caught.value.summary == (
        "pass 'test-broken' failed (after 'dce'): <after test-broken>:3:12: undefined tensor 'NOPE'"
    )


def test_a_pass_that_raises_is_reported_on_its_input_and_chained():
    with pytest.raises(PassFailure) as caught:
        run_pipeline(SMALL, "test-raises", debug=0)
    failure = caught.value
    assert str(failure) == (
        "pass 'test-raises' failed (first pass) on:\n" + print_cascade(SMALL) + "KeyError: 'QK'"
    )
    assert isinstance(failure.__cause__, KeyError) and failure.after is None
    assert failure.summary == "pass 'test-raises' failed (first pass): KeyError: 'QK'"


def test_an_input_that_does_not_verify_is_rejected_before_any_pass():
    bad = dataclasses.replace(SMALL, outputs=("Z",))
    with pytest.raises(EinscadeError, match="pipeline input @a does not verify: .*output 'Z'"):
        run_pipeline(bad, "dce", debug=0)


# -- debug output ---------------------------------------------------------------------------

_TIME = r"\d+\.\d ms"


def test_debug_level_1_prints_one_line_per_pass(capsys, monkeypatch):
    monkeypatch.setenv("EINSCADE_DEBUG", "1")  # the knob, not the argument
    run_pipeline(WITH_DEAD, "dce,dce,test-rename{loud=true}")
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert lines[0] == "[einscade] pipeline 'dce,dce,test-rename{loud=true}' on @b"
    assert re.fullmatch(rf"\[einscade\] pass dce {_TIME} changed \(2 rewrites\)", lines[1])
    assert re.fullmatch(rf"\[einscade\] pass dce {_TIME} unchanged", lines[2])
    spec = r"test-rename\{loud=True\}"
    assert re.fullmatch(rf"\[einscade\] pass {spec} {_TIME} changed \(0 rewrites\)", lines[3])
    assert len(lines) == 4


def test_debug_argument_overrides_the_knob(capsys, monkeypatch):
    monkeypatch.setenv("EINSCADE_DEBUG", "3")
    run_pipeline(WITH_DEAD, "dce", debug=0)
    assert capsys.readouterr().err == ""


def test_debug_level_2_adds_the_input_and_the_ir_after_changing_passes(capsys):
    result = run_pipeline(WITH_DEAD, "dce,dce", debug=2)
    err = capsys.readouterr().err
    after_dce = print_cascade(result.cascade)
    assert err.count(after_dce) == 1  # printed after the first dce only
    assert f"on @b\n{print_cascade(WITH_DEAD)}[einscade] pass dce" in err
    assert re.search(rf"changed \(2 rewrites\)\n{re.escape(after_dce)}\[einscade\] pass", err)
    assert "rewrite:" not in err


def test_debug_level_3_adds_every_note(capsys):
    run_pipeline(WITH_DEAD, "dce,test-rename{loud=true,times=0}", debug=3)
    err = capsys.readouterr().err
    assert "[einscade]   rewrite: removed T (1 Einsum): no path to output Y\n" in err
    assert "[einscade]   rewrite: removed U (1 Einsum): no path to output Y\n" in err
    assert re.search(rf"times=0,loud=True\}} {_TIME} unchanged\n.*decline: kept the name\n", err)


# -- dump folder and repro ------------------------------------------------------------------


def _run_repro(folder) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EINSCADE_")}
    return subprocess.run(
        [sys.executable, str(folder / "repro.py")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_dump_dir_holds_numbered_ir_and_a_repro_that_passes(tmp_path, capsys):
    folder = tmp_path / "dump"
    folder.mkdir()
    (folder / "07-old.ecas").write_text("stale")  # from an earlier, longer pipeline
    (folder / "notes.md").write_text("mine")
    result = run_pipeline(WITH_DEAD, "dce,dce", dump_dir=folder, debug=0)
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["00-input.ecas", "01-dce.ecas", "02-dce.ecas", "notes.md", "repro.py"]
    assert (folder / "00-input.ecas").read_text() == print_cascade(WITH_DEAD)
    assert (folder / "01-dce.ecas").read_text() == print_cascade(result.cascade)
    assert (folder / "02-dce.ecas").read_text() == print_cascade(result.cascade)
    ran = _run_repro(folder)
    assert ran.returncode == 0, ran.stderr
    assert "repro: ok, 'dce,dce' reproduces 02-dce.ecas" in ran.stdout

    # A result that no longer matches the dump makes the repro fail with a diff (run in
    # process: a second interpreter start would only cost time).
    (folder / "02-dce.ecas").write_text(print_cascade(WITH_DEAD))
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(folder / "repro.py"), run_name="__main__")
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert "-  T[n] = exp(X[n])" in err
    assert "repro: the result differs from 02-dce.ecas" in err


def test_the_dump_knob_records_a_failing_pass(tmp_path, monkeypatch):
    monkeypatch.setenv("EINSCADE_DUMP_DIR", str(tmp_path))
    with pytest.raises(PassFailure) as caught:
        run_pipeline(SMALL, "dce,test-broken", debug=0)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["00-input.ecas", "01-dce.ecas", "02-test-broken.failed.txt", "repro.py"]
    assert (tmp_path / "02-test-broken.failed.txt").read_text() == str(caught.value) + "\n"
    run_pipeline(SMALL, "dce", dump_dir="", debug=0)  # "" turns the knob off
    assert (tmp_path / "02-test-broken.failed.txt").exists()


# -- fixpoint -------------------------------------------------------------------------------


def test_fixpoint_stops_when_nothing_changes():
    result = fixpoint(DeadCode(), WITH_DEAD)
    assert [s.target for s in result.cascade.einsums()] == ["Y"]
    assert result.rewrites == 2


def test_fixpoint_fails_loudly_past_its_cap():
    message = (
        r"pass 'test-grows' still changes the cascade after 3 runs \(last run: renamed to axxx\)"
    )
    with pytest.raises(EinscadeError, match=message):
        fixpoint(Grows(), SMALL, max_steps=3)
    assert fixpoint(Rename(times=0), SMALL, max_steps=1).cascade == SMALL
    with pytest.raises(ValueError, match="max_steps must be at least 1"):
        fixpoint(DeadCode(), SMALL, max_steps=0)


# -- the opt command ------------------------------------------------------------------------


def test_opt_prints_the_optimized_file(tmp_path, capsys):
    path = tmp_path / "b.ecas"
    path.write_text(print_cascade(WITH_DEAD))
    assert main(["opt", str(path), "--pipeline", "dce", "--dump-dir", str(tmp_path / "d")]) == 0
    captured = capsys.readouterr()
    assert captured.out == "cascade @b(X[n]) -> (Y) {\n  Y[] = X[n] :: sum(n)\n}\n"
    assert captured.err == ""
    assert (tmp_path / "d" / "01-dce.ecas").read_text() == captured.out


def test_opt_builds_a_builtin_with_options_and_shows_debug_lines(capsys):
    args = ["opt", "neighborhood_2d", "--grid", "4x4", "--kernel", "3x3"]
    assert main([*args, "--pipeline", "dce", "--debug", "1"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("cascade @neighborhood_attention(")
    assert "size PX = 4" in captured.out
    assert re.search(rf"\[einscade\] pass dce {_TIME} unchanged", captured.err)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pipeline", "dce,nope"], "<pipeline>:1:5: unknown pass 'nope' (known: "),
        (["--pipeline", "dce,test-broken"], "pass 'test-broken' failed (after 'dce'): <after"),
        (["--pipeline", "test-raises"], "pass 'test-raises' failed (first pass): KeyError: 'QK'"),
        (["--kernel", "3", "--pipeline", "dce"], "builder options apply to built-in names"),
    ],
)
def test_opt_errors_are_one_line_with_exit_status_1(tmp_path, capsys, args, message):
    path = tmp_path / "a.ecas"
    path.write_text(print_cascade(SMALL))
    assert main(["opt", str(path), *args]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("einscade: error: " + message)
    assert captured.err.count("\n") == 1
