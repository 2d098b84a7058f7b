"""Reading a compiled kernel's costs, and the ``einscade kernel-report`` command."""

import argparse
import io

import pytest
from rich.console import Console

from einscade.codegen.triton import choose_config
from einscade.codegen.triton.report import KernelReport, global_load_widths, tensor_core_ops
from einscade.compiler import kernel_report_cmd
from einscade.frontends.softmax import softmax_attention
from einscade.ir.errors import EinscadeError

_SASS = """
        /*0a40*/                   LDGSTS.E.BYPASS.128 [R5], desc[UR8][R2.64] ;
        /*0a50*/                   LDGDEPBAR ;
        /*0a60*/                   LDG.E R7, desc[UR8][R10.64] ;
        /*0a70*/                   LDG.E.128 R12, desc[UR8][R14.64] ;
        /*0a80*/                   LDG.E.64 R16, desc[UR8][R14.64] ;
        /*0a90*/                   HMMA.16816.F32 R20, R24, R28, R20 ;
        /*0aa0*/                   HGMMA.64x64x16.F32 R24, gdesc[UR4], R24 ;
"""


def test_global_loads_are_counted_by_width_and_barriers_are_not_loads():
    assert global_load_widths(_SASS) == {128: 2, 32: 1, 64: 1}
    assert tensor_core_ops(_SASS) == {"HMMA": 1, "HGMMA": 1}


def test_tile_and_arch_options():
    cascade = softmax_attention(causal=True)
    assert kernel_report_cmd.parse_tile(None, cascade) == ("128", 64)
    assert kernel_report_cmd.parse_tile("p=64,m=32", cascade) == ("64", 32)
    assert kernel_report_cmd.parse_archs("sm_90a, 80") == [90, 80]
    with pytest.raises(EinscadeError, match="--tile expects"):
        kernel_report_cmd.parse_tile("q=64", cascade)
    with pytest.raises(EinscadeError, match="--arch expects"):
        kernel_report_cmd.parse_archs("hopper")


def test_kernel_report_prints_a_row_per_arch():
    argv = ["kernel-report", "causal", "--tile", "p=64,m=32", "--arch", "80", "--stages", "2"]
    parser = argparse.ArgumentParser(prog="einscade")  # only this command: fast, isolated
    kernel_report_cmd.add_parser(parser.add_subparsers(dest="command"))
    args, rest = parser.parse_known_args(argv)
    out = io.StringIO()
    args.handler(args, rest, Console(file=out, width=160))
    text = out.getvalue()
    row = next(line for line in text.splitlines() if "sm_80" in line)
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    assert cells[0] == "sm_80" and cells[2] == "0"  # no spills
    assert cells[4].startswith("HMMA x") and "128b x" in cells[5]
    assert "block_sparse" in text


def test_the_summary_names_the_configuration():
    config = choose_config((256, 256), "float16", 80)
    report = KernelReport(80, 183, 0, 0, 104 * 1024, 8, {"HMMA": 256}, {128: 72},
                          config.summary())  # fmt: skip
    assert report.summary().endswith("; config p=64 m=64, 8 warps, 2 stages (" + config.why + ")")
    assert "config" not in KernelReport(80, 183, 0, 0, 0, 8, {}).summary()
