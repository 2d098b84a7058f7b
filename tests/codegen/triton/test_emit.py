"""The generated source: traceable to the IR, hoisted, tensor-core shaped; clear errors."""

import pytest

from einscade.codegen.triton import KernelError, emit_kernel
from einscade.codegen.triton.compile import fuse_and_tile
from einscade.codegen.triton.plan import KernelPlan
from einscade.codegen.triton.statements import untile_is_identity
from einscade.frontends.local import neighborhood_attention
from einscade.frontends.softmax import softmax_attention
from einscade.frontends.variants import sigmoid_attention
from einscade.ir import print_einsum


def _tiled(cascade, block_p=64, block_m=32):
    return fuse_and_tile(cascade, block_p, block_m)


@pytest.fixture(scope="module")
def causal():
    tiled = _tiled(softmax_attention(causal=True))
    return tiled, emit_kernel(tiled, dtype="float16")


def _lines(text):
    return [line.strip() for line in text.splitlines()]


def test_every_statement_is_quoted_before_its_code(causal):
    tiled, source = causal
    comments = {line[2:].removesuffix("  (loop-invariant part)") for line in _lines(source.text)
                if line.startswith("# ")}  # fmt: skip
    for stmt in tiled.einsums():
        assert print_einsum(stmt) in comments, print_einsum(stmt)


def test_source_is_python_and_deterministic(causal):
    tiled, source = causal
    compile(source.text, "kernel.py", "exec")
    assert emit_kernel(tiled, dtype="float16").text == source.text


def test_query_tile_is_loaded_once_before_the_key_loop(causal):
    lines = _lines(causal[1].text)
    loop = lines.index("for m1 in range(0, M1):")
    q_load = next(k for k, line in enumerate(lines) if line.startswith("Q_tile = tl.load("))
    k_load = next(k for k, line in enumerate(lines) if line.startswith("K_tile = tl.load("))
    assert q_load < loop < k_load


def test_both_products_are_tensor_core_dots(causal):
    lines = _lines(causal[1].text)
    assert "QK = tl.dot(Q_tile, tl.trans(K_tile))" in lines
    # P is rounded to the input dtype for the second product, as FlashAttention does.
    assert "LSNV = tl.dot(SN_masked.to(tl.float16), V_tile)" in lines


def test_fp32_dots_are_exact_ieee():
    source = emit_kernel(_tiled(softmax_attention()), dtype="float32")
    dots = [line for line in _lines(source.text) if "tl.dot(" in line]
    assert len(dots) == 2 and all('input_precision="ieee"' in line for line in dots)


def test_running_values_are_loop_carried(causal):
    lines = _lines(causal[1].text)
    assert 'RGM = tl.full([P0], float("-inf"), tl.float32)' in lines
    assert "RSNV = tl.full([P0, F_PAD], 0.0, tl.float32)" in lines
    for name in ("RGM", "RSD", "RSNV"):
        assert lines.index(f"{name} = {name}_next") > lines.index("for m1 in range(0, M1):")


def test_masked_keys_get_the_identity_of_each_reduction(causal):
    lines = _lines(causal[1].text)
    assert 'S_masked = tl.where(LGM_fiber, S, float("-inf"))' in lines
    assert "SN_masked = tl.where(LGM_fiber, SN, 0.0)" in lines


def test_head_dims_are_padded_and_masked(causal):
    lines = _lines(causal[1].text)
    assert "e = tl.arange(0, E_PAD)" in lines and "in_E = e < E" in lines
    roles = {a.name: a.role for a in causal[1].args}
    assert roles["E"] == roles["F"] == "head" and roles["E_PAD"] == "pad"
    assert roles["P0"] == roles["M0"] == "constant"


def test_gqa_reads_the_shared_kv_head_from_the_index_expression():
    source = emit_kernel(_tiled(softmax_attention(kv_heads=True)), dtype="float16")
    assert "(h // G).to(tl.int64) * K_stride_hk" in source.text
    assert "in_HK = h // G < HK" in source.text


def test_box_tiles_check_which_rows_are_real_points():
    """4 x 4 boxes on a 4 x 6 grid overhang the y axis: a row there holds a wrapped
    coordinate of another box and must not be stored."""
    na = _tiled(neighborhood_attention(grid=(4, 6), kernel=(3, 3)), (4, 4), 16)
    plan = KernelPlan(na)
    assert not untile_is_identity(plan, plan.stores[0])
    assert "row_mask" in emit_kernel(na).text
    causal = KernelPlan(_tiled(softmax_attention(causal=True)))
    assert untile_is_identity(causal, causal.stores[0])
    # Overhanging only the first axis leaves coordinates past the end: the range check does.
    fits = KernelPlan(_tiled(neighborhood_attention(grid=(5, 4), kernel=(3, 3)), (4, 4), 16))
    assert untile_is_identity(fits, fits.stores[0])


def test_neighborhood_lets_become_named_blocks():
    source = emit_kernel(_tiled(neighborhood_attention(grid=(14, 14), kernel=(7, 7)), (8, 8)))
    lines = _lines(source.text)
    assert "px = p1 // PY1 * PX0 + p0 // PY0" in lines
    assert "start_x = tl.maximum(px - 3, 0) + tl.minimum(PX - px - 4, 0)" in lines


def test_map_predicates_mask_the_sum_operand():
    """Sigmoid attention masks S (a map): the masked A must be 0 in the A @ V product."""
    source = emit_kernel(_tiled(sigmoid_attention(causal=True)), dtype="float16")
    assert any(line.startswith("A_masked = tl.where(") for line in _lines(source.text))
    assert source.lse is None


def test_an_untiled_cascade_is_refused():
    with pytest.raises(KernelError, match="exactly one 'iterate' loop"):
        emit_kernel(softmax_attention())


def test_block_sizes_must_be_powers_of_two():
    with pytest.raises(KernelError, match="block size P0 = 48 must be a power of two"):
        emit_kernel(_tiled(softmax_attention(), 48, 32))


def test_dtype_must_be_known(causal):
    with pytest.raises(KernelError, match="dtype must be one of float16, bfloat16, float32"):
        emit_kernel(causal[0], dtype="int8")
