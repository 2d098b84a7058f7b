"""Small real models exported to ONNX: transformers BERT / GPT-2 / ViT / Llama, timm ViT / Swin.

Built from configs with random weights (no downloads), exported by torch's dynamo exporter at
opsets 18 and 23 or by the legacy exporter. The tests and ``compare_ort`` use the same files.

timm imports torchvision; the only torchvision wheel for this torch is a CUDA build whose
operators fail to load beside the CPU torch. :func:`timm_available` declares the two
operator schemas timm's import needs (``torchvision::nms``/``qnms``; no attention model
runs them) before importing timm, as /work/shared/docs/real-models.md describes.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

# exporter name -> (opset, dynamo)
EXPORTERS: dict[str, tuple[int, bool]] = {
    "dynamo18": (18, True),
    "dynamo23": (23, True),
    "legacy": (17, False),
}
SEED = 0
_DYNAMO = ("dynamo18", "dynamo23")


@dataclass(frozen=True)
class ZooModel:
    """A model to export: how to build it, its ORT optimizer type, and its head count."""

    name: str
    build: Callable[[], tuple[object, tuple]]  # () -> (module, example args)
    ort_type: str  # model_type of onnxruntime.transformers.optimizer
    num_heads: int
    hidden_size: int
    needs_timm: bool = False
    # None: every exporter. Swin: legacy only (real-models.md: dynamo fails on its window
    # views); Llama: dynamo only (the legacy exporter has no aten::diff, which its masks use).
    exporters: tuple[str, ...] | None = None


def declare_torchvision_ops() -> None:
    """Declare ``torchvision::nms``/``qnms`` unless torch already knows them."""
    import torch

    try:
        torch.ops.torchvision.nms  # noqa: B018 - raises if the operator is not registered
        return
    except (AttributeError, RuntimeError):
        pass
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    declare_torchvision_ops.library = lib  # keep the registration alive


def timm_available() -> bool:
    """Whether timm (and torchvision) import here; declares the torchvision schemas first."""
    if importlib.util.find_spec("timm") is None or importlib.util.find_spec("torchvision") is None:
        return False
    declare_torchvision_ops()
    try:
        import timm  # noqa: F401
    except Exception:  # a broken optional install: the timm models are just unavailable
        return False
    return True


class _LastHidden:
    """Wrap a transformers model so it takes positional args and returns one tensor."""

    @staticmethod
    def wrap(model, keys: tuple[str, ...]):
        import torch

        class LastHidden(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model

            def forward(self, *args):
                kwargs = dict(zip(keys, args, strict=True))
                if "pixel_values" not in kwargs:
                    kwargs["use_cache"] = False
                return self.model(**kwargs).last_hidden_state

        return LastHidden()


def _bert(impl: str):
    import torch
    import transformers

    config = transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=32, attn_implementation=impl,
    )  # fmt: skip
    ids = torch.randint(0, 100, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 6:] = 0
    module = _LastHidden.wrap(transformers.BertModel(config), ("input_ids", "attention_mask"))
    return module, (ids, mask)


def _gpt2(impl: str):
    import torch
    import transformers

    config = transformers.GPT2Config(
        vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=32, attn_implementation=impl
    )
    module = _LastHidden.wrap(transformers.GPT2Model(config), ("input_ids",))
    return module, (torch.randint(0, 100, (2, 8)),)


def _vit(impl: str):
    import torch
    import transformers

    config = transformers.ViTConfig(
        image_size=16, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, attn_implementation=impl,
    )  # fmt: skip
    module = _LastHidden.wrap(transformers.ViTModel(config), ("pixel_values",))
    return module, (torch.randn(2, 3, 16, 16),)


def _llama(impl: str):
    import torch
    import transformers

    # Grouped-query attention: 4 query heads share 2 KV heads.
    config = transformers.LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
        attn_implementation=impl,
    )  # fmt: skip
    module = _LastHidden.wrap(transformers.LlamaModel(config), ("input_ids",))
    return module, (torch.randint(0, 100, (2, 8)),)


def _timm_vit():
    import timm
    import torch

    model = timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32,
        depth=2, num_heads=2, num_classes=0,
    )  # fmt: skip
    return model, (torch.randn(2, 3, 32, 32),)


def _timm_swin():
    import timm
    import torch

    # 8x8 patches, 4x4 windows: stage 1 has a plain and a shifted block (window mask);
    # stage 2 (4x4 tokens) is one window, so its blocks are not shifted.
    model = timm.create_model(
        "swin_tiny_patch4_window7_224", pretrained=False, img_size=32, window_size=4,
        embed_dim=32, depths=(2, 2), num_heads=(2, 4), num_classes=0,
    )  # fmt: skip
    return model, (torch.randn(2, 3, 32, 32),)


MODELS: dict[str, ZooModel] = {
    m.name: m
    for m in (
        *(
            ZooModel(f"{name}-{impl}", partial(build, impl), ort_type, 2, 32)
            for name, build, ort_type in (
                ("bert", _bert, "bert"),
                ("gpt2", _gpt2, "gpt2"),
                ("vit", _vit, "vit"),
            )  # fmt: skip
            for impl in ("sdpa", "eager")
        ),
        # onnxruntime's optimizer has no Llama type; gpt2 (a causal decoder) is the closest.
        *(
            ZooModel(f"llama-{impl}", partial(_llama, impl), "gpt2", 4, 32, exporters=_DYNAMO)
            for impl in ("sdpa", "eager")
        ),
        ZooModel("timm_vit", _timm_vit, "vit", 2, 32, needs_timm=True),
        ZooModel("timm_swin", _timm_swin, "swin", 0, 0, needs_timm=True, exporters=("legacy",)),
    )
}


def exporters_for(name: str) -> tuple[str, ...]:
    """The exporters that apply to model ``name``."""
    return MODELS[name].exporters or tuple(EXPORTERS)


def export(name: str, exporter: str, folder: Path) -> Path:
    """Export model ``name`` with ``exporter`` into ``folder/NAME-EXPORTER.onnx``."""
    import torch

    model = MODELS[name]
    if importlib.util.find_spec("torchvision") is not None:
        declare_torchvision_ops()  # before transformers imports torchvision
    if model.needs_timm and not timm_available():
        raise RuntimeError(f"{name}: timm (with torchvision) is not importable here")
    opset, dynamo = EXPORTERS[exporter]
    torch.manual_seed(SEED)
    module, args = model.build()
    path = Path(folder) / f"{name}-{exporter}.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(), args, str(path), dynamo=dynamo, opset_version=opset, verbose=False
        )
    return path
