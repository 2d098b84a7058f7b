"""com.microsoft GroupQueryAttention sites: their cascade computes what onnxruntime does."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from einscade.codegen.reference import reference
from einscade.compiler.cli import main
from einscade.frontends.onnx import find_sites, load_model, rewrite_model
from einscade.frontends.onnx.rewrite import rewrite_sites
from einscade.ir import parse, print_cascade
from tests.frontends.onnx import models

LENGTHS = np.array([5, 2], np.int32)  # seqlens_k: entry 1 holds 3 of the 6 keys


def _save(tmp_path, model, name="gqa.onnx"):
    path = tmp_path / name
    onnx.save(model, path)
    return path


def _heads(x: np.ndarray, heads: int) -> torch.Tensor:
    """[B, T, heads*8] -> [B, heads, T, 8]."""
    return torch.from_numpy(x.reshape(2, models.TOKENS, heads, 8).transpose(0, 2, 1, 3).copy())


@pytest.mark.parametrize(
    "attrs", [{}, {"local_window_size": 2, "softcap": 3.0, "scale": 0.3}, {"causal": 0}]
)
def test_cascade_matches_onnxruntime_with_key_padding(tmp_path, attrs):
    path = _save(tmp_path, models.gqa_model(lengths_inside=False, **attrs))
    (site,) = find_sites(load_model(path).model).sites
    assert site.family == "ms-gqa" and site.kv_heads and site.causal is ("causal" not in attrs)
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((2, models.TOKENS, n)).astype(np.float32) for n in (32, 16, 16))
    feeds = {"q": q, "k": k, "v": v, "seqlens_k": LENGTHS, "total": np.array(6, np.int32)}
    expected = models.run(path, feeds)[0]
    lengths = torch.from_numpy(LENGTHS.astype(np.int64))
    av = reference(site.cascade, Q=_heads(q, 4), K=_heads(k, 2), V=_heads(v, 2), seqlens_k=lengths)
    got = av.numpy().transpose(0, 2, 1, 3).reshape(expected.shape)
    # Query rows past an entry's length are padding: with a window they may see no key (the
    # cascade gives 0, onnxruntime something else); every real row must agree.
    real = np.arange(models.TOKENS)[None, :] <= LENGTHS[:, None]
    np.testing.assert_allclose(got[real], expected[real], atol=1e-5, rtol=1e-4)
    if "local_window_size" not in attrs:
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-4)


def test_window_softcap_and_lengths_are_in_the_cascade(tmp_path):
    path = _save(tmp_path, models.gqa_model(local_window_size=2, softcap=3.0))
    (site,) = find_sites(load_model(path).model).sites
    text = print_cascade(site.cascade)
    assert "cascade @group_query_attention(Q[b, h, p, e], K[b, hk, m, e]" in text
    assert "if m <= seqlens_k[b] and m <= p and m > p - window" in text
    assert "param window: int = 2" in text and "softcap * tanh(" in text
    assert parse(text) == site.cascade
    assert site.layout == "[batch, tokens, heads*dim] (num_heads=4, kv_num_heads=2)"
    assert any("2 most recent keys" in note for note in site.notes)


@pytest.mark.parametrize("lengths_inside", [True, False])
def test_function_mode_wraps_it_and_other_modes_keep_it(tmp_path, lengths_inside, monkeypatch):
    monkeypatch.chdir(tmp_path / ".")  # onnxruntime's shape inference writes nothing here
    # Lengths as graph inputs: validation feeds the lengths K implies, not random ints.
    source = _save(tmp_path, models.gqa_model(lengths_inside=lengths_inside))
    feeds = models.feeds_for(source)
    if not lengths_inside:
        feeds.update(seqlens_k=np.full(2, 5, np.int32), total=np.array(6, np.int32))
    expected = models.run(source, feeds)[0]
    for mode, rewritten in (("function", True), ("ort", False), ("onnx-attention", False)):
        out = tmp_path / f"{mode}.onnx"
        (decision,) = rewrite_model(source, out, mode).decisions
        assert decision.rewritten == rewritten, (mode, decision.reason)
        np.testing.assert_allclose(models.run(out, feeds)[0], expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["gqa.onnx", "function.onnx", "ort.onnx", "onnx-attention.onnx"]
    )
    (again,) = find_sites(load_model(tmp_path / "function.onnx").model).sites
    assert again.family == "ms-gqa" and again.container.startswith("function einscade::")


def test_packed_qkv_and_rotary_is_listed_but_never_rewritten(tmp_path, capsys):
    packed = _save(tmp_path, models.gqa_model(packed=True), "packed.onnx")
    (site,) = find_sites(load_model(packed).model).sites
    assert site.layout.startswith("packed QKV") and site.k == "" and not site.unsupported
    rotary = _save(tmp_path, models.gqa_model(do_rotary=1), "rotary.onnx")
    (site,) = find_sites(load_model(rotary).model).sites
    assert site.unsupported == ("rotary embedding of Q and K (do_rotary=1)",)
    model = load_model(rotary).model  # (no cos/sin caches: onnxruntime would refuse to run it)
    (decision,) = rewrite_sites(model, find_sites(model).sites, "function")
    assert not decision.rewritten and "does not describe what the op computes" in decision.reason
    assert main(["onnx", "inspect", str(rotary)]) == 0
    out = capsys.readouterr().out
    assert "ms-gqa" in out and "not in the cascade: rotary embedding" in out
