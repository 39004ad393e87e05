"""Group Sawtooth Regularization and APA: hand-computed values (shared/papers/prunix.md §4)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xbarprune.compress.parts.apa import allocate, prune_to
from xbarprune.compress.parts.sawtooth import GroupSawtooth, quantize_to_grid, sawtooth
from xbarprune.hardware import CrossbarSpec
from xbarprune.mapping import map_model, weight_to_matrix
from xbarprune.training import MaskSet, TrainConfig, train

D, L = 0.1, 8  # Delta and magnitude codes: levels -0.7 .. 0.7


def st(w):
    return sawtooth(torch.tensor(w, dtype=torch.float64), D, L)


def test_sawtooth_zero_on_every_level():
    levels = torch.arange(-7, 8, dtype=torch.float64) * D
    assert torch.allclose(sawtooth(levels, D, L), torch.zeros(15, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize(
    "w, expected",
    [
        (0.04, 0.04),
        (-0.03, 0.03),
        (0.13, 0.03),
        (0.05, 0.05),
        (0.75, 0.05),
        (0.8, 0.1),
        (-0.8, 0.1),
        (0.27, 0.03),
        (0.23, 0.03),
    ],
)
def test_sawtooth_values(w, expected):
    assert float(st(w)) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("w, sign", [(0.23, 1.0), (0.27, -1.0), (0.8, 1.0), (-0.04, -1.0)])
def test_sawtooth_gradient_points_to_nearest_level(w, sign):
    x = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    sawtooth(x, D, L).backward()
    assert float(x.grad) == sign


def _one_layer(weights: torch.Tensor) -> tuple[nn.Module, object]:
    lin = nn.Linear(weights.shape[1], weights.shape[0], bias=False)
    with torch.no_grad():
        lin.weight.copy_(weights)
    model = nn.Sequential(lin)
    return model, map_model(model, CrossbarSpec(4, 2))  # 1 weight per tile row


def test_group_with_small_weights_is_group_lasso():
    vals = torch.tensor([0.01, -0.03, 0.02], dtype=torch.float64)
    assert float(sawtooth(vals, 0.1, 8).norm()) == pytest.approx(0.037417, abs=1e-6)
    # inside a layer: group 0 sets w_max = 0.7 (Delta = 0.1), group 1 is small -> its
    # gradient equals the group-lasso gradient sqrt(|g|) w / ||w|| / N_groups
    w = torch.tensor([[0.7, 0.3, -0.2], [0.01, -0.03, 0.02]])
    model, lay = _one_layer(w)
    reg = GroupSawtooth(lay, n_levels=8, kind="tile_column", lam=1.0, warmup=0.0)
    reg(model).backward()
    small = w[1]
    expected = 3**0.5 * small / small.norm() / 2
    assert torch.allclose(model[0].weight.grad[1], expected, atol=1e-5)


def test_group_penalty_value_and_gradient_hand_computed():
    # one layer, matrix 3x1 (Linear 3->1) on a 4x2 tile: one tile column group of 3 weights
    w = torch.tensor([[0.70, 0.23, 0.04]])
    model, lay = _one_layer(w)
    reg = GroupSawtooth(lay, n_levels=8, kind="tile_column", lam=1.0, warmup=0.0)
    # Delta = 0.7 / 7 = 0.1; s = (0, 0.03, 0.04); ||s|| = 0.05; sqrt(3) * 0.05 / 1 group
    val = reg(model, 1.0)
    assert float(val.detach()) == pytest.approx(3**0.5 * 0.05, rel=1e-4)
    val.backward()
    g = model[0].weight.grad[0]
    # d/dw_i = sqrt(3) * s_i * sign(w_i - Q(w_i)) / ||s||
    expected = torch.tensor([0.0, 3**0.5 * 0.03 / 0.05, 3**0.5 * 0.04 / 0.05])
    assert torch.allclose(g, expected, atol=1e-4)


def test_group_on_levels_has_zero_penalty_and_finite_gradient():
    w = torch.tensor([[0.2, -0.5, 0.0, 0.7]])
    model, lay = _one_layer(w)
    reg = GroupSawtooth(lay, n_levels=8, kind="tile_column", lam=1.0, warmup=0.0)
    v = reg(model, 1.0)
    assert float(v.detach()) < 1e-5
    v.backward()
    assert torch.isfinite(model[0].weight.grad).all()
    assert float(model[0].weight.grad.abs().max()) < 1e-5


def test_penalty_scales_linearly_with_weights():
    torch.manual_seed(0)
    w = torch.randn(6, 5)
    m1, lay = _one_layer(w)
    m2, _ = _one_layer(3.0 * w)
    reg = GroupSawtooth(lay, n_levels=8, kind="tile_column", lam=1.0, warmup=0.0)
    assert float(reg(m2)) == pytest.approx(3.0 * float(reg(m1)), rel=1e-4)


def test_warmup_ramps_lambda():
    torch.manual_seed(0)
    m, lay = _one_layer(torch.randn(4, 3))
    reg = GroupSawtooth(lay, n_levels=8, kind="tile_column", lam=2.0, warmup=0.5)
    full = float(reg(m, 1.0))
    assert float(reg(m, 0.25)) == pytest.approx(full / 2, rel=1e-5)
    assert float(reg(m, 0.0)) == 0.0


def test_gradient_descent_on_penalty_snaps_to_levels_and_zeroes_small_groups():
    torch.manual_seed(1)
    # 4 tile-column groups of 3 weights (Linear 3 -> 4 on 4x2 tiles)
    w = torch.empty(4, 3).uniform_(-0.7, 0.7)
    w[0] = torch.tensor([0.7, -0.69, 0.68])  # keeps w_max ~0.7 -> Delta ~ 0.1
    w[3] = torch.tensor([0.02, -0.03, 0.01])  # a small group inside (-Delta/2, Delta/2)
    m, lay = _one_layer(w)
    reg = GroupSawtooth(lay, n_levels=8, kind="tile_column", lam=1.0, warmup=0.0)
    opt = torch.optim.SGD(m.parameters(), lr=2e-3)
    for _ in range(3000):
        opt.zero_grad()
        reg(m).backward()
        opt.step()
    W = m[0].weight.detach()
    delta = float(W.abs().max()) / 7
    assert float(W[3].abs().max()) < 2e-3  # small group driven to zero
    q = quantize_to_grid(W, delta, 8)
    assert float((W - q).abs().max()) < 5e-3


# ---------------------------------------------------------------- APA allocation


def _curves(shape_a, shape_b):
    grid = [0.3, 0.5, 0.7, 0.9]
    return {"a": [(s, shape_a(s)) for s in grid], "b": [(s, shape_b(s)) for s in grid]}


def test_allocation_meets_target_within_one_percent():
    curves = {
        "c1": [(0.5, 0.01), (0.8, 0.05), (0.95, 0.2)],
        "c2": [(0.5, 0.0), (0.8, 0.01), (0.95, 0.03)],
        "fc": [(0.5, 0.02), (0.8, 0.1), (0.95, 0.4)],
    }
    n = {"c1": 500, "c2": 25000, "fc": 400000}
    a = allocate(curves, n, 0.85, s_max=0.97)
    assert a.reached
    assert 0.85 <= a.overall <= 0.86
    assert all(0 <= s <= 0.97 for s in a.sparsity.values())


def test_dominated_layer_gets_less_sparsity():
    curves = _curves(lambda s: 2 * s**2, lambda s: s**2)
    a = allocate(curves, {"a": 1000, "b": 1000}, 0.6)
    assert a.sparsity["a"] <= a.sparsity["b"]


def test_identical_layers_get_equal_sparsity():
    curves = _curves(lambda s: s**2, lambda s: s**2)
    a = allocate(curves, {"a": 1000, "b": 1000}, 0.6)
    assert abs(a.sparsity["a"] - 0.6) <= 0.01 and abs(a.sparsity["b"] - 0.6) <= 0.01


def test_zero_sensitivity_layer_is_pruned_first():
    curves = _curves(lambda s: 0.0, lambda s: s)
    a = allocate(curves, {"a": 1000, "b": 1000}, 0.5, s_max=0.9)
    assert a.sparsity["a"] == pytest.approx(0.9)
    assert a.sparsity["b"] == pytest.approx(0.1, abs=0.011)


def test_rounds_never_decrease_and_unreachable_is_flagged():
    curves = _curves(lambda s: s, lambda s: s)
    a = allocate(curves, {"a": 10, "b": 10}, 0.8, current={"a": 0.85, "b": 0.0}, s_max=0.9)
    assert a.sparsity["a"] >= 0.85
    bad = allocate(curves, {"a": 10, "b": 10}, 0.95, s_max=0.9)
    assert not bad.reached and bad.overall == pytest.approx(0.9)


def test_allocation_deterministic():
    curves = _curves(lambda s: s**3, lambda s: s**2)
    a1 = allocate(curves, {"a": 300, "b": 700}, 0.7)
    a2 = allocate(curves, {"a": 300, "b": 700}, 0.7)
    assert a1.sparsity == a2.sparsity


# ---------------------------------------------------------------- masks persist


def test_pruned_group_stays_zero_through_finetuning():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    lay = map_model(model, CrossbarSpec(4, 4))  # 2 weights per tile row
    masks = prune_to(model, lay, {"1": 0.5, "3": 0.5}, "tile_column", MaskSet())
    mat = weight_to_matrix(model[1].weight.detach()).clone()
    g = lay["1"].groups("tile_column")
    zero_groups = ~g.nonzero(mat)
    assert int(zero_groups.sum()) >= len(g) // 2
    x = torch.randn(64, 16)
    y = torch.randint(0, 3, (64,))
    ds = torch.utils.data.TensorDataset(x, y)
    train(
        model,
        ds,
        TrainConfig(epochs=2, batch_size=16, optimizer="sgd", lr=0.5, progress=False),
        masks=masks,
    )
    mat2 = weight_to_matrix(model[1].weight.detach())
    assert bool((~g.nonzero(mat2))[zero_groups].all())  # still exactly zero
    assert float(g.gather(mat2)[zero_groups].abs().max()) == 0.0
    assert not torch.equal(mat2, mat)  # the kept weights did train


# ---------------------------------------------------------------- every round fine-tunes


def test_every_round_including_the_last_is_finetuned():
    """Docs (docs/methods/prunix.md, APA step 3): each of the R rounds is followed by
    ``ft_epochs`` of fine-tuning with the masks of that round; the last round too."""
    from xbarprune.compress.base import CompressContext
    from xbarprune.compress.methods.prunix import PrunixParams, run_prunix
    from xbarprune.hardware import DeviceSpec

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 3))
    lay = map_model(model, CrossbarSpec(4, 4))
    ds = torch.utils.data.TensorDataset(torch.randn(32, 64), torch.randint(0, 3, (32,)))
    calls: list[tuple[str, int, float]] = []

    class Ctx(CompressContext):
        def finetune(self, masks, epochs, regularizer=None, tag="ft", post_step=None):
            sp = (
                0.0
                if masks is None
                else float(
                    sum(int((~m).sum()) for m in masks.masks.values())
                    / sum(m.numel() for m in masks.masks.values())
                )
            )
            calls.append((tag, epochs, sp))

    ctx = Ctx(
        model=model, layout=lay, device_spec=DeviceSpec(), train_data=ds, val_data=ds,
        finetune_cfg=TrainConfig(epochs=1, progress=False), log=lambda s: None,
    )  # fmt: skip
    p = PrunixParams(regularizer="none", pruner="global", sparsity=0.5, rounds=3, ft_epochs=2,
                     pack=False)  # fmt: skip
    run_prunix(ctx, p)
    assert [c[:2] for c in calls] == [(f"prunix_round{r}", 2) for r in (1, 2, 3)]
    # the last fine-tune sees the final masks: cubic schedule ends at the target
    targets = [0.5 * (1 - (1 - r / 3) ** 3) for r in (1, 2, 3)]  # 0.352, 0.481, 0.5
    assert [c[2] for c in calls] == pytest.approx(targets, abs=0.02)
