"""IR drop: dense nodal solve against hand-computed circuits, the direct (block elimination)
and iterative solvers against the dense one, the closed-form approximation's stated error,
and the effect's contract."""

from __future__ import annotations

import itertools

import pytest
import torch

from xbarprune.errors import SpecError
from xbarprune.hardware.nonideal import (
    EffectContext,
    IRDrop,
    effective_conductance,
    nodal_solve,
)
from xbarprune.hardware.nonideal.ir_drop import _direct, _iterative
from xbarprune.hardware.spec import CrossbarSpec, DeviceSpec

F64 = torch.float64


def rand_g(t, r, c, seed=0, lo=1e-6, hi=1e-4):
    gen = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(t, r, c, generator=gen, dtype=F64)


def test_one_cell_by_hand():
    g = torch.tensor([[2e-5]], dtype=F64)
    want = 1.0 / (1000.0 + 1.0 / 2e-5 + 500.0)  # V / (r_source + 1/G + r_sink), no segments
    for r_row, r_col in [(0.0, 0.0), (5.0, 10.0)]:
        i = nodal_solve(g, torch.tensor([1.0]), r_row, r_col, r_source=1000.0, r_sink=500.0)
        assert i.shape == (1,) and i.item() == pytest.approx(want, rel=1e-12)
        geff = effective_conductance(g, r_row, r_col, 1000.0, 500.0)
        assert geff.item() == pytest.approx(want, rel=1e-9)
    assert nodal_solve(g, torch.tensor([0.3]), 0, 0, 1000.0, 500.0).item() == pytest.approx(
        0.3 * want, rel=1e-12
    )


def test_two_rows_one_column_by_hand():
    g0, g1, rc, rk = 3e-5, 7e-5, 10.0, 200.0
    g = torch.tensor([[g0], [g1]], dtype=F64)
    # V0 = 1, V1 = 0 (r_source = 0): b1 = G0 / (G0 (1 + rc (G1 + 1/rk)) + G1 + 1/rk)
    b1 = g0 / (g0 * (1 + rc * (g1 + 1 / rk)) + g1 + 1 / rk)
    e00 = b1 / rk
    # V0 = 0, V1 = 1: b1 = G1 / (G1 + 1/rk + G0 / (1 + rc G0))
    e10 = g1 / (g1 + 1 / rk + g0 / (1 + rc * g0)) / rk
    i = nodal_solve(g, torch.eye(2, dtype=F64), r_row=5.0, r_col=rc, r_source=0.0, r_sink=rk)
    assert i[:, 0].tolist() == pytest.approx([e00, e10], rel=1e-12)
    for method in ("direct", "iterative", "nodal", "approx"):  # approx: exact, ideal rows
        geff = effective_conductance(g, 5.0, rc, 0.0, rk, method=method)
        assert geff[:, 0].tolist() == pytest.approx([e00, e10], rel=1e-9), method


def test_nodal_solve_shapes_and_linearity():
    g = rand_g(3, 6, 5, seed=1)
    r = (5.0, 10.0, 100.0, 50.0)
    geff = effective_conductance(g, *r, method="nodal")
    v = torch.randn(4, 6, generator=torch.Generator().manual_seed(2), dtype=F64)
    v[:, [1, 4]] = 0.0  # unused rows: zero input contributes nothing
    direct = nodal_solve(g, v, *r)
    assert direct.shape == (3, 4, 5)
    assert torch.allclose(direct, torch.einsum("tij,bi->tbj", geff, v), rtol=1e-10, atol=0)
    per_tile = nodal_solve(g, v.unsqueeze(0).expand(3, 4, 6), *r)
    assert torch.allclose(per_tile, direct, rtol=1e-12, atol=0)
    assert nodal_solve(g[0], v[0], *r).shape == (5,)


def test_zero_conductance_top_row_is_invisible():
    g = rand_g(1, 5, 4, seed=3)
    g[:, 0] = 0.0  # a row without cells (top row: its column segments carry no current)
    v = torch.tensor([0.7, 0.2, -0.4, 1.0, 0.5], dtype=F64)
    r = (5.0, 10.0, 1000.0, 1000.0)
    full = nodal_solve(g, v, *r)
    without = nodal_solve(g[:, 1:], v[1:], *r)
    assert torch.allclose(full, without, rtol=1e-12, atol=0)


