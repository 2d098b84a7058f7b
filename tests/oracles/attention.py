"""Oracle attention computations in float64, written with plain torch ops (no SDPA, no flex).

Layout: heads-first ``[B, H, N, D]`` (as ``torch.nn.functional.scaled_dot_product_attention``).
Grouped-query attention (``H_q != H_kv``, ``H_q % H_kv == 0``) is handled by
``repeat_interleave`` of the K/V heads along dim 1, i.e. query head ``h`` uses KV head
``h // (H_q // H_kv)`` (same convention as SDPA ``enable_gqa=True``).

Results are returned in the dtype of ``q`` unless ``out_dtype`` is given (pass
``torch.float64`` to keep the full-precision reference).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "causal_linear_attention_loop",
    "feature_map_fn",
    "linear_attention_dense",
    "masked_softmax_attention",
]


def _expand_kv_heads(q: torch.Tensor, t: torch.Tensor, name: str) -> torch.Tensor:
    hq, hkv = q.shape[1], t.shape[1]
    if hq == hkv:
        return t
    if hkv < 1 or hq % hkv != 0:
        raise ValueError(f"query heads {hq} not a multiple of {name} heads {hkv}")
    return t.repeat_interleave(hq // hkv, dim=1)


def _check_4d(**tensors: torch.Tensor) -> None:
    for name, t in tensors.items():
        if t.dim() != 4:
            raise ValueError(f"{name} must be [B, H, N, D], got shape {tuple(t.shape)}")


def masked_softmax_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    scale: float | None = None,
    softcap: float | None = None,
    *,
    return_lse: bool = False,
    out_dtype: torch.dtype | None = None,
):
    """Softmax attention ``out = softmax(scores) @ V`` computed in float64.

    Args:
        q: ``[B, H_q, P, D]``.
        k: ``[B, H_kv, M, D]``.
        v: ``[B, H_kv, M, Dv]``.
        mask: bool, broadcastable to ``[B, H_q, P, M]`` (e.g. ``[P, M]``); True = attend.
        bias: additive float bias, broadcastable to ``[B, H_q, P, M]``; ``-inf`` entries act
            as masked.
        scale: score scale, default ``1 / sqrt(D)``.
        softcap: if given, ``scores = softcap * tanh(scores / softcap)``.
        return_lse: also return the natural-log sum-exp of the final scores over the
            attended keys, ``[B, H_q, P]`` (``-inf`` for fully masked rows).
        out_dtype: dtype of the result, default ``q.dtype``.

    Score order: ``s = scale * (q @ k^T)``; then softcap; then ``+ bias``; then the mask.
    A query row with no attended key (all masked and/or all ``-inf``) outputs exactly 0
    (never NaN).
    """
    _check_4d(q=q, k=k, v=v)
    out_dtype = q.dtype if out_dtype is None else out_dtype
    qd = q.to(torch.float64)
    kd = _expand_kv_heads(q, k, "k").to(torch.float64)
    vd = _expand_kv_heads(q, v, "v").to(torch.float64)
    D = q.shape[-1]
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)

    s = torch.matmul(qd, kd.transpose(-1, -2)) * scale  # [B, H, P, M]
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    if bias is not None:
        s = s + bias.to(torch.float64)
    if mask is not None:
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be bool, got {mask.dtype}")
        allowed = torch.broadcast_to(mask, s.shape)
    else:
        allowed = torch.ones(s.shape, dtype=torch.bool)
    allowed = allowed & (s != float("-inf"))
    s = s.masked_fill(~allowed, float("-inf"))

    row_max = s.amax(dim=-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    p = torch.exp(s - row_max)
    p = torch.where(allowed, p, torch.zeros_like(p))
    denom = p.sum(dim=-1, keepdim=True)  # [B, H, P, 1]
    has_key = denom > 0
    safe_denom = torch.where(has_key, denom, torch.ones_like(denom))
    out = torch.matmul(p / safe_denom, vd)
    out = torch.where(has_key, out, torch.zeros_like(out))
    out = out.to(out_dtype)
    if not return_lse:
        return out
    lse = torch.where(
        has_key, torch.log(safe_denom) + row_max, torch.full_like(denom, float("-inf"))
    ).squeeze(-1)
    return out, lse


FeatureMap = str | Callable[[torch.Tensor], torch.Tensor]


def feature_map_fn(feature_map: FeatureMap) -> Callable[[torch.Tensor], torch.Tensor]:
    """``phi`` for linear attention: ``"elu+1"`` (``elu(x) + 1``), ``"relu"``, ``"identity"``,
    or any callable applied elementwise / on the last dim."""
    if callable(feature_map):
        return feature_map
    if feature_map == "elu+1":
        return lambda x: F.elu(x) + 1.0
    if feature_map == "relu":
        return F.relu
    if feature_map == "identity":
        return lambda x: x
    raise ValueError(f"unknown feature map {feature_map!r}")


def causal_linear_attention_loop(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    feature_map: FeatureMap = "elu+1",
    *,
    eps: float = 0.0,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Causal linear attention as the sequential recurrence, one time step at a time (float64):

        S_t = S_{t-1} + phi(k_t) v_t^T        (S_0 = 0, [D, Dv])
        z_t = z_{t-1} + phi(k_t)              (z_0 = 0, [D])
        out_t = phi(q_t) S_t / (phi(q_t) . z_t + eps)

    ``q, k``: ``[B, H, N, D]`` (k may have fewer heads, GQA); ``v``: ``[B, H_kv, N, Dv]``.
    No guard for a zero denominator other than ``eps`` (0/0 gives NaN, as the formula says).
    """
    _check_4d(q=q, k=k, v=v)
    out_dtype = q.dtype if out_dtype is None else out_dtype
    phi = feature_map_fn(feature_map)
    fq = phi(q.to(torch.float64))
    fk = phi(_expand_kv_heads(q, k, "k").to(torch.float64))
    vd = _expand_kv_heads(q, v, "v").to(torch.float64)
    B, H, N, D = fq.shape
    Dv = vd.shape[-1]
    if fk.shape[2] != N or vd.shape[2] != N:
        raise ValueError("causal linear attention needs equal query and key lengths")
    S = torch.zeros(B, H, D, Dv, dtype=torch.float64)
    z = torch.zeros(B, H, D, dtype=torch.float64)
    outs = []
    for t in range(N):
        S = S + fk[:, :, t, :, None] * vd[:, :, t, None, :]
        z = z + fk[:, :, t, :]
        num = torch.einsum("bhd,bhde->bhe", fq[:, :, t, :], S)
        den = (fq[:, :, t, :] * z).sum(-1, keepdim=True) + eps
        outs.append(num / den)
    return torch.stack(outs, dim=2).to(out_dtype)


def linear_attention_dense(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    feature_map: FeatureMap = "elu+1",
    *,
    eps: float = 0.0,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Non-causal linear attention via the dense score matrix (float64):

    A = phi(Q) phi(K)^T                    ([B, H, P, M])
    out = (A @ V) / (rowsum(A) + eps)
    """
    _check_4d(q=q, k=k, v=v)
    out_dtype = q.dtype if out_dtype is None else out_dtype
    phi = feature_map_fn(feature_map)
    fq = phi(q.to(torch.float64))
    fk = phi(_expand_kv_heads(q, k, "k").to(torch.float64))
    vd = _expand_kv_heads(q, v, "v").to(torch.float64)
    A = torch.matmul(fq, fk.transpose(-1, -2))
    return (torch.matmul(A, vd) / (A.sum(-1, keepdim=True) + eps)).to(out_dtype)
