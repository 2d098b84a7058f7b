"""Window attention lifted onto the original token grid: partitions read through, tokens in
place, one ``window_attention`` cascade per site; near misses stay per window with the
reason."""

from __future__ import annotations

import pytest
import torch

from einscade.codegen.reference import reference
from tests.frontends.fx import models
from tests.frontends.fx.harness import compile_run

SWIN = "window_attention(grid=(8, 8), window=(4, 4), bias, scale=0.353553)"
SHIFTED = "window_attention(grid=(8, 8), window=(4, 4), shift=(2, 2), bias, scale=0.353553)"


def _compiled_and_checked(run_target: str, module: torch.nn.Module, x: torch.Tensor):
    run = compile_run(module.eval(), x, options={"target": run_target})
    run.assert_close()
    return run


@pytest.mark.parametrize("target", ["torch", "reference"])
@pytest.mark.parametrize(("shift", "expected"), [(0, SWIN), (2, SHIFTED)])
def test_swin_block_is_lifted_onto_the_grid(shift, expected, target):
    torch.manual_seed(0)
    run = _compiled_and_checked(target, models.SwinBlock(shift=shift), torch.randn(2, 64, 16))
    assert [r.summary for r in run.captured] == [expected], run.records
    assert "window partition lifted onto the 8 x 8 token grid" in run.captured[0].reason
    cascade = run.captured[0].cascade
    assert cascade.name == "window_attention"
    assert [d.name for d in cascade.inputs] == ["Q", "K", "V", "RB"]


def test_lifted_graph_reads_tokens_in_place(tmp_path):
    """No roll, no window partition and no region mask remain: the q/k/v and output
    Linears run on the [B, 64, C] grid tokens and the op reads them there."""
    torch.manual_seed(0)
    module = models.SwinBlock(shift=2).eval()
    run = compile_run(module, torch.randn(2, 64, 16), options={"dump_dir": str(tmp_path)})
    run.assert_close()
    (after_file,) = tmp_path.glob("graph*_after.py")
    after = after_file.read_text()
    assert "einscade.window_site" in after
    for gone in ("roll", "softmax", "permute(0, 1, 3, 2, 4, 5)", "-100"):
        assert gone not in after, gone
    assert "reshape((2, 64, 16))" in after  # the grid tokens the Linears now read


def test_maxvit_block_attention_with_sdpa_and_chunk():
    torch.manual_seed(0)
    run = _compiled_and_checked("torch", models.BlockAttention(), torch.randn(2, 8, 8, 16))
    assert [r.summary for r in run.captured] == ["window_attention(grid=(8, 8), window=(4, 4))"]
    assert run.captured[0].family == "sdpa"


def test_token_mixing_between_partition_and_attention_stays_per_window(monkeypatch, capfd):
    monkeypatch.setenv("EINSCADE_DEBUG", "1")
    torch.manual_seed(0)
    module = models.SwinBlock(shift=2, mix_tokens=True)
    run = _compiled_and_checked("torch", module, torch.randn(2, 64, 16))
    assert [r.summary for r in run.captured] == ["softmax_attention(bias, scale=0.353553)"]
    lines = [line for line in capfd.readouterr().err.splitlines() if line.startswith("einscade:")]
    assert len(lines) == 1, lines
    assert "window layout not lifted: 'y_3' (cumsum) between the window partition" in lines[0]


def test_windows_that_wrap_around_stay_per_window():
    """A roll without Swin's region mask: windows wrap around the grid edge, which the
    offset windows on the original grid do not; the site stays per window."""
    torch.manual_seed(0)
    module = models.SwinBlock(shift=2)
    module.labels.zero_()  # every token in one region: no mask
    run = _compiled_and_checked("torch", module, torch.randn(2, 64, 16))
    assert [r.summary for r in run.captured] == ["softmax_attention(bias, scale=0.353553)"]
    assert "not Swin's region mask for shift (2, 2)" in run.captured[0].reason


def test_region_mask_buffer_is_guarded():
    """The region mask is read from an integer buffer at compile time: changing the buffer
    afterwards is an error, not a silently wrong mask."""
    torch.manual_seed(0)
    module = models.SwinBlock(shift=2).eval()
    x = torch.randn(2, 64, 16)
    torch._dynamo.reset()
    compiled = torch.compile(module, backend="einscade", options={"fallback": "eager"})
    with torch.no_grad():
        compiled(x)
        module.labels.add_(0)  # a write bumps the version counter
        with pytest.raises(Exception, match="buffer .*labels.* changed after compilation"):
            compiled(x)


