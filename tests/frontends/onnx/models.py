"""Tiny models for the ONNX frontend tests: torch modules exported here, and hand-built graphs."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnx import TensorProto

TOKENS, HEADS, DIM = 6, 2, 16


class HandAttention(torch.nn.Module):
    """``q @ k^T * s + mask -> softmax -> @ v`` written out, heads split from one Linear."""

    def __init__(self):
        super().__init__()
        self.qkv = torch.nn.Linear(DIM, 3 * DIM)
        self.register_buffer("mask", torch.triu(torch.full((TOKENS, TOKENS), -1e4), 1))

    def forward(self, x):
        batch = x.shape[0]
        q, k, v = self.qkv(x).reshape(batch, TOKENS, 3, HEADS, DIM // HEADS).permute(2, 0, 3, 1, 4)
        scores = (q @ k.transpose(-2, -1)) * 0.35 + self.mask
        out = scores.softmax(-1) @ v
        return out.transpose(1, 2).reshape(batch, TOKENS, DIM)


class TwoSdpa(torch.nn.Module):
    """Two SDPA calls: a boolean mask input; causal grouped-query (4 query, 2 KV heads)."""

    def forward(self, q, k, v, mask):
        masked = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        causal = F.scaled_dot_product_attention(
            q, k[:, :2], v[:, :2], is_causal=True, enable_gqa=True
        )
        return masked + causal


def hand_inputs() -> tuple[torch.Tensor]:
    return (torch.randn(2, TOKENS, DIM),)


def sdpa_inputs() -> tuple[torch.Tensor, ...]:
    q, k, v = (torch.randn(1, 4, TOKENS, 8) for _ in range(3))
    return q, k, v, torch.rand(TOKENS, TOKENS) > 0.3


def export(module, args, path: Path, *, opset: int, dynamo: bool) -> Path:
    """torch.onnx.export in eval mode, warnings silenced (the legacy exporter is deprecated)."""
    torch.manual_seed(0)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(), args, str(path), dynamo=dynamo, opset_version=opset, verbose=False
        )
    return path


# -- hand-built graphs -----------------------------------------------------------------------


def chain_model(
    names: dict[str, str] | None = None,
    *,
    softmax_axis: int = -1,
    expose_weights: bool = False,
    scale_shape: tuple[int, ...] = (),
    scale_input: bool = False,
) -> onnx.ModelProto:
    """The decomposed chain on inputs [B, 2, N, 8] (B and N symbolic), opset 18; the scale
    is an initializer of ``scale_shape`` or, with ``scale_input``, a scalar graph input."""
    n = {k: k for k in ("q", "k", "v", "mask", "kt", "s", "scale", "ss", "sm", "w", "out")}
    n.update(names or {})
    qkv = ["B", 2, "N", 8]
    inputs = [oh.make_tensor_value_info(n[x], TensorProto.FLOAT, qkv) for x in "qkv"]
    inputs.append(oh.make_tensor_value_info(n["mask"], TensorProto.FLOAT, ["N", "N"]))
    scale = oh.make_tensor(n["scale"], TensorProto.FLOAT, scale_shape,
                           np.full(scale_shape, 0.35, np.float32).reshape(-1).tolist())  # fmt: skip
    nodes = [
        oh.make_node("Transpose", [n["k"]], [n["kt"]], perm=[0, 1, 3, 2], name=f"{n['kt']} node"),
        oh.make_node("MatMul", [n["q"], n["kt"]], [n["s"]], name=f"{n['s']} node"),
        oh.make_node("Mul", [n["s"], n["scale"]], [n["ss"]], name=f"{n['ss']} node"),
        oh.make_node("Add", [n["ss"], n["mask"]], [n["sm"]], name=f"{n['sm']} node"),
        oh.make_node("Softmax", [n["sm"]], [n["w"]], axis=softmax_axis, name=f"{n['w']} node"),
        oh.make_node("MatMul", [n["w"], n["v"]], [n["out"]], name=f"{n['out']} node"),
    ]
    outputs = [oh.make_tensor_value_info(n["out"], TensorProto.FLOAT, qkv)]
    if expose_weights:
        outputs.append(oh.make_tensor_value_info(n["w"], TensorProto.FLOAT, ["B", 2, "N", "N"]))
    if scale_input:
        inputs.append(oh.make_tensor_value_info(n["scale"], TensorProto.FLOAT, []))
    initializers = [] if scale_input else [scale]
    graph = oh.make_graph(nodes, "chain", inputs, outputs, initializer=initializers)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)], ir_version=10)


def attention_3d_model() -> onnx.ModelProto:
    """One standard Attention op on 3-D inputs: 4 query heads, 2 KV heads, causal."""
    q = oh.make_tensor_value_info("q", TensorProto.FLOAT, [1, TOKENS, 4 * 8])
    kv = [oh.make_tensor_value_info(x, TensorProto.FLOAT, [1, TOKENS, 2 * 8]) for x in "kv"]
    out = oh.make_tensor_value_info("out", TensorProto.FLOAT, [1, TOKENS, 4 * 8])
    node = oh.make_node("Attention", ["q", "k", "v"], ["out"], name="attention",
                        q_num_heads=4, kv_num_heads=2, is_causal=1, scale=0.25)  # fmt: skip
    graph = oh.make_graph([node], "attention_3d", [q, *kv], [out])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 23)], ir_version=10)


def kv_cache_attention_model() -> onnx.ModelProto:
    """A causal Attention op with past_key/past_value whose present outputs are graph outputs."""
    shape = {"q": [1, 2, 1, 8], "k": [1, 2, 1, 8], "v": [1, 2, 1, 8],
             "past_k": [1, 2, 5, 8], "past_v": [1, 2, 5, 8]}  # fmt: skip
    inputs = [oh.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in shape.items()]
    outputs = [oh.make_tensor_value_info("out", TensorProto.FLOAT, [1, 2, 1, 8]),
               oh.make_tensor_value_info("present_k", TensorProto.FLOAT, [1, 2, 6, 8]),
               oh.make_tensor_value_info("present_v", TensorProto.FLOAT, [1, 2, 6, 8])]  # fmt: skip
    node = oh.make_node("Attention", ["q", "k", "v", "", "past_k", "past_v"],
                        ["out", "present_k", "present_v"], name="decode", is_causal=1)  # fmt: skip
    graph = oh.make_graph([node], "decode", inputs, outputs)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 23)], ir_version=10)


def constant_mask_chain(mask: np.ndarray, heads: int = 2) -> onnx.ModelProto:
    """The decomposed chain on Q, K, V [1, heads, T, 8] with ``mask`` [T, T] an initializer."""
    tokens = mask.shape[-1]
    qkv = [1, heads, tokens, 8]
    inputs = [oh.make_tensor_value_info(x, TensorProto.FLOAT, qkv) for x in "qkv"]
    nodes = [
        oh.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        oh.make_node("MatMul", ["q", "kt"], ["s"]),
        oh.make_node("Mul", ["s", "scale"], ["ss"]),
        oh.make_node("Add", ["ss", "mask"], ["sm"]),
        oh.make_node("Softmax", ["sm"], ["w"], axis=-1),
        oh.make_node("MatMul", ["w", "v"], ["out"]),
    ]
    initializers = [
        onnx.numpy_helper.from_array(np.array(0.35, np.float32), "scale"),
        onnx.numpy_helper.from_array(mask.astype(np.float32), "mask"),
    ]
    outputs = [oh.make_tensor_value_info("out", TensorProto.FLOAT, qkv)]
    graph = oh.make_graph(nodes, "masked", inputs, outputs, initializer=initializers)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)], ir_version=10)


def swin_window_chain(windows: int = 2, heads: int = 2, tokens: int = 4) -> onnx.ModelProto:
    """Swin's shifted-window chain: ``(q*s) @ k^T + bias``, viewed per window to add a
    [1, windows, 1, N, N] mask of 0 / -100, viewed back, softmax, ``@ v``."""
    rng = np.random.default_rng(0)
    qkv = [windows, heads, tokens, 8]
    inputs = [oh.make_tensor_value_info(x, TensorProto.FLOAT, qkv) for x in "qkv"]
    window_mask = np.zeros((1, windows, 1, tokens, tokens), np.float32)
    window_mask[0, 1, 0, : tokens // 2, tokens // 2 :] = -100.0  # second window: two regions
    window_mask[0, 1, 0, tokens // 2 :, : tokens // 2] = -100.0
    initializers = [
        onnx.numpy_helper.from_array(np.array(0.35, np.float32), "scale"),
        onnx.numpy_helper.from_array(
            (rng.standard_normal((1, heads, tokens, tokens)) * 0.1).astype(np.float32), "bias"
        ),
        onnx.numpy_helper.from_array(window_mask, "window_mask"),
        onnx.numpy_helper.from_array(np.array([-1, windows, heads, tokens, tokens]), "view"),
        onnx.numpy_helper.from_array(np.array([-1, heads, tokens, tokens]), "back"),
    ]
    nodes = [
        oh.make_node("Mul", ["q", "scale"], ["qs"]),
        oh.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        oh.make_node("MatMul", ["qs", "kt"], ["s"]),
        oh.make_node("Add", ["s", "bias"], ["sb"]),
        oh.make_node("Reshape", ["sb", "view"], ["sw"]),
        oh.make_node("Add", ["sw", "window_mask"], ["swm"]),
        oh.make_node("Reshape", ["swm", "back"], ["sm"]),
        oh.make_node("Softmax", ["sm"], ["w"], axis=-1),
        oh.make_node("MatMul", ["w", "v"], ["out"]),
    ]
    outputs = [oh.make_tensor_value_info("out", TensorProto.FLOAT, qkv)]
    graph = oh.make_graph(nodes, "swin", inputs, outputs, initializer=initializers)
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)], ir_version=10)


def attention_op_model(*, softcap: float = 0.0, kv_heads: int = 2) -> onnx.ModelProto:
    """One 4-D standard Attention op, 4 query heads, ``kv_heads`` KV heads, causal."""
    q = oh.make_tensor_value_info("q", TensorProto.FLOAT, [2, 4, TOKENS, 8])
    kv = [oh.make_tensor_value_info(x, TensorProto.FLOAT, [2, kv_heads, TOKENS, 8]) for x in "kv"]
    out = oh.make_tensor_value_info("out", TensorProto.FLOAT, [2, 4, TOKENS, 8])
    attrs = {"is_causal": 1, "softcap": softcap} if softcap else {"is_causal": 1}
    node = oh.make_node("Attention", ["q", "k", "v"], ["out"], name="attention", **attrs)
    graph = oh.make_graph([node], "attention_4d", [q, *kv], [out])
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 23)], ir_version=10)


def ms_attention_model() -> onnx.ModelProto:
    """com.microsoft Attention (QKV projection inside) with a raw [B, T] key padding mask."""
    rng = np.random.default_rng(0)
    x = oh.make_tensor_value_info("x", TensorProto.FLOAT, [2, TOKENS, DIM])
    mask = oh.make_tensor_value_info("mask_index", TensorProto.INT32, [2, TOKENS])
    out = oh.make_tensor_value_info("out", TensorProto.FLOAT, [2, TOKENS, DIM])
    weights = rng.standard_normal((DIM, 3 * DIM)).astype(np.float32) * 0.3
    bias = rng.standard_normal(3 * DIM).astype(np.float32) * 0.1
    node = oh.make_node("Attention", ["x", "w", "b", "mask_index"], ["out"], name="ms_attention",
                        domain="com.microsoft", num_heads=HEADS)  # fmt: skip
    initializers = [onnx.numpy_helper.from_array(weights, "w"),
                    onnx.numpy_helper.from_array(bias, "b")]  # fmt: skip
    graph = oh.make_graph([node], "ms", [x, mask], [out], initializer=initializers)
    opsets = [oh.make_opsetid("", 17), oh.make_opsetid("com.microsoft", 1)]
    return oh.make_model(graph, opset_imports=opsets, ir_version=8)


def externalize(model: onnx.ModelProto, name: str, location: str) -> onnx.ModelProto:
    """Point initializer ``name`` at external data ``location`` (its bytes are not written)."""
    for tensor in model.graph.initializer:
        if tensor.name == name:
            array = onnx.numpy_helper.to_array(tensor)
            tensor.ClearField("float_data")
            tensor.ClearField("raw_data")
            tensor.data_location = TensorProto.EXTERNAL
            del tensor.external_data[:]
            for key, value in (("location", location), ("offset", "0"),
                               ("length", str(array.nbytes))):  # fmt: skip
                tensor.external_data.add(key=key, value=value)
            return model
    raise KeyError(name)


# -- running and fingerprinting --------------------------------------------------------------


def run(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """onnxruntime outputs of the model file at ``path`` (external data beside it)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def feeds_for(path: Path, seed: int = 1) -> dict[str, np.ndarray]:
    """Random feeds for the inputs of ``path``; symbolic dims are 3, bools mostly True."""
    rng = np.random.default_rng(seed)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {}
    for value in session.get_inputs():
        shape = [d if isinstance(d, int) else 3 for d in value.shape]
        if value.type == "tensor(bool)":
            feeds[value.name] = rng.random(shape) < 0.8
        elif value.type == "tensor(int64)":
            feeds[value.name] = rng.integers(0, 2, size=shape)
        elif value.type == "tensor(int32)":  # key padding masks: mostly 1 (visible)
            feeds[value.name] = (rng.random(shape) < 0.8).astype(np.int32)
        else:
            feeds[value.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


def fingerprint(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``: proves inputs untouched, nothing else written."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


# -- com.microsoft GroupQueryAttention and model-local functions ------------------------------


def gqa_model(*, lengths_inside: bool = True, packed: bool = False,
              **attrs) -> onnx.ModelProto:  # fmt: skip
    """One com.microsoft GroupQueryAttention, prefill: q [2, T, 4*8], k, v [2, T, 2*8].
    ``lengths_inside``: seqlens_k (T - 1 each) and total_sequence_length (T) are computed
    from K's shape in the graph; else they are int32 graph inputs."""
    hidden = (4 + 2 * 2) * 8 if packed else 4 * 8
    inputs = [oh.make_tensor_value_info("q", TensorProto.FLOAT, [2, TOKENS, hidden])]
    if not packed:
        inputs += [oh.make_tensor_value_info(x, TensorProto.FLOAT, [2, TOKENS, 16]) for x in "kv"]
    nodes = []
    if lengths_inside:
        nodes = [
            oh.make_node("Shape", ["q"], ["q_shape"], start=1, end=2),
            oh.make_node("Cast", ["q_shape"], ["tokens"], to=TensorProto.INT32),
            oh.make_node("Sub", ["tokens", "one"], ["last"]),
            oh.make_node("Expand", ["last", "batch"], ["seqlens_k"]),
            oh.make_node("Reshape", ["tokens", "scalar"], ["total"]),
        ]
    else:
        inputs += [oh.make_tensor_value_info("seqlens_k", TensorProto.INT32, [2]),
                   oh.make_tensor_value_info("total", TensorProto.INT32, [])]  # fmt: skip
    initializers = [
        onnx.numpy_helper.from_array(np.array([1], np.int32), "one"),
        onnx.numpy_helper.from_array(np.array([2], np.int64), "batch"),
        onnx.numpy_helper.from_array(np.array([], np.int64), "scalar"),
    ]
    qkv = ["q", "", ""] if packed else ["q", "k", "v"]
    nodes.append(oh.make_node(
        "GroupQueryAttention", [*qkv, "", "", "seqlens_k", "total"],
        ["out", "present_k", "present_v"], name="gqa", domain="com.microsoft",
        num_heads=4, kv_num_heads=2, **attrs,
    ))  # fmt: skip
    out = oh.make_tensor_value_info("out", TensorProto.FLOAT, [2, TOKENS, 32])
    graph = oh.make_graph(nodes, "gqa", inputs, [out], initializer=initializers)
    opsets = [oh.make_opsetid("", 18), oh.make_opsetid("com.microsoft", 1)]
    return oh.make_model(graph, opset_imports=opsets, ir_version=10)


def function_model(opset: int = 18) -> onnx.ModelProto:
    """A local function ``local::attn(q, k, v)`` holding a decomposed chain (scale from a
    Constant node), called twice by the graph on [2, 2, T, 8] inputs; no value_info."""
    body = [
        oh.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        oh.make_node("MatMul", ["q", "kt"], ["s"]),
        oh.make_node(
            "Constant",
            [],
            ["scale"],
            value=onnx.numpy_helper.from_array(np.array(0.35, np.float32)),
        ),  # fmt: skip
        oh.make_node("Mul", ["s", "scale"], ["ss"]),
        oh.make_node("Softmax", ["ss"], ["w"], axis=-1),
        oh.make_node("MatMul", ["w", "v"], ["out"]),
    ]
    opsets = [oh.make_opsetid("", opset)]
    function = oh.make_function("local", "attn", ["q", "k", "v"], ["out"], body, opsets)
    qkv = [2, 2, TOKENS, 8]
    inputs = [oh.make_tensor_value_info(x, TensorProto.FLOAT, qkv) for x in ("a", "b", "c")]
    nodes = [
        oh.make_node("attn", ["a", "b", "c"], ["first"], domain="local", name="call_0"),
        oh.make_node("attn", ["first", "b", "a"], ["second"], domain="local", name="call_1"),
        oh.make_node("ReduceMean", ["second"], ["mean"], axes=[1], keepdims=1)
        if opset < 18
        else oh.make_node("ReduceMean", ["second", "axes"], ["mean"], keepdims=1),
    ]
    initializers = [onnx.numpy_helper.from_array(np.array([1], np.int64), "axes")]
    output = oh.make_tensor_value_info("mean", TensorProto.FLOAT, [2, 1, TOKENS, 8])
    graph = oh.make_graph(nodes, "calls", inputs, [output],
                          initializer=initializers if opset >= 18 else [])  # fmt: skip
    model_opsets = [*opsets, oh.make_opsetid("local", 1)]
    return oh.make_model(graph, opset_imports=model_opsets, ir_version=10, functions=[function])