RESISTANCES = [
    (1.0, 1.0, 0.0, 0.0),
    (5.0, 10.0, 0.0, 0.0),
    (2.5, 10.0, 100.0, 50.0),
    (5.0, 10.0, 1000.0, 1000.0),  # the ir_drop preset's parasitics
    (0.0, 10.0, 0.0, 1000.0),
    (5.0, 0.0, 1000.0, 0.0),
    (0.0, 0.0, 1000.0, 1000.0),
    (0.0, 0.0, 0.0, 100.0),
]


@pytest.mark.parametrize("r", RESISTANCES, ids=str)
def test_iterative_matches_nodal(r):
    g = rand_g(3, 8, 8, seed=4)
    exact = effective_conductance(g, *r, method="nodal")
    it = effective_conductance(g, *r, method="iterative")
    assert ((it - exact).abs() <= 1e-6 * exact.abs()).all()  # elementwise relative
    # all inputs at 1 V: every cell sees at most 1 V, so the total current drops
    # (single entries may rise: sneak paths add current to a column)
    assert exact.sum() < g.sum()


@pytest.mark.parametrize("shape", [(1, 1), (1, 4), (5, 1), (4, 6), (7, 3)], ids=str)
def test_direct_matches_nodal_for_every_zero_pattern(shape):
    """Each of r_row, r_col, r_source, r_sink zero (an ideal wire, merged or Dirichlet node)
    or not: 16 circuits per shape, including single rows and columns."""
    g = rand_g(3, *shape, seed=9, lo=1e-5, hi=1e-3)
    for on in itertools.product((0, 1), repeat=4):
        r = tuple(x * f for x, f in zip((5.0, 10.0, 1000.0, 500.0), on, strict=True))
        exact = effective_conductance(g, *r, method="nodal")
        direct = effective_conductance(g, *r, method="direct")
        err = ((direct - exact).abs().max() / exact.abs().max()).item()
        assert err < 1e-11, (r, err)


def test_direct_matches_iterative_on_64x64_rram_tiles():
    gen = torch.Generator().manual_seed(13)
    g = 2e-6 + 1.8e-5 * torch.rand(3, 64, 64, generator=gen, dtype=F64)  # R_on 50 kOhm, 1:10
    r = (5.0, 10.0, 1000.0, 1000.0)
    direct = effective_conductance(g, *r)  # the default method
    it = effective_conductance(g, *r, method="iterative", tol=1e-12)
    assert ((direct - it).abs() <= 1e-9 * it.abs()).all()
    chunked = _direct(g, *r, chunk=64 * 64 * 64)  # one tile per chunk
    assert torch.allclose(chunked, direct, rtol=1e-13, atol=0)


def test_direct_rejects_bad_conductances():
    g = rand_g(1, 4, 4)
    g[0, 1, 2] = float("nan")
    with pytest.raises(SpecError, match="positive definite"):
        effective_conductance(g, 5.0, 10.0, 1000.0, 1000.0)


def test_iterative_rectangular_and_float32():
    g = rand_g(2, 6, 9, seed=5)
    r = (5.0, 10.0, 300.0, 200.0)
    exact = effective_conductance(g, *r, method="nodal")
    it = effective_conductance(g.float(), *r)
    assert it.dtype == torch.float32 and it.shape == (2, 6, 9)
    assert torch.allclose(it.double(), exact, rtol=1e-6, atol=0)
    it2 = effective_conductance(g[0], *r)
    assert it2.shape == (6, 9) and torch.allclose(it2, exact[0], rtol=1e-9, atol=0)


def test_iterative_chunks_agree():
    g = rand_g(5, 8, 8, seed=6)
    r = (5.0, 10.0, 1000.0, 1000.0)
    whole, _ = _iterative(g, *r, 1e-12, 2000, chunk=1 << 20)
    pieces, _ = _iterative(g, *r, 1e-12, 2000, chunk=8 * 8 * 8 * 2)  # 2 tiles per chunk
    assert torch.allclose(whole, pieces, rtol=1e-10, atol=0)


