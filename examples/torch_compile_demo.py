"""``make demo``, part 2: ``torch.compile(model, backend="einscade")`` on two unmodified models.

1. A small ViT-style model whose attention layers use a 2-D neighborhood mask (NATTEN's
   window formula on a 14 x 14 token grid, built once from index arithmetic and stored as a
   bool buffer, the way a model author would write it with plain SDPA).
2. A tiny BERT from a transformers config (random weights; nothing is downloaded).

For each: compile with the backend, run under ``torch.no_grad()``, print what the backend did
with every attention site, print the IR of one captured site, and check the output against
eager. Exits non-zero when a site expected to be captured is not, or when outputs differ.

Run: ``.venv/bin/python examples/torch_compile_demo.py``
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F
from torch import nn

from einscade.frontends.fx import SiteRecord, record_sites
from einscade.ir import print_cascade

GRID, KERNEL, DIM, HEADS, DEPTH = 14, 7, 64, 4, 2


def natten_mask(grid: int, kernel: int) -> torch.Tensor:
    """[grid^2, grid^2] bool: query (y, x) sees the kernel x kernel window NATTEN centres on it
    (clamped inside the grid, so every query sees exactly kernel^2 keys)."""
    pos = torch.arange(grid)
    start = (pos - kernel // 2).clamp(0, grid - kernel)
    along = (pos[None, :] >= start[:, None]) & (pos[None, :] < start[:, None] + kernel)
    return (along[:, None, :, None] & along[None, :, None, :]).reshape(grid * grid, grid * grid)


class NeighborhoodBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(DIM), nn.LayerNorm(DIM)
        self.qkv, self.proj = nn.Linear(DIM, 3 * DIM), nn.Linear(DIM, DIM)
        self.mlp = nn.Sequential(nn.Linear(DIM, 2 * DIM), nn.GELU(), nn.Linear(2 * DIM, DIM))
        self.register_buffer("mask", natten_mask(GRID, KERNEL), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, HEADS, c // HEADS).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, n, c))
        return x + self.mlp(self.norm2(x))


class NeighborhoodViT(nn.Module):
    """Patch embedding, position embedding, DEPTH neighborhood-attention blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, DIM, kernel_size=4, stride=4)
        self.pos = nn.Parameter(torch.randn(1, GRID * GRID, DIM) * 0.02)
        self.blocks = nn.Sequential(*(NeighborhoodBlock() for _ in range(DEPTH)))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.patch(pixels).flatten(2).transpose(1, 2) + self.pos)


def tiny_bert() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    import transformers

    config = transformers.BertConfig(
        vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=64, attn_implementation="eager",
    )  # fmt: skip
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 11:] = 0  # the second sequence is padded
    inputs = {"input_ids": torch.randint(0, 100, (2, 16)), "attention_mask": mask}
    return transformers.BertModel(config).eval(), inputs


def compile_and_check(title: str, model: nn.Module, inputs: dict[str, torch.Tensor]) -> bool:
    """Compile, print the sites and one cascade, compare with eager; True when all is well."""
    print(f"\n== {title}")
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="einscade")
    with torch.no_grad(), record_sites() as records:
        got = _hidden(compiled(**inputs))
        want = _hidden(model(**inputs))
    for record in records:
        print("  " + record.line())
    captured = [r for r in records if r.captured]
    if captured:
        _print_ir(captured[0])
    diff = (got - want).abs().max().item()
    ok = bool(captured) and len(captured) == len(records) and diff <= 1e-4
    print(f"  {len(captured)}/{len(records)} sites captured; max |compiled - eager| = {diff:.2e}")
    print(f"  {'OK' if ok else 'FAILED'}")
    return ok


def _hidden(out: object) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.last_hidden_state


def _print_ir(record: SiteRecord) -> None:
    print(f"  IR of site '{record.anchor}':")
    for line in print_cascade(record.cascade).splitlines():
        print("    " + line)


def main() -> int:
    torch.manual_seed(0)
    vit = NeighborhoodViT().eval()
    ok = compile_and_check(
        f"ViT-style model, {DEPTH} neighborhood-attention layers ({GRID}x{GRID} grid, "
        f"{KERNEL}x{KERNEL} window)",
        vit,
        {"pixels": torch.randn(2, 3, 4 * GRID, 4 * GRID)},
    )
    bert, inputs = tiny_bert()
    ok &= compile_and_check("BERT (transformers config, random weights)", bert, inputs)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
