"""The command line: show built-ins and files, check files, errors with exit codes."""

import pytest

from einscade.compiler.cli import main, parse_builder_options
from einscade.frontends.library import BUILTINS


def test_option_values_parse_grids_flags_and_numbers():
    options = parse_builder_options(["--grid", "56x56", "--kernel", "7x7", "--causal", "--d", "2"])
    assert options == {"grid": (56, 56), "kernel": (7, 7), "causal": True, "d": 2}


def test_show_neighborhood_prints_ir_passes_and_work(capsys):
    assert main(["show", "neighborhood_2d", "--grid", "14x14", "--kernel", "3x3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("cascade @neighborhood_attention(")
    assert "size PX = 14" in out
    assert "passes over m: 3" in out
    assert "QK (pass 1 -> 2), SN (pass 2 -> 3)" in out
    assert "P=196" in out


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_every_builtin_shows(name, capsys):
    assert main(["show", name, "--size", "P=64", "--size", "M=64"]) == 0
    assert "total dense work" in capsys.readouterr().out


def test_show_and_check_files(tmp_path, capsys):
    good = tmp_path / "a.ecas"
    good.write_text("cascade @a(X[n]) -> (Y) {\n  Y[] = X[n] :: sum(n)\n}\n")
    assert main(["check", str(good)]) == 0
    assert main(["show", str(good), "--size", "N=8"]) == 0
    assert "passes over" not in capsys.readouterr().out


def test_check_reports_verify_error_with_place(tmp_path, capsys):
    bad = tmp_path / "bad.ecas"
    bad.write_text("cascade @a(X[n]) -> (Y) {\n  Y[] = Z[n] :: sum(n)\n}\n")
    assert main(["check", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:2:9: undefined tensor 'Z'" in err
    assert "^" in err


def test_unknown_builtin_and_option_are_clear(capsys):
    assert main(["show", "nope"]) == 1
    assert "no built-in cascade 'nope'" in capsys.readouterr().err
    assert main(["show", "halo", "--kernel", "3"]) == 1
    assert "unknown option --kernel" in capsys.readouterr().err
