"""2-layer BERT, GPT-2 and ViT with random weights from small configs (no downloads), exported
by torch's dynamo exporter at opset 18, rewritten in both modes, checked in onnxruntime."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from einscade.frontends.onnx import find_sites, load_model, rewrite_model
from tests.frontends.onnx import models

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.slow  # each export takes 3-6 s


class LastHidden(torch.nn.Module):
    """Call a transformers model with keywords, return its last hidden state."""

    def __init__(self, model, keys: tuple[str, ...]):
        super().__init__()
        self.model, self.keys = model, keys

    def forward(self, *args):
        kwargs = dict(zip(self.keys, args, strict=True))
        if "pixel_values" not in kwargs:
            kwargs["use_cache"] = False
        return self.model(**kwargs).last_hidden_state


def _bert(impl: str):
    config = transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=32, attn_implementation=impl,
    )  # fmt: skip
    ids = torch.randint(0, 100, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.long)
    mask[1, 6:] = 0
    model = LastHidden(transformers.BertModel(config), ("input_ids", "attention_mask"))
    return model, (ids, mask)


def _gpt2(impl: str):
    config = transformers.GPT2Config(
        vocab_size=100, n_embd=32, n_layer=2, n_head=2, n_positions=32, attn_implementation=impl
    )
    model = LastHidden(transformers.GPT2Model(config), ("input_ids",))
    return model, (torch.randint(0, 100, (2, 8)),)


def _vit(impl: str):
    config = transformers.ViTConfig(
        image_size=16, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, attn_implementation=impl,
    )  # fmt: skip
    model = LastHidden(transformers.ViTModel(config), ("pixel_values",))
    return model, (torch.randn(2, 3, 16, 16),)


BUILDERS = {"bert": _bert, "gpt2": _gpt2, "vit": _vit}


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_two_layer_model_rewrites_in_both_modes(tmp_path, name, impl):
    torch.manual_seed(0)
    module, args = BUILDERS[name](impl)
    source = models.export(module, args, tmp_path / f"{name}.onnx", opset=18, dynamo=True)
    before = models.fingerprint(tmp_path)
    found = find_sites(load_model(source).model)
    assert len(found.sites) == 2 and not found.misses, found.misses
    feeds = models.feeds_for(source)
    expected = models.run(source, feeds)[0]
    for mode in ("function", "onnx-attention"):
        out = tmp_path / "out" / f"{mode}.onnx"
        out.parent.mkdir(exist_ok=True)
        result = rewrite_model(source, out, mode)
        assert sum(d.rewritten for d in result.decisions) == 2, result.decisions
        np.testing.assert_allclose(models.run(out, feeds)[0], expected, atol=1e-5, rtol=1e-4)
        if mode == "function":
            assert len(find_sites(load_model(out).model).sites) == 2
    assert {k: v for k, v in models.fingerprint(tmp_path).items() if "/" not in k} == before


def test_bert_legacy_exporter(tmp_path):
    torch.manual_seed(0)
    module, args = _bert("eager")
    source = models.export(module, args, tmp_path / "bert.onnx", opset=17, dynamo=False)
    for mode in ("function", "onnx-attention"):
        result = rewrite_model(source, tmp_path / f"{mode}.onnx", mode)
        assert sum(d.rewritten for d in result.decisions) == 2
