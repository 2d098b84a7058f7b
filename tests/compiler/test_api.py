"""``einscade.compile``: targets, options, errors."""

from __future__ import annotations

import warnings

import pytest
import torch

import einscade
from einscade.compiler import api
from einscade.ir.errors import EinscadeError


def _qkv(tokens: int, heads: int = 2, dim: int = 16, seed: int = 0):  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    return {n: torch.randn(1, heads, tokens, dim, generator=g) for n in ("Q", "K", "V")}


def test_torch_target_is_the_default_and_exact() -> None:
    cascade = einscade.neighborhood_attention(grid=(12, 10), kernel=(5, 3))
    attention = einscade.compile(cascade)
    assert attention.target == "torch" and attention.program is not None
    tensors = _qkv(120)
    out = attention(**tensors)
    expected = einscade.reference(cascade, dtype=torch.float64, **tensors)
    torch.testing.assert_close(out.double(), expected, rtol=2e-5, atol=2e-5)
    assert attention.stats.computed_elements < attention.stats.dense_elements


def test_torch_target_options_reach_the_lowering() -> None:
    cascade = einscade.softmax_attention(causal=True)
    attention = einscade.compile(cascade, query_tile=(16,), budget=1000, workers=2)
    out = attention(**_qkv(70))
    torch.testing.assert_close(out, einscade.reference(cascade, **_qkv(70)), rtol=1e-5, atol=1e-5)
    (plan,) = attention.program.plans.values()  # type: ignore[union-attr]
    assert plan.choice.query_tile == (16,)


def test_first_call_stays_under_two_seconds() -> None:
    cascade = einscade.neighborhood_attention(grid=(56, 56), kernel=(7, 7))
    attention = einscade.compile(cascade)
    attention(**_qkv(56 * 56, heads=1, dim=8))
    assert attention.stats.plan_seconds < 2.0


def test_unknown_target_and_options_are_named() -> None:
    cascade = einscade.softmax_attention()
    with pytest.raises(EinscadeError, match="unknown target 'cuda'"):
        einscade.compile(cascade, target="cuda")
    with pytest.raises(EinscadeError, match="unknown option 'tile'"):
        einscade.compile(cascade, target="triton", tile=3)
    with pytest.raises(TypeError, match="unknown option 'tile'"):
        einscade.compile(cascade, tile=3)
    with pytest.raises(EinscadeError, match="expects a Cascade"):
        einscade.compile("softmax")  # type: ignore[arg-type]
    with pytest.raises(EinscadeError, match="torch target only"):
        _ = einscade.compile(cascade, target="triton").stats


def test_triton_target_runs_cpu_tensors_under_the_interpreter_with_one_warning() -> None:
    cascade = einscade.softmax_attention(causal=True)
    attention = einscade.compile(cascade, target="triton", block_p=16, block_m=16)
    tensors = _qkv(20, heads=1, dim=16)
    api_warned = "triton-interpreter" in _warned()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = attention(**tensors)
        attention(**tensors)
    messages = [str(w.message) for w in caught if "interpreter" in str(w.message)]
    assert len(messages) == (0 if api_warned else 1)
    torch.testing.assert_close(out, einscade.reference(cascade, **tensors), rtol=1e-4, atol=1e-4)
    # built for the inputs' dtype and head sizes (the probe for head symbols is the other)
    assert (torch.float32, (("E", 16), ("F", 16)), None) in attention._kernels
    assert len(attention._kernels) <= 2


def test_triton_target_chooses_the_configuration_for_the_inputs_head_sizes() -> None:
    cascade = einscade.softmax_attention()
    attention = einscade.compile(cascade, target="triton")
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(1, 1, 9, 24, generator=g) for _ in range(2))
    v = torch.randn(1, 1, 9, 40, generator=g)  # unequal QK and V head dims, not powers of two
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = attention(Q=q, K=k, V=v)
    torch.testing.assert_close(
        out, einscade.reference(cascade, Q=q, K=k, V=v), rtol=1e-4, atol=1e-4
    )
    built = attention._kernels[(torch.float32, (("E", 24), ("F", 40)), None)]
    assert dict(built.options.head_dims) == {"E": 24, "F": 40}


def _warned() -> set[str]:
    from einscade.codegen.torch_lowering import program

    return program._WARNED


def test_module_exports_compile() -> None:
    assert einscade.compile is api.compile
