"""``--to ort``: com.microsoft MultiHeadAttention / GroupQueryAttention, run in onnxruntime."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest

from einscade.compiler.cli import main
from einscade.frontends.onnx import find_sites, load_model, rewrite_model
from einscade.ir import print_cascade
from tests.frontends.onnx import models

# (model, {op: count} after the rewrite, sites kept)
EXPORTED = [
    ("hand_d18", {"MultiHeadAttention": 1}, 0),  # constant causal mask -> unidirectional
    ("hand_legacy", {"MultiHeadAttention": 1}, 0),
    # bool mask; causal GQA, whose K and V the export repeats: GroupQueryAttention reads 2 heads
    ("sdpa_d18", {"MultiHeadAttention": 1, "GroupQueryAttention": 1}, 0),
    ("sdpa_d23", {"MultiHeadAttention": 1, "GroupQueryAttention": 1}, 0),  # causal GQA op
]


def _ms_ops(path) -> Counter[str]:
    graph = onnx.load(path, load_external_data=False).graph
    return Counter(n.op_type for n in graph.node if n.domain == "com.microsoft")


def _same_outputs(source, out) -> None:
    feeds = models.feeds_for(source)
    for a, b in zip(models.run(source, feeds), models.run(out, feeds), strict=True):
        np.testing.assert_allclose(b, a, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("name", "ops", "kept"), EXPORTED)
def test_exported_models_become_contrib_ops(exported, tmp_path, name, ops, kept):
    source, out = exported(name), tmp_path / "out.onnx"
    before = models.fingerprint(source.parent)
    result = rewrite_model(source, out, "ort")
    assert sum(not d.rewritten for d in result.decisions) == kept
    assert _ms_ops(out) == Counter(ops)
    assert Counter(n.op_type for n in onnx.load(out).graph.node)["Softmax"] == 0
    _same_outputs(source, out)
    assert models.fingerprint(source.parent) == before


def test_constant_causal_mask_becomes_the_unidirectional_flag(exported, tmp_path):
    out = tmp_path / "out.onnx"
    (decision,) = rewrite_model(exported("hand_d18"), out, "ort").decisions
    assert decision.reason == "constant causal mask -> causal flag"
    (node,) = [n for n in onnx.load(out).graph.node if n.op_type == "MultiHeadAttention"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["unidirectional"] == 1 and len(node.input) == 3  # no attention_bias


def test_rewritten_model_is_found_again_as_contrib_sites(exported, tmp_path):
    out = tmp_path / "out.onnx"
    rewrite_model(exported("sdpa_d23"), out, "ort")
    found = find_sites(load_model(out).model)
    gqa, mha = sorted(found.sites, key=lambda s: s.family)
    assert (gqa.family, mha.family) == ("ms-gqa", "ms-mha") and not found.misses
    assert mha.mask_form == "float [1, 1, 6, 6]"  # the bool [6, 6] mask, expanded
    assert gqa.causal is True and gqa.kv_heads and gqa.mask is None
    text = print_cascade(gqa.cascade)
    assert "if m <= seqlens_k[b] and m <= p" in text and "K[b, h // G, m, e]" in text


def test_symbolic_dims_mask_expanded_and_3d_attention_op(tmp_path):
    chain, att3d = tmp_path / "chain.onnx", tmp_path / "att3d.onnx"
    onnx.save(models.chain_model(), chain)  # [B, 2, N, 8], mask [N, N] as an input
    onnx.save(models.attention_3d_model(), att3d)  # [B, S, H*E], 4 / 2 heads, causal
    for source, op in ((chain, "MultiHeadAttention"), (att3d, "GroupQueryAttention")):
        out = tmp_path / f"{source.stem}_ort.onnx"
        (decision,) = rewrite_model(source, out, "ort").decisions
        assert decision.rewritten and _ms_ops(out) == Counter({op: 1})
        _same_outputs(source, out)


def test_softcap_and_multi_query_go_to_group_query_attention(tmp_path):
    for name, model in (("softcap", models.attention_op_model(softcap=5.0, kv_heads=4)),
                        ("mqa", models.attention_op_model(kv_heads=1))):  # fmt: skip
        source, out = tmp_path / f"{name}.onnx", tmp_path / f"{name}_ort.onnx"
        onnx.save(model, source)
        rewrite_model(source, out, "ort")
        assert _ms_ops(out) == Counter({"GroupQueryAttention": 1}), name
        _same_outputs(source, out)


def test_sites_the_ops_cannot_express_are_kept_with_the_reason(tmp_path):
    cases = {
        "runtime_scale": (models.chain_model(scale_input=True), "computed at run time"),
        "kv_cache": (models.kv_cache_attention_model(), "present_key/present_value"),
    }
    for name, (model, reason) in cases.items():
        source, out = tmp_path / f"{name}.onnx", tmp_path / f"{name}_ort.onnx"
        onnx.save(model, source)
        (decision,) = rewrite_model(source, out, "ort").decisions
        assert not decision.rewritten and reason in decision.reason, (name, decision.reason)


def test_repeated_kv_heads_are_read_once_by_group_query_attention(exported, tmp_path):
    out = tmp_path / "out.onnx"
    masked, causal = rewrite_model(exported("sdpa_d18"), out, "ort").decisions
    assert causal.reason.endswith("GroupQueryAttention reads their 2 KV heads")
    (node,) = [n for n in onnx.load(out).graph.node if n.op_type == "GroupQueryAttention"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["num_heads"] == 4 and attrs["kv_num_heads"] == 2 and attrs["causal"] == 1
    # The repeat (Unsqueeze -> Expand -> Reshape of K and V) is gone with the chain.
    graph = onnx.load(out).graph
    producer = {o: n for n in graph.node for o in n.output}
    repeats = [
        n for n in graph.node  # (ours are named after the site; the mask is unsqueezed)
        if n.op_type == "Expand" and producer[n.input[0]].op_type == "Unsqueeze"
        and "__einscade" not in n.name
    ]  # fmt: skip
    assert not repeats


def test_cli_report_names_the_contrib_op(exported, tmp_path, capsys):
    target = tmp_path / "out.onnx"
    code = main(["onnx", "rewrite", str(exported("sdpa_d23")), "-o", str(target), "--to", "ort",
                 "--report"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    for text in ("com.microsoft::GroupQueryAttention", "com.microsoft::MultiHeadAttention",
                 f"wrote {target}: 2 of 2 site(s) rewritten as GroupQueryAttention, "
                 "MultiHeadAttention"):  # fmt: skip
        assert text in out, text
