"""The one error type of the ONNX frontend: a one-line message that names the file and place."""

from __future__ import annotations

from einscade.ir.errors import EinscadeError


class OnnxModelError(EinscadeError):
    """Bad input or a failed validation; ``str()`` is one line that names the file or site."""

    def __init__(self, message: str):
        # Messages from onnx/onnxruntime can span lines; the CLI prints exactly one.
        super().__init__(" ".join(str(message).split()))