# -- MaxViT grid attention ---------------------------------------------------------------------


def _grid_partition(x: torch.Tensor, size: int) -> torch.Tensor:
    """timm's ``grid_partition`` on ``[B, H, W, C]``: ``[B * windows, size, size, C]``."""
    b, h, w, c = x.shape
    x = x.view(b, size, h // size, size, w // size, c).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(-1, size, size, c)


def _grid_reverse(windows: torch.Tensor, size: int, grid: tuple[int, int]) -> torch.Tensor:
    """timm's ``grid_reverse``."""
    (h, w), c = grid, windows.shape[-1]
    x = windows.view(-1, h // size, w // size, size, size, c).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(-1, h, w, c)


def _per_grid_window(q, k, v, rb, size: int, grid: tuple[int, int]) -> torch.Tensor:
    """The oracle: attention inside each timm grid window with ``rb`` added, in float64, on
    ``[B, heads, H*W, d]`` tokens."""
    b, heads = q.shape[:2]

    def windows(x: torch.Tensor) -> torch.Tensor:  # [B * windows, heads, N, d]
        x = x.permute(0, 2, 1, 3).reshape(b, *grid, heads * x.shape[-1])
        parts = _grid_partition(x, size)
        return parts.reshape(parts.shape[0], size * size, heads, -1).transpose(1, 2)

    qw, kw, vw = (windows(t).double() for t in (q, k, v))
    out = ((qw @ kw.transpose(-2, -1)) * q.shape[-1] ** -0.5 + rb.double()).softmax(-1) @ vw
    out = out.transpose(1, 2).reshape(-1, size, size, heads * v.shape[-1])
    out = _grid_reverse(out, size, grid).reshape(b, grid[0] * grid[1], heads, -1)
    return out.transpose(1, 2)


@pytest.mark.parametrize(
    ("grid", "size", "windows_2d", "target"),
    [((8, 8), 4, False, "torch"), ((8, 8), 4, False, "reference"), ((8, 4), 2, False, "torch"),
     ((8, 4), 2, True, "torch")],
)  # fmt: skip
def test_maxvit_grid_attention_is_lifted_onto_the_grid(grid, size, windows_2d, target):
    torch.manual_seed(0)
    module = models.GridAttention(size=size, windows_2d=windows_2d)
    run = _compiled_and_checked(target, module, torch.randn(2, *grid, 16))
    options = f"grid={grid}, size={(size, size)}, mode=grid, bias, scale=0.353553"
    expected = f"maxvit_attention({options})"
    assert [r.summary for r in run.captured] == [expected], run.records
    assert f"grid partition lifted onto the {grid[0]} x {grid[1]} token grid" in (
        run.captured[0].reason
    )


def test_lifted_grid_cascade_is_per_window_attention():
    """The lifted cascade on random grid tokens against attention inside timm's grid
    windows (the partition written out, the bias indexed by the position in the window)."""
    torch.manual_seed(0)
    grid, size = (8, 4), 2
    module, x = models.GridAttention(size=size), torch.randn(2, *grid, 16)
    run = _compiled_and_checked("reference", module, x)
    cascade = run.captured[0].cascade
    assert [d.name for d in cascade.inputs] == ["Q", "K", "V", "RB"]
    q, k, v = (torch.randn(2, 2, grid[0] * grid[1], 8) for _ in range(3))
    rb = torch.randn(2, size * size, size * size)
    got = reference(cascade, Q=q, K=k, V=v, RB=rb, dtype=torch.float64)
    torch.testing.assert_close(got, _per_grid_window(q, k, v, rb, size, grid))


def test_lifted_grid_graph_has_no_partition(tmp_path):
    torch.manual_seed(0)
    module, x = models.GridAttention().eval(), torch.randn(2, 8, 8, 16)
    run = compile_run(module, x, options={"dump_dir": str(tmp_path)})
    run.assert_close()
    (after_file,) = tmp_path.glob("graph*_after.py")
    after = after_file.read_text()
    assert "einscade.window_site" in after
    for gone in ("softmax", "permute(0, 2, 4, 1, 3, 5)", "permute(0, 3, 1, 4, 2, 5)"):
        assert gone not in after, gone