@pytest.mark.parametrize(
    ("r", "bound"),
    [
        ((2.5, 2.5, 0.0, 0.0), 5e-4),  # measured 2.5e-4
        ((5.0, 10.0, 0.0, 0.0), 3e-3),  # measured 1.8e-3
        ((5.0, 10.0, 1000.0, 1000.0), 0.2),  # measured 0.15
        ((0.0, 10.0, 0.0, 1000.0), 1e-10),  # ideal rows: exact
        ((5.0, 0.0, 1000.0, 0.0), 1e-10),  # ideal columns: exact
    ],
    ids=str,
)
def test_approx_error_as_documented(r, bound):
    g = rand_g(4, 16, 16, seed=0)
    exact = effective_conductance(g, *r)
    approx = effective_conductance(g, *r, method="approx")
    err = ((approx - exact).abs().max() / exact.abs().max()).item()
    assert err <= bound
    if bound > 1e-6:  # the approximation must beat ignoring IR drop by far
        ideal_err = ((g - exact).abs().max() / exact.abs().max()).item()
        assert err < 0.25 * ideal_err


def test_zero_resistance_is_ideal_exactly():
    g = rand_g(2, 8, 8, seed=7).float()
    assert effective_conductance(g, 0.0, 0.0) is g
    ctx = EffectContext(DeviceSpec(), CrossbarSpec(8, 8), torch.Generator().manual_seed(0))
    assert torch.equal(IRDrop().apply(g, ctx), g)
    for method in ("nodal", "approx", "iterative", "direct"):
        out = effective_conductance(g, 0.0, 0.0, method=method)
        assert torch.equal(out, g)


def test_irdrop_effect_contract():
    g = rand_g(3, 8, 8, seed=8).float()
    ctx = EffectContext(DeviceSpec(), CrossbarSpec(8, 8), torch.Generator().manual_seed(0))
    eff = IRDrop(r_row=5.0, r_col=10.0, r_source=1000.0, r_sink=1000.0)
    assert eff.stage == "circuit"
    out = eff.apply(g, ctx)
    assert out.shape == g.shape and out.dtype == g.dtype
    ref = effective_conductance(g.double(), 5.0, 10.0, 1000.0, 1000.0, method="nodal")
    assert torch.allclose(out.double(), ref, rtol=1e-5, atol=0)
    assert torch.equal(eff.apply(g, ctx), out)  # deterministic


def test_irdrop_validation_and_non_convergence():
    with pytest.raises(SpecError, match="IRDrop.r_row"):
        IRDrop(r_row=-1.0)
    with pytest.raises(SpecError, match="IRDrop.method"):
        IRDrop(method="spice")
    with pytest.raises(SpecError, match="max_iter"):
        effective_conductance(
            rand_g(1, 8, 8), 5.0, 10.0, 1000.0, 1000.0, method="iterative", max_iter=2
        )
    with pytest.raises(SpecError, match="v must be"):
        nodal_solve(rand_g(2, 4, 4), torch.ones(3, 3, 4), 1.0, 1.0)


def test_nodal_solve_is_right_with_several_threads():
    """Regression: torch 2.13's batched LU solve is broken on CPU with > 1 thread (MKL); the
    nodal and direct solves use batched Cholesky and must agree with the iterative one at 2
    threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        gen = torch.Generator().manual_seed(12)
        g = 2e-6 + 1.8e-5 * torch.rand(3, 12, 12, generator=gen, dtype=torch.float64)
        exact = effective_conductance(g, 5.0, 10.0, 1000.0, 1000.0, method="nodal")
        fast = effective_conductance(g, 5.0, 10.0, 1000.0, 1000.0, method="iterative", tol=1e-12)
        assert ((fast - exact).abs() <= 1e-9 * exact.abs()).all()
        direct = effective_conductance(g, 5.0, 10.0, 1000.0, 1000.0, method="direct")
        assert ((direct - exact).abs() <= 1e-11 * exact.abs()).all()
    finally:
        torch.set_num_threads(threads)
