"""Real models for the backend tests: tiny transformers and timm configs, random weights.

``transformers`` and ``timm`` import torchvision when it is installed; the only torchvision
wheel for this torch is a CUDA build whose operators fail to register beside the CPU torch
("operator torchvision::nms does not exist"). No attention model uses a torchvision op, so
:func:`importable` defines the two schemas its Python side registers fake kernels for, first
(docs: /work/shared/docs/real-models.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import pytest
import torch

_STUB: list[torch.library.Library] = []


def _stub_torchvision_ops() -> None:
    try:
        torch.ops.torchvision.nms  # noqa: B018 - registered by a working torchvision
        return
    except (AttributeError, RuntimeError):
        pass
    if _STUB:
        return
    lib = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _STUB.append(lib)


def importable(name: str) -> ModuleType:
    """Import ``transformers`` or ``timm`` (skipping the test when it is not installed)."""
    _stub_torchvision_ops()  # before the import: torchvision registers while it loads
    return pytest.importorskip(name)


@dataclass(frozen=True)
class Example:
    """A model in eval mode and the keyword inputs of one call."""

    model: torch.nn.Module
    inputs: dict[str, torch.Tensor]

    def run(self, model: Callable[..., object] | None = None) -> torch.Tensor:
        out = (self.model if model is None else model)(**self.inputs)
        return out if isinstance(out, torch.Tensor) else out.last_hidden_state


def bert(impl: str) -> Example:
    tf = importable("transformers")
    config = tf.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=32, attn_implementation=impl,
    )  # fmt: skip
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 6:] = 0
    ids = torch.randint(0, 100, (2, 8))
    return Example(tf.BertModel(config).eval(), {"input_ids": ids, "attention_mask": mask})


def gpt2(impl: str) -> Example:
    tf = importable("transformers")
    config = tf.GPT2Config(
        vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=32, attn_implementation=impl
    )
    ids = torch.randint(0, 100, (2, 8))
    return Example(tf.GPT2Model(config).eval(), {"input_ids": ids, "use_cache": False})


def llama(impl: str) -> Example:
    """4 query heads sharing 2 KV heads (GQA), causal."""
    tf = importable("transformers")
    config = tf.LlamaConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=32,
        attn_implementation=impl,
    )  # fmt: skip
    ids = torch.randint(0, 100, (2, 8))
    return Example(tf.LlamaModel(config).eval(), {"input_ids": ids, "use_cache": False})


def mistral(impl: str) -> Example:
    """GQA (4 query heads, 2 KV heads) with a causal sliding window of 4 keys on 12 tokens."""
    tf = importable("transformers")
    config = tf.MistralConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
        sliding_window=4, attn_implementation=impl,
    )  # fmt: skip
    ids = torch.randint(0, 100, (2, 12))
    return Example(tf.MistralModel(config).eval(), {"input_ids": ids, "use_cache": False})


def vit(impl: str) -> Example:
    tf = importable("transformers")
    config = tf.ViTConfig(
        image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, attn_implementation=impl,
    )  # fmt: skip
    return Example(tf.ViTModel(config).eval(), {"pixel_values": torch.randn(2, 3, 16, 16)})


def swin(impl: str, image_size: int = 32) -> Example:
    """One stage of two blocks (plain, then shifted windows) on an 8 x 8 token grid (a
    6 x 6 grid, padded to 8 x 8, with ``image_size=24``)."""
    tf = importable("transformers")
    config = tf.SwinConfig(
        image_size=image_size, patch_size=4, embed_dim=16, depths=[2], num_heads=[2],
        window_size=4, attn_implementation=impl,
    )  # fmt: skip
    pixels = torch.randn(1, 3, image_size, image_size)
    return Example(tf.SwinModel(config).eval(), {"pixel_values": pixels})


def timm_model(name: str, **kwargs: object) -> Example:
    timm = importable("timm")
    model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs).eval()
    size = kwargs.get("img_size", 32)
    return Example(model, {"x": torch.randn(1, 3, size, size)})


# -- hand-written window attention (timm / MaxViT style) ---------------------------------------


def _relative_index(window: int) -> torch.Tensor:
    """Swin's table index: the relative offset of each pair of window positions."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij"))
    coords = coords.flatten(1)
    relative = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return relative[..., 0] * (2 * window - 1) + relative[..., 1]


