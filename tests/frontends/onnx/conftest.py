"""Models exported once per test session (each torch export takes 1-6 s)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.frontends.onnx import models

EXPORTS: dict[str, Callable[[Path], Path]] = {
    "hand_d18": lambda d: models.export(
        models.HandAttention(), models.hand_inputs(), d / "hand.onnx", opset=18, dynamo=True
    ),
    "hand_legacy": lambda d: models.export(
        models.HandAttention(), models.hand_inputs(), d / "hand.onnx", opset=17, dynamo=False
    ),
    "sdpa_d23": lambda d: models.export(
        models.TwoSdpa(), models.sdpa_inputs(), d / "sdpa.onnx", opset=23, dynamo=True
    ),
    "sdpa_d18": lambda d: models.export(
        models.TwoSdpa(), models.sdpa_inputs(), d / "sdpa.onnx", opset=18, dynamo=True
    ),
}


@pytest.fixture(scope="session")
def exported(tmp_path_factory) -> Callable[[str], Path]:
    """``exported(name)``: the path of model ``name``, exported on first use, in its own folder."""
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            cache[name] = EXPORTS[name](tmp_path_factory.mktemp(name))
        return cache[name]

    return get
