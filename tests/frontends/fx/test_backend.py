"""The backend around the patterns: registration, options, debug output, constant buffers,
grad mode, dynamic shapes, the Inductor fallback."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from einscade.frontends.mask_structure import natten_axis_mask
from einscade.ir import parse
from einscade.ir.errors import EinscadeError
from tests.frontends.fx.harness import compile_run, qkv


def _attention(q, k, v):
    return torch.softmax(q @ k.transpose(-2, -1) * 0.3, dim=-1) @ v


class MaskBuffer(torch.nn.Module):
    """Attention under a constant boolean mask held as a buffer."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, q, k, v):
        scores = (q @ k.transpose(-2, -1)).masked_fill(~self.mask, float("-inf"))
        return scores.softmax(-1) @ v


def test_backend_is_registered_by_entry_point():
    from importlib.metadata import entry_points

    from einscade.frontends.fx import einscade_backend

    (point,) = [e for e in entry_points(group="torch_dynamo_backends") if e.name == "einscade"]
    assert point.load() is einscade_backend
    assert "einscade" in torch._dynamo.list_backends()


@pytest.mark.slow  # a fresh interpreter: ~10 s
def test_backend_name_works_without_importing_einscade():
    """The torch_dynamo_backends entry point: a fresh interpreter knows backend="einscade"."""
    code = textwrap.dedent(
        """
        import sys, torch
        q = k = v = torch.randn(1, 2, 4, 8)
        fn = lambda q, k, v: torch.softmax(q @ k.transpose(-2, -1), -1) @ v
        compiled = torch.compile(fn, backend="einscade", options={"fallback": "eager"})
        with torch.no_grad():
            torch.testing.assert_close(compiled(q, k, v), fn(q, k, v))
        print("einscade" in sys.modules, "einscade.frontends.fx.backend" in sys.modules)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["True", "True"]  # imported by Dynamo, not by the script


def test_unknown_option_is_named():
    compiled = torch.compile(_attention, backend="einscade", options={"fallbak": "eager"})
    with pytest.raises(Exception, match="unknown option 'fallbak'; known: dump_dir, fallback"):
        compiled(*qkv())


def test_debug_prints_one_line_per_site(monkeypatch, capfd):
    def two(q, k, v):
        return _attention(q, k, v) + torch.softmax(q, dim=-1)

    monkeypatch.setenv("EINSCADE_DEBUG", "1")
    compile_run(two, *qkv())
    lines = [line for line in capfd.readouterr().err.splitlines() if line.startswith("einscade:")]
    assert len(lines) == 2, lines
    assert lines[0].endswith("[softmax] captured as softmax_attention(scale=0.3)")
    assert "skipped: the attention weights feed" in lines[1]


def test_graph_break_inside_attention_keeps_the_output(monkeypatch, capfd):
    """A graph break between the scores and the softmax: the second graph's softmax reads
    a graph input, not a QK product, so it is skipped with the reason and runs as written."""

    def broken(q, k, v):
        scores = q @ k.transpose(-2, -1) * 0.3
        torch._dynamo.graph_break()
        return scores.softmax(-1) @ v

    monkeypatch.setenv("EINSCADE_DEBUG", "1")
    run = compile_run(broken, *qkv())
    run.assert_close()
    assert run.captured == [], run.records
    (skipped,) = run.skipped
    assert "not from Q @ K^T" in skipped.reason
    lines = [line for line in capfd.readouterr().err.splitlines() if line.startswith("einscade:")]
    assert lines == [skipped.line()], lines
    assert "'softmax' skipped: the scores come from" in lines[0]


def test_dump_dir_holds_graphs_and_cascades(tmp_path):
    compile_run(_attention, *qkv(), options={"dump_dir": str(tmp_path)})
    names = sorted(p.name.split("_", 1)[1] for p in tmp_path.iterdir())
    assert names == ["after.py", "before.py", "site0.ecas", "sites.txt"]
    ecas = next(tmp_path.glob("*_site0.ecas")).read_text()
    assert parse(ecas).name == "softmax_attention"
    assert "einscade.site" in next(tmp_path.glob("*_after.py")).read_text()


def test_grad_mode_leaves_sites_to_the_fallback():
    q, k, v = (x.requires_grad_() for x in qkv())
    torch._dynamo.reset()
    compiled = torch.compile(_attention, backend="einscade", options={"fallback": "eager"})
    from einscade.frontends.fx import record_sites

    with record_sites() as records:
        compiled(q, k, v).sum().backward()
    assert [r.captured for r in records] == [False]
    assert records[0].reason.startswith("grad mode")
    assert q.grad is not None


def test_dynamic_shapes_keep_one_graph_correct():
    from einscade.frontends.fx import record_sites

    def causal(q, k, v):
        n = q.shape[-2]
        keep = torch.ones(n, n, dtype=torch.bool).tril()
        return (q @ k.transpose(-2, -1)).masked_fill(~keep, float("-inf")).softmax(-1) @ v

    torch._dynamo.reset()
    compiled = torch.compile(
        causal, backend="einscade", options={"fallback": "eager"}, dynamic=True
    )
    with torch.no_grad(), record_sites() as records:
        for tokens in (5, 7, 9):
            args = qkv(tokens=tokens)
            torch.testing.assert_close(compiled(*args), causal(*args))
    # Symbolic sizes: the mask is not a compile-time constant, so it stays a bias.
    assert [r.summary for r in records] == ["softmax_attention(bias, scale=1)"]


def test_inference_mode_then_no_grad():
    compiled = torch.compile(_attention, backend="einscade", options={"fallback": "eager"})
    with torch.inference_mode():
        first = compiled(*qkv())
    with torch.no_grad():
        torch.testing.assert_close(compiled(*qkv()), first)
    torch.testing.assert_close(first, _attention(*qkv()))


def test_changing_a_mask_buffer_after_compilation_is_an_error():
    module = MaskBuffer(torch.ones(6, 6, dtype=torch.bool).tril())
    run = compile_run(module, *qkv())
    assert [r.summary for r in run.captured] == ["softmax_attention(causal, scale=1)"]
    run.assert_close()
    compiled = torch.compile(module, backend="einscade", options={"fallback": "eager"})
    with torch.no_grad():
        compiled(*qkv())
        module.mask[0, 1] = True
        with pytest.raises(EinscadeError, match="buffer 'l_self_buffers_mask_' changed"):
            compiled(*qkv())


def test_neighborhood_mask_buffer_becomes_a_neighborhood_cascade():
    axis = natten_axis_mask(5, kernel=3, stride=1, dilation=1, causal=False)
    mask = (axis[:, None, :, None] & axis[None, :, None, :]).reshape(25, 25)
    run = compile_run(MaskBuffer(mask), *qkv(tokens=25))
    (record,) = run.captured
    assert record.summary.startswith("neighborhood_attention(neighborhood(grid=(5, 5), kernel")
    run.assert_close()


def test_mask_hiding_a_whole_row_stays_a_bias():
    # Bottom-right causal with 6 queries and 4 keys: the first two queries see no key. Eager
    # gives NaN there (a causal cascade would give 0), so the mask must stay a bias.
    mask = torch.arange(4)[None, :] - 4 <= torch.arange(6)[:, None] - 6
    q, k, v = qkv(tokens=6)[0], *qkv(tokens=4)[1:]
    run = compile_run(MaskBuffer(mask), q, k, v)
    assert [r.summary for r in run.captured] == ["softmax_attention(bias, scale=1)"]
    assert "hides every key of a row" in run.captured[0].reason
    run.assert_close()


@pytest.mark.slow  # Inductor compiles C++ for the rest of the graph: ~20 s on a cold cache
def test_inductor_compiles_the_rest_of_the_graph():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = torch.nn.Linear(16, 48)

        def forward(self, x):
            b, n, _ = x.shape
            q, k, v = self.qkv(x).reshape(b, n, 3, 2, 8).permute(2, 0, 3, 1, 4).unbind(0)
            out = _attention(q, k, v)
            return out.transpose(1, 2).reshape(b, n, 16).relu()

    run = compile_run(Block().eval(), torch.randn(2, 6, 16), options={"fallback": "inductor"})
    assert len(run.captured) == 1
    run.assert_close()
