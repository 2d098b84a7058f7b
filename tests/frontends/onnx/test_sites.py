"""Finding attention sites in exported models and lifting them into cascades."""

from __future__ import annotations

import math

import onnx

import einscade.frontends.onnx.sites as sites_module
from einscade.frontends.onnx import find_sites, load_model
from einscade.ir import parse, print_cascade
from tests.frontends.onnx import models


def _sites(path):
    return find_sites(load_model(path).model)


def test_hand_chain_dynamo_opset18_is_one_site_with_constant_causal_mask(exported):
    found = _sites(exported("hand_d18"))
    assert len(found.sites) == 1 and not found.misses
    site = found.sites[0]
    assert site.family == "decomposed" and site.container == "graph"
    assert site.scale_form == "Mul on the scores" and math.isclose(site.scale, 0.35, rel_tol=1e-6)
    assert site.mask == "mask" and site.mask_form == "constant float [6, 6]"
    assert dict(site.shapes)["Q"] == "[2, 2, 6, 8]"
    assert site.layout == "[batch, heads, tokens, dim]"
    # The triu(-1e4) buffer is the causal mask: a predicate, no bias input.
    assert site.mask_family == "causal (causal=top_left)"
    text = print_cascade(site.cascade)
    assert "param scale: float = 0.35" in text and "if m <= p" in text and "bias" not in text
    assert parse(text) == site.cascade


def test_recognise_hook_set_to_none_lifts_constant_masks_as_bias(exported, monkeypatch):
    monkeypatch.setattr(sites_module, "recognise", None)
    (site,) = _sites(exported("hand_d18")).sites
    assert site.mask_family is None and "bias[b, h, p, m]" in print_cascade(site.cascade)


def test_hand_chain_legacy_exporter_is_found_too(exported):
    found = _sites(exported("hand_legacy"))
    assert len(found.sites) == 1
    site = found.sites[0]
    assert site.q.startswith("/") and math.isclose(site.scale, 0.35, rel_tol=1e-6)
    assert site.node_names[-1] == "/MatMul_1"


def test_sdpa_at_opset23_gives_two_attention_ops(exported):
    masked, causal = _sites(exported("sdpa_d23")).sites
    assert masked.family == causal.family == "attention-op"
    assert masked.mask_form == "bool [6, 6]" and not masked.causal and not masked.kv_heads
    assert causal.causal is True and causal.kv_heads and causal.mask is None
    text = print_cascade(causal.cascade)
    assert "if m <= p" in text and "K[b, h // G, m, e]" in text and "1 / sqrt(E)" in text


def test_sdpa_at_opset18_is_decomposed_with_sqrt_scale_on_q_and_k(exported):
    masked, causal = _sites(exported("sdpa_d18")).sites
    for site in (masked, causal):
        assert site.family == "decomposed" and site.scale_form == "Mul on Q, Mul on K"
        assert math.isclose(site.scale, 8**-0.5, rel_tol=1e-6)
        assert "param scale: float = 1 / sqrt(E)" in print_cascade(site.cascade)
    assert any("IsNaN" in note for note in masked.notes)  # the boolean mask's guard
    # K of the grouped-query call is repeated to 4 heads by Expand + Reshape.
    assert any(note.startswith("K = Reshape(") for note in causal.notes)


def test_attention_op_on_3d_inputs_records_head_counts(tmp_path):
    path = tmp_path / "att3d.onnx"
    onnx.save(models.attention_3d_model(), path)
    (site,) = _sites(path).sites
    assert site.kv_heads and site.causal is True and site.scale == 0.25
    assert site.layout.endswith("(q_num_heads=4, kv_num_heads=2)")


def test_hand_built_chain_with_symbolic_dims(tmp_path):
    path = tmp_path / "chain.onnx"
    onnx.save(models.chain_model(), path)
    (site,) = _sites(path).sites
    assert dict(site.shapes)["Q"] == "[B, 2, N, 8]" and site.mask_form == "float [N, N]"
    assert site.values.key_perm is None  # K^T = Transpose(k, [0, 1, 3, 2]): K is k itself


def _masked_by_max() -> onnx.ModelProto:
    model = models.chain_model()
    model.graph.node[3].op_type = "Max"  # Max(scores, mask) instead of Add
    return model


def test_misses_say_why(tmp_path):
    cases = {
        "max": (_masked_by_max(), "the scores reach the Softmax from Max sm node"),
        "axis": (models.chain_model(softmax_axis=1), "Softmax normalises axis 1"),
        "escape": (models.chain_model(expose_weights=True), "'w' is a graph output"),
        "scale": (models.chain_model(scale_shape=(8, 1)), "not a scalar"),
    }
    for name, (model, reason) in cases.items():
        path = tmp_path / f"{name}.onnx"
        onnx.save(model, path)
        found = _sites(path)
        assert not found.sites, name
        (miss,) = found.misses
        assert miss.node == "w node" and reason in miss.reason, (name, miss.reason)
