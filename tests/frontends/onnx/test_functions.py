"""Sites inside model-local functions: found with shapes from the calls, rewritten in place;
and the opset conversion that onnx-attention needs (functions kept, attributes moved)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto

from einscade.frontends.onnx import find_sites, load_model, rewrite_model
from einscade.frontends.onnx.function_shapes import annotate_functions
from einscade.frontends.onnx.opset import raise_opset
from tests.frontends.onnx import models

# mode -> (op that replaces the chain inside local::attn, its domain)
MODES = {
    "function": ("softmax_attention_0", "einscade"),
    "onnx-attention": ("Attention", ""),
    "ort": ("MultiHeadAttention", "com.microsoft"),
}


def _save(tmp_path, model, name="calls.onnx"):
    path = tmp_path / name
    onnx.save(model, path)
    return path


def test_site_in_a_function_called_twice_is_one_site_with_shapes(tmp_path):
    (site,) = find_sites(load_model(_save(tmp_path, models.function_model())).model).sites
    assert site.container == "function local::attn" and site.family == "decomposed"
    assert dict(site.shapes)["Q"] == "[2, 2, 6, 8]" and site.scale == pytest.approx(0.35)


@pytest.mark.parametrize("opset", [17, 18])
@pytest.mark.parametrize("mode", list(MODES))
def test_rewrite_inside_the_function_keeps_the_calls(tmp_path, mode, opset):
    (tmp_path / "in").mkdir()
    source = _save(tmp_path / "in", models.function_model(opset))
    before = models.fingerprint(source.parent)
    out = tmp_path / "out.onnx"
    (decision,) = rewrite_model(source, out, mode).decisions
    assert decision.rewritten, decision.reason
    feeds = models.feeds_for(source)
    np.testing.assert_allclose(models.run(out, feeds)[0], models.run(source, feeds)[0],
                               atol=1e-5, rtol=1e-4)  # fmt: skip
    written = onnx.load(out)
    calls = [n for n in written.graph.node if (n.domain, n.op_type) == ("local", "attn")]
    assert len(calls) == 2  # the function is rewritten, not inlined
    (attn,) = [f for f in written.functions if (f.domain, f.name) == ("local", "attn")]
    op, domain = MODES[mode]
    assert Counter((n.domain, n.op_type) for n in attn.node)[(domain, op)] == 1
    assert "Softmax" not in {n.op_type for n in attn.node}
    assert models.fingerprint(source.parent) == before
    if mode == "onnx-attention" and opset == 17:  # ReduceMean's axes attribute became an input
        (mean,) = [n for n in written.graph.node if n.op_type == "ReduceMean"]
        assert len(mean.input) == 2 and not mean.attribute[1:]


def test_call_shapes_that_differ_become_unknown_dims():
    model = models.function_model()
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 4  # a: [2, 2, 4, 8]
    model.graph.node[1].input[:] = ["b", "b", "c"]  # q is a [.., 4, 8], then b [.., 6, 8]
    annotated = annotate_functions(onnx.shape_inference.infer_shapes(model))
    infos = {i.name: i.type.tensor_type.shape for i in annotated.functions[0].value_info}
    assert [d.HasField("dim_value") for d in infos["q"].dim] == [True, True, False, True]
    assert [d.dim_value for d in infos["k"].dim] == [2, 2, 6, 8]


def test_opset_conversion_moves_removed_attributes_into_inputs():
    """Two unnamed ReduceMean(axes=...) at opset 17: each gets its own Constant input."""
    nodes = [oh.make_node("ReduceMean", ["a"], ["b"], axes=[1], keepdims=1),
             oh.make_node("ReduceMean", ["b"], ["c"], axes=[0], keepdims=1)]  # fmt: skip
    a = oh.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3])
    c = oh.make_tensor_value_info("c", TensorProto.FLOAT, [1, 1])
    graph = oh.make_graph(nodes, "means", [a], [c])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=10)
    converted, reason = raise_opset(ir.serde.deserialize_model(model))
    assert reason is None
    proto = ir.serde.serialize_model(converted)
    onnx.checker.check_model(proto, full_check=True)
    means = [n for n in proto.graph.node if n.op_type == "ReduceMean"]
    assert [len(n.input) for n in means] == [2, 2] and means[0].input[1] != means[1].input[1]
    x = np.random.default_rng(0).random((2, 3)).astype(np.float32)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"a": x})[0], [[x.mean()]], rtol=1e-6)
