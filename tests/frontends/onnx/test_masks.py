"""Constant masks become cascade predicates; biases stay inputs (the ``sites.recognise`` hook)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

from einscade.frontends.mask_structure import natten_axis_mask
from einscade.frontends.onnx import find_sites, load_model, rewrite_model
from einscade.frontends.onnx.masks import recognise_constant
from einscade.ir import parse, print_cascade
from tests.frontends.onnx import models

P = 6


def _additive(attend: np.ndarray, hidden: float = -np.inf) -> np.ndarray:
    return np.where(attend, 0.0, hidden).astype(np.float32)


def _natten_grid(side: int, kernel: int) -> np.ndarray:
    """NATTEN on a side x side grid, separable: the AND of the two axis masks."""
    axis = natten_axis_mask(side, kernel, 1, 1, False).numpy()
    return (axis[:, None, :, None] & axis[None, :, None, :]).reshape(side * side, side * side)


@pytest.mark.parametrize("hidden", [-np.inf, -1e4, np.finfo(np.float32).min])
def test_causal_additive_masks_in_every_fill(hidden):
    found = recognise_constant(_additive(np.tril(np.ones((P, P), bool)), hidden)[None, None])
    assert found.describe() == "causal (causal=top_left)" and found.is_causal() == "top_left"


def test_bias_with_a_separable_mask_keeps_both():
    rng = np.random.default_rng(0)
    bias = (rng.standard_normal((P, P)) * 0.1).astype(np.float32)
    window = np.abs(np.arange(P)[:, None] - np.arange(P)[None, :]) <= 1
    found = recognise_constant(np.where(window, bias, -np.inf).astype(np.float32))
    assert found.family == "sliding_window" and found.bias and found.is_causal() is None


def test_swin_fill_of_minus_100_is_a_mask_but_not_a_near_miss():
    rng = np.random.default_rng(1)
    bias = (rng.standard_normal((P, P)) * 0.02).astype(np.float32)
    causal = np.tril(np.ones((P, P), bool))
    found = recognise_constant(np.where(causal, bias, -100.0).astype(np.float32))
    assert found.family == "causal" and found.bias and found.masked_at == -100.0
    assert any("-100" in note for note in found.notes)
    # Two different fills are no single fill: the tensor is a bias of no mask family.
    mixed = np.where(causal, 0.0, -100.0).astype(np.float32)
    mixed[-1, 0] = -60.0
    assert recognise_constant(mixed).family == "full" and recognise_constant(mixed).bias


def test_a_plain_bias_and_an_unknown_mask():
    rng = np.random.default_rng(2)
    assert recognise_constant(rng.standard_normal((P, P)).astype(np.float32)).describe() == (
        "full + bias"
    )
    scattered = rng.random((P, P)) < 0.5
    np.fill_diagonal(scattered, True)
    assert recognise_constant(_additive(scattered)) is None  # stays the bias input, unnamed
    assert recognise_constant(scattered) is None


def test_neighborhood_mask_on_the_square_token_grid():
    found = recognise_constant(_natten_grid(5, 3))
    assert found.family == "neighborhood" and dict(found.structure.params)["grid"] == (5, 5)
    # Kernel 3 on 4 tokens per axis is the same mask as HaloNet blocks of 2 with halo 1,
    # and the plainer predicate is named.
    assert recognise_constant(_natten_grid(4, 3)).describe() == (
        "halo (grid=(4, 4), block=(2, 2), halo=(1, 1))"
    )


def _save(model: onnx.ModelProto, path):
    onnx.save(model, path)
    return path


def test_neighborhood_site_carries_its_cascade_through_every_mode(tmp_path):
    source = _save(models.constant_mask_chain(_additive(_natten_grid(5, 3))), tmp_path / "na.onnx")
    (site,) = find_sites(load_model(source).model).sites
    assert site.cascade.name == "neighborhood_attention"
    assert site.mask_family.startswith("neighborhood (grid=(5, 5), kernel=(3, 3)")
    assert "start_x <= mx" in print_cascade(site.cascade)
    feeds = models.feeds_for(source)
    expected = models.run(source, feeds)[0]
    for mode in ("function", "onnx-attention", "ort"):
        out = tmp_path / f"na_{mode}.onnx"
        (decision,) = rewrite_model(source, out, mode).decisions
        assert decision.rewritten, (mode, decision.reason)
        np.testing.assert_allclose(models.run(out, feeds)[0], expected, atol=1e-5, rtol=1e-4)
    call = next(n for n in ir.load(tmp_path / "na_function.onnx").graph if n.domain == "einscade")
    text = call.attributes["cascade"].as_string()
    assert text.startswith("# mask 'mask': neighborhood (grid=(5, 5)")
    assert parse(text) == site.cascade


def test_full_mask_is_dropped_and_bias_part_kept(tmp_path):
    rng = np.random.default_rng(3)
    bias = (rng.standard_normal((P, P)) * 0.1).astype(np.float32)
    cases = {
        "full": (np.zeros((P, P), np.float32), "constant mask hides nothing: dropped", "full"),
        "bias": (
            np.where(np.tril(np.ones((P, P), bool)), bias, -np.inf),
            "",
            "causal (causal=top_left) + bias",
        ),
    }
    for name, (mask, remark, family) in cases.items():  # fmt: skip
        source = _save(models.constant_mask_chain(mask), tmp_path / f"{name}.onnx")
        (site,) = find_sites(load_model(source).model).sites
        assert site.mask_family == family
        assert ("bias[b, h, p, m]" in print_cascade(site.cascade)) == (name == "bias")
        (decision,) = rewrite_model(source, tmp_path / f"{name}_ort.onnx", "ort").decisions
        assert decision.rewritten and decision.reason == remark


def test_swin_window_mask_between_reshapes_is_part_of_the_site(tmp_path):
    source = _save(models.swin_window_chain(), tmp_path / "swin.onnx")
    (site,) = find_sites(load_model(source).model).sites
    assert site.mask == "bias" and "+ window mask constant float [1, 2, 1, 4, 4]" in site.mask_form
    assert any("Swin's shifted windows" in note for note in site.notes)
    assert "bias[b, h, p, m]" in print_cascade(site.cascade)
    feeds = models.feeds_for(source)
    expected = models.run(source, feeds)[0]
    for mode in ("function", "onnx-attention", "ort"):
        out = tmp_path / f"swin_{mode}.onnx"
        (decision,) = rewrite_model(source, out, mode).decisions
        assert decision.rewritten, (mode, decision.reason)
        np.testing.assert_allclose(models.run(out, feeds)[0], expected, atol=1e-5, rtol=1e-4)
