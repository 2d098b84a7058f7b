"""Bad input: one-line error, exit code 1, nothing written, nothing read outside the folder."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnx.helper as oh
import pytest
from onnx import TensorProto

from einscade.compiler.cli import main
from tests.frontends.onnx import models


def _fails(argv: list[str], capsys, expected: str) -> None:
    code = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 1, captured.out
    assert len(lines) == 1 and lines[0].startswith("einscade: error: "), captured.err
    assert expected in lines[0], lines[0]
    assert "Traceback" not in captured.err + captured.out


def _both_commands_fail(path, tmp_path, capsys, expected: str) -> None:
    """inspect and rewrite (both modes) fail the same way; the folders stay as they were."""
    out_dir = tmp_path / "out"
    out_dir.mkdir(exist_ok=True)
    before = models.fingerprint(path.parent)
    _fails(["onnx", "inspect", str(path)], capsys, expected)
    for mode in ("function", "onnx-attention"):
        argv = ["onnx", "rewrite", str(path), "-o", str(out_dir / "x.onnx"), "--to", mode]
        _fails(argv, capsys, expected)
    assert list(out_dir.iterdir()) == []
    assert models.fingerprint(path.parent) == before


@pytest.fixture
def good_bytes(tmp_path) -> bytes:
    return models.chain_model().SerializeToString()


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9, 0.99])
def test_truncated_file(tmp_path, capsys, good_bytes, fraction):
    path = tmp_path / "model" / "cut.onnx"
    path.parent.mkdir()
    path.write_bytes(good_bytes[: int(len(good_bytes) * fraction)])
    code = main(["onnx", "inspect", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and str(path) in err[0]


@pytest.mark.parametrize(
    "content", [b"hello, this is not a model\n", bytes(range(256)) * 4, b"", b"\x08\x07"]
)
def test_not_an_onnx_file(tmp_path, capsys, content):
    path = tmp_path / "model" / "junk.onnx"
    path.parent.mkdir()
    path.write_bytes(content)
    _both_commands_fail(path, tmp_path, capsys, "junk.onnx: not a")


def test_missing_file(tmp_path, capsys):
    _fails(["onnx", "inspect", str(tmp_path / "nope.onnx")], capsys, "no such file")


def test_graph_with_a_cycle(tmp_path, capsys):
    x = oh.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    nodes = [oh.make_node("Add", ["x", "b"], ["a"], name="A"),
             oh.make_node("Relu", ["a"], ["b"], name="B")]  # fmt: skip
    graph = oh.make_graph(nodes, "cycle", [x], [oh.make_tensor_value_info("b", 1, [2])])
    path = tmp_path / "model" / "cycle.onnx"
    path.parent.mkdir()
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)]), path)
    _both_commands_fail(path, tmp_path, capsys, "cycle through nodes")


@pytest.mark.parametrize(
    ("domain", "version", "expected"),
    [("", 99, "unknown opset version ai.onnx 99"),
     ("com.example", 1, "unknown opset domain 'com.example'")],
)  # fmt: skip
def test_unknown_opset(tmp_path, capsys, domain, version, expected):
    model = models.chain_model()
    if domain:
        model.graph.node[0].domain = domain
        model.opset_import.append(oh.make_opsetid(domain, version))
    else:
        model.opset_import[0].version = version
    path = tmp_path / "model" / "opset.onnx"
    path.parent.mkdir()
    onnx.save(model, path)
    _both_commands_fail(path, tmp_path, capsys, expected)


def _external(tmp_path, location: str):
    """A model whose scale initializer lives at ``location``; a secret file sits outside."""
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.float32(0.35).tobytes())
    path = folder / "ext.onnx"
    onnx.save(models.externalize(models.chain_model(), "scale", location), path)
    return path, secret


def test_external_data_absolute_path(tmp_path, capsys):
    path, secret = _external(tmp_path, str(tmp_path / "secret.bin"))
    _both_commands_fail(path, tmp_path, capsys, "is absolute")


@pytest.mark.parametrize("location", ["../secret.bin", "sub/../../secret.bin", "..\\secret.bin"])
def test_external_data_dot_dot(tmp_path, capsys, location):
    path, _ = _external(tmp_path, location)
    _both_commands_fail(path, tmp_path, capsys, "contains '..'")


def test_external_data_symlink_file_and_folder(tmp_path, capsys):
    path, secret = _external(tmp_path, "link.bin")
    os.symlink(secret, path.parent / "link.bin")
    _both_commands_fail(path, tmp_path, capsys, "goes through a symbolic link (link.bin)")
    path, _ = _external(tmp_path, "sub/secret.bin")
    os.symlink(tmp_path, path.parent / "sub")
    _both_commands_fail(path, tmp_path, capsys, "goes through a symbolic link (sub)")


@pytest.mark.parametrize(
    ("write", "location", "expected"),
    [(b"", "weights.bin", "does not name an existing file"),
     (b"\x00", "weights.bin", "lie outside the file (1 bytes)"),
     (b"", "C:/weights.bin", "is absolute")],
)  # fmt: skip
def test_external_data_missing_or_short(tmp_path, capsys, write, location, expected):
    path, _ = _external(tmp_path, location)
    if write:
        (path.parent / location).write_bytes(write)
    _both_commands_fail(path, tmp_path, capsys, expected)


def test_valid_external_data_is_read_and_rewritten(tmp_path, capsys):
    path, _ = _external(tmp_path, "weights.bin")
    (path.parent / "weights.bin").write_bytes(np.float32(0.35).tobytes())
    out = tmp_path / "out.onnx"
    assert main(["onnx", "rewrite", str(path), "-o", str(out)]) == 0
    assert (tmp_path / "out.onnx.data").is_file()  # fresh data file beside the output
    assert "1 of 1 site(s) rewritten as function" in capsys.readouterr().out


def test_unexpected_arguments_and_missing_output(tmp_path, capsys):
    path = tmp_path / "chain.onnx"
    onnx.save(models.chain_model(), path)
    _fails(["onnx", "inspect", str(path), "--bogus"], capsys, "unexpected arguments --bogus")
    _fails(["onnx", "rewrite", str(path), "-o", str(tmp_path / "no" / "x.onnx")], capsys,
           "does not exist")  # fmt: skip
