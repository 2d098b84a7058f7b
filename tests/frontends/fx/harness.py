"""Compile with the einscade backend, run compiled and eager, keep the site records."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from einscade.frontends.fx import SiteRecord, record_sites


@dataclass(frozen=True)
class Run:
    got: torch.Tensor
    want: torch.Tensor
    records: list[SiteRecord]

    @property
    def captured(self) -> list[SiteRecord]:
        return [r for r in self.records if r.captured]

    @property
    def skipped(self) -> list[SiteRecord]:
        return [r for r in self.records if not r.captured]

    def assert_close(self, atol: float = 1e-5, rtol: float = 1e-5) -> None:
        torch.testing.assert_close(self.got, self.want, atol=atol, rtol=rtol, equal_nan=True)


def compile_run(
    fn: Callable[..., torch.Tensor],
    *args: torch.Tensor,
    options: dict[str, object] | None = None,
    dynamic: bool | None = None,
) -> Run:
    """``fn(*args)`` compiled (eager fallback unless ``options`` say otherwise) and eager,
    under ``torch.no_grad()``."""
    torch._dynamo.reset()
    compiled = torch.compile(
        fn, backend="einscade", options={"fallback": "eager", **(options or {})}, dynamic=dynamic
    )
    with torch.no_grad(), record_sites() as records:
        got = compiled(*args)
        want = fn(*args)
    return Run(got, want, records)


def qkv(
    batch: int = 2, heads: int = 2, tokens: int = 6, dim: int = 8, kv_heads: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """Random Q, K, V in SDPA layout ([batch, heads, tokens, dim])."""
    generator = torch.Generator().manual_seed(0)
    kv = heads if kv_heads is None else kv_heads
    shapes = ((batch, heads, tokens, dim), (batch, kv, tokens, dim), (batch, kv, tokens, dim))
    return tuple(torch.randn(s, generator=generator).to(dtype) for s in shapes)  # type: ignore[return-value]
