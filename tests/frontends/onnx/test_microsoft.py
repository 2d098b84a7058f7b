"""com.microsoft Attention / MultiHeadAttention nodes are sites; progress bars on large models."""

from __future__ import annotations

import io

import numpy as np
import onnx
from rich.console import Console

import einscade.frontends.onnx.progress as progress_module
from einscade.compiler.cli import main
from einscade.frontends.onnx import find_sites, load_model, rewrite_model
from einscade.frontends.onnx.progress import Steps
from einscade.frontends.onnx.rewrite import rewrite_sites
from einscade.ir import print_cascade
from tests.frontends.onnx import models


def _ms_attention(tmp_path, unidirectional: int = 0):
    model = models.ms_attention_model()
    if unidirectional:
        model.graph.node[0].attribute.append(onnx.helper.make_attribute("unidirectional", 1))
    path = tmp_path / "ms.onnx"
    onnx.save(model, path)
    return path


def test_attention_with_fused_projection_is_a_site(tmp_path, capsys):
    source = _ms_attention(tmp_path)
    (site,) = find_sites(load_model(source).model).sites
    assert site.family == "ms-attention" and site.mask == "mask_index"
    assert site.mask_form == "int32 [2, 6] (key padding)"
    assert "projected inside the op: 'x' @ 'w' + 'b'" in site.notes[0]
    assert "bias[b, h, p, m]" in print_cascade(site.cascade)
    assert main(["onnx", "inspect", str(source)]) == 0
    out = capsys.readouterr().out
    assert "ms-attention" in out and "cascade @softmax_attention(" in out


def test_rotary_inside_the_op_is_never_rewritten(tmp_path):
    model = models.ms_attention_model()
    model.graph.node[0].attribute.append(onnx.helper.make_attribute("do_rotary", 1))
    path = tmp_path / "rotary.onnx"
    onnx.save(model, path)
    loaded = load_model(path).model
    (site,) = find_sites(loaded).sites
    assert site.unsupported == ("rotary embedding of Q and K (do_rotary=1)",)
    (decision,) = rewrite_sites(loaded, (site,), "function")
    assert not decision.rewritten and "rotary embedding" in decision.reason


def test_unidirectional_is_the_causal_predicate(tmp_path):
    (site,) = find_sites(load_model(_ms_attention(tmp_path, unidirectional=1)).model).sites
    assert site.causal is True and "if m <= p" in print_cascade(site.cascade)


def test_function_mode_wraps_contrib_ops_and_other_modes_keep_them(tmp_path):
    source = _ms_attention(tmp_path)
    feeds = models.feeds_for(source)
    expected = models.run(source, feeds)[0]
    for mode, rewritten in (("function", True), ("ort", False), ("onnx-attention", False)):
        out = tmp_path / f"{mode}.onnx"
        (decision,) = rewrite_model(source, out, mode).decisions
        assert decision.rewritten == rewritten, (mode, decision.reason)
        np.testing.assert_allclose(models.run(out, feeds)[0], expected, atol=1e-5, rtol=1e-4)
    # Inside the function the node is found again, with the same cascade.
    (again,) = find_sites(load_model(tmp_path / "function.onnx").model).sites
    assert again.container.startswith("function einscade::") and again.family == "ms-attention"


def test_multi_head_attention_written_by_ort_mode_is_read_back(exported, tmp_path):
    out = tmp_path / "out.onnx"
    rewrite_model(exported("hand_d18"), out, "ort")
    (site,) = find_sites(load_model(out).model).sites
    assert site.family == "ms-mha" and site.causal is True and site.mask is None
    assert site.layout == "[batch, tokens, heads*dim] (num_heads=2)"
    assert "K and V are given as [batch, heads, tokens, dim]" in site.notes
    assert "if m <= p" in print_cascade(site.cascade)


def test_progress_bars_for_discovery_and_validation(exported, tmp_path):
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=120)
    rewrite_model(exported("hand_d18"), tmp_path / "out.onnx", "ort", progress=True,
                  progress_console=console)  # fmt: skip
    shown = buffer.getvalue()
    assert "finding attention in graph" in shown and "validating: onnxruntime" in shown
    quiet = io.StringIO()
    with Steps(False, Console(file=quiet, force_terminal=True)) as steps:
        assert list(steps.track(range(3), 3, "nothing shown")) == [0, 1, 2]
    assert quiet.getvalue() == ""


def test_large_means_many_nodes_or_bytes(exported, monkeypatch):
    loaded = load_model(exported("hand_d18"))
    assert not progress_module.is_large(loaded.model, [loaded.path])
    monkeypatch.setattr(progress_module, "LARGE_BYTES", loaded.path.stat().st_size - 1)
    assert progress_module.is_large(loaded.model, [loaded.path])
    monkeypatch.setattr(progress_module, "LARGE_NODES", len(loaded.model.graph) - 1)
    assert progress_module.is_large(loaded.model, [])
