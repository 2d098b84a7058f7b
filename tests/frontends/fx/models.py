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


def vit(impl: str) -> Example:
    tf = importable("transformers")
    config = tf.ViTConfig(
        image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, attn_implementation=impl,
    )  # fmt: skip
    return Example(tf.ViTModel(config).eval(), {"pixel_values": torch.randn(2, 3, 16, 16)})


def swin(impl: str) -> Example:
    """One stage of two blocks (plain, then shifted windows) on an 8 x 8 token grid."""
    tf = importable("transformers")
    config = tf.SwinConfig(
        image_size=32, patch_size=4, embed_dim=16, depths=[2], num_heads=[2], window_size=4,
        attn_implementation=impl,
    )  # fmt: skip
    return Example(tf.SwinModel(config).eval(), {"pixel_values": torch.randn(1, 3, 32, 32)})


def timm_model(name: str, **kwargs: object) -> Example:
    timm = importable("timm")
    model = timm.create_model(name, pretrained=False, num_classes=0, **kwargs).eval()
    size = kwargs.get("img_size", 32)
    return Example(model, {"x": torch.randn(1, 3, size, size)})