def _region_labels(grid: int, window: int, shift: int) -> torch.Tensor:
    """``[windows, N]``: Swin's region of each token of each window of the rolled grid."""
    index = torch.arange(grid)
    region = (index >= grid - window).long() + (index >= grid - shift).long()
    labels = region[:, None] * 3 + region[None, :]
    labels = labels.view(grid // window, window, grid // window, window).transpose(1, 2)
    return labels.reshape(-1, window * window)


class SwinBlock(torch.nn.Module):
    """A Swin block as timm writes it: LayerNorm, roll, partition by view/permute, one qkv
    Linear split by reshape/permute/unbind, a relative-position bias gathered from a table,
    the region mask (from an integer buffer) added in a [b, windows, h, N, N] view, the
    output projection, reverse, roll back, residual. ``mix_tokens`` puts a cumulative sum
    over the window's tokens between the partition and the attention (not token-wise)."""

    def __init__(self, grid=8, window=4, shift=0, dim=16, heads=2, mix_tokens=False):
        super().__init__()
        self.grid, self.window, self.shift, self.heads = grid, window, shift, heads
        self.mix_tokens = mix_tokens
        self.norm = torch.nn.LayerNorm(dim)
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)
        self.table = torch.nn.Parameter(torch.randn((2 * window - 1) ** 2, heads))
        self.register_buffer("index", _relative_index(window), persistent=False)
        self.register_buffer("labels", _region_labels(grid, window, shift), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        g, w, s, n = self.grid, self.window, self.shift, self.window**2
        y = self.norm(x).view(b, g, g, c)
        if s:
            y = torch.roll(y, shifts=(-s, -s), dims=(1, 2))
        y = y.view(b, g // w, w, g // w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, n, c)
        if self.mix_tokens:
            y = y.cumsum(1)
        qkv = self.qkv(y).reshape(y.shape[0], n, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attn = (q * (c // self.heads) ** -0.5) @ k.transpose(-2, -1)
        bias = self.table[self.index.view(-1)].view(n, n, -1).permute(2, 0, 1).contiguous()
        attn = attn + bias.unsqueeze(0)
        if s:
            mask = (self.labels[:, :, None] != self.labels[:, None, :]).float() * -100.0
            windows = mask.shape[0]
            attn = attn.view(-1, windows, self.heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.heads, n, n)
        y = (attn.softmax(-1) @ v).transpose(1, 2).reshape(-1, n, c)
        y = self.proj(y)
        y = y.view(b, g // w, g // w, w, w, c).permute(0, 1, 3, 2, 4, 5).reshape(b, g, g, c)
        if s:
            y = torch.roll(y, shifts=(s, s), dims=(1, 2))
        return x + y.reshape(b, g * g, c)


class BlockAttention(torch.nn.Module):
    """MaxViT's block attention on NHWC tokens: windows by view/transpose, a fused qkv
    Linear split by ``chunk``, SDPA per window, the output projection, windows put back."""

    def __init__(self, window=4, dim=16, heads=2):
        super().__init__()
        self.window, self.heads = window, heads
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, hh, ww, c = x.shape
        p, n = self.window, self.window**2
        y = x.view(b, hh // p, p, ww // p, p, c).transpose(2, 3).reshape(-1, n, c)
        parts = self.qkv(y).chunk(3, dim=-1)
        q, k, v = (t.view(-1, n, self.heads, c // self.heads).transpose(1, 2) for t in parts)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        y = self.proj(y.transpose(1, 2).reshape(-1, n, c))
        y = y.view(b, hh // p, ww // p, p, p, c).transpose(2, 3).reshape(b, hh, ww, c)
        return x + y


class GridAttention(torch.nn.Module):
    """MaxViT's grid attention as timm writes it on NHWC tokens: ``grid_partition`` (a
    ``size x size`` window of tokens spread ``H // size`` apart), one qkv Linear split by
    reshape/permute/unbind, scores plus a relative-position bias gathered from a table
    (indexed by the position inside the window), softmax, the output projection and
    ``grid_reverse``. ``windows_2d`` keeps the windows ``[windows, size, size, C]`` around
    the Linears, as timm's ``AttentionCl`` does."""

    def __init__(self, size=4, dim=16, heads=2, windows_2d=False):
        super().__init__()
        self.size, self.heads, self.windows_2d = size, heads, windows_2d
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)
        self.table = torch.nn.Parameter(torch.randn((2 * size - 1) ** 2, heads))
        self.register_buffer("index", _relative_index(size), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, hh, ww, c = x.shape
        g, n = self.size, self.size**2
        y = x.view(b, g, hh // g, g, ww // g, c).permute(0, 2, 4, 1, 3, 5)
        y = y.contiguous().view(-1, g, g, c)
        y = y if self.windows_2d else y.reshape(-1, n, c)
        qkv = self.qkv(y).reshape(y.shape[0], n, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attn = q @ k.transpose(-2, -1) * (c // self.heads) ** -0.5
        bias = self.table[self.index.view(-1)].view(n, n, -1).permute(2, 0, 1)
        attn = (attn + bias.unsqueeze(0)).softmax(dim=-1)
        y = (attn @ v).transpose(1, 2)
        y = y.reshape(-1, g, g, c) if self.windows_2d else y.reshape(-1, n, c)
        y = self.proj(y).view(-1, g, g, c)
        y = y.view(b, hh // g, ww // g, g, g, c).permute(0, 3, 1, 4, 2, 5)
        return x + y.contiguous().view(b, hh, ww, c)
