"""Issue #8: C/F, XCS, XRS pruning, parasitics (NF, low-G share), column rearrangement, WCT and
the sparse_nonideal study (quick in the default suite, full marked slow)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from xbarprune.analog import convert, trial_generator
from xbarprune.analog.parasitics import (
    RRAM_DATE22,
    choose_rearrangement,
    column_nf,
    low_conductance_share,
    nonideality_factor,
    summarize,
)
from xbarprune.compress.base import CompressContext, get_method
from xbarprune.compress.methods.structured import (
    StructuredParams,
    cf_prune,
    crossbar_counts,
    remove_cf,
    structured_prune,
)
from xbarprune.compress.methods.wct import WCTParams, check_kappa, weight_constrained_training
from xbarprune.config import from_dict, load_yaml
from xbarprune.errors import ConfigError, SpecError
from xbarprune.hardware import CrossbarSpec
from xbarprune.hardware.nonideal import effective_conductance, nodal_solve
from xbarprune.hardware.nonideal.model import (
    IRDrop,
    NonIdealityConfig,
    NonIdealityModel,
    preset,
)
from xbarprune.mapping import map_model, pack_columns, packed_tile_count
from xbarprune.mapping.layout import layer_matrices
from xbarprune.mapping.permute import pack_layout
from xbarprune.mapping.rearrange import VARIANTS, rearranged
from xbarprune.training.loop import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "sparse_nonideal.yaml"
F64 = torch.float64
PARASITICS = (5.0, 10.0, 1000.0, 1000.0)  # r_row, r_col, r_source, r_sink (group defaults)


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(12)
        self.conv3 = nn.Conv2d(12, 16, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.fc(x.mean((2, 3)))


def small_net(seed=0):
    torch.manual_seed(seed)
    m = SmallNet()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for bn in (m.bn1, m.bn2, m.bn3):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.1, 0.3)
    return m.eval()


def data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(
        torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g)
    )


def ctx_for(model, layout, ds, epochs=1):
    return CompressContext(
        model=model,
        layout=layout,
        device_spec=RRAM_DATE22,
        train_data=ds,
        val_data=ds,
        finetune_cfg=TrainConfig(epochs=epochs, batch_size=16, lr=1e-3, progress=False),
        log=lambda s: None,
    )


# ----------------------------------------------------------------------------- parasitics
def test_one_row_two_columns_by_hand():
    g0, g1 = 2e-5, 1.2e-5
    r_row, r_col, r_s, r_k = PARASITICS
    y0, y1 = 1 / (1 / g0 + r_k), 1 / (1 / g1 + r_k)  # cell + sense branches
    y1r = 1 / (r_row + 1 / y1)  # branch 1 seen from a[0, 0]
    a0 = (1 / r_s) / (1 / r_s + y0 + y1r)  # V = 1
    want = [y0 * a0, y1r * a0]
    g = torch.tensor([[g0, g1]], dtype=F64)
    i = nodal_solve(g, torch.tensor([1.0], dtype=F64), *PARASITICS)
    assert i.tolist() == pytest.approx(want, rel=1e-12)
    for method in ("iterative", "nodal"):
        geff = effective_conductance(g, *PARASITICS, method=method)
        assert geff[0].tolist() == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("size", [6, 12])
def test_effective_model_equals_nodal_on_rram_tiles(size):
    gen = torch.Generator().manual_seed(size)
    d = RRAM_DATE22
    g = d.g_min + d.g_range * torch.rand(3, size, size, generator=gen, dtype=F64)
    exact = effective_conductance(g, *PARASITICS, method="nodal")
    fast = effective_conductance(g, *PARASITICS, method="iterative", tol=1e-12)
    assert ((fast - exact).abs() <= 1e-9 * exact.abs()).all()
    # the coarse-corrected solver converges in a handful of sweeps even at 1 kOhm ends
    from xbarprune.hardware.nonideal.ir_drop import _iterative

    _, sweeps = _iterative(g, *PARASITICS, 1e-12, 2000)
    assert sweeps <= 15


def test_nf_of_one_cell_by_hand_and_zero_wires_ideal():
    g = torch.tensor([[[2e-5]]], dtype=F64)
    used = torch.ones(1, 1, 1, dtype=torch.bool)
    v = torch.tensor([[[1.0], [0.5]]], dtype=F64)  # (T, N, rows)
    geff = effective_conductance(g, *PARASITICS)
    nf = column_nf(g, geff, v, used)
    r = PARASITICS[2] + PARASITICS[3]
    assert nf.item() == pytest.approx(r * 2e-5 / (1 + r * 2e-5), rel=1e-9)
    assert column_nf(g, g.clone(), v, used).item() == 0.0
    assert low_conductance_share(g, used, RRAM_DATE22, 0.25).item() == 0.0


def test_zero_wire_resistance_gives_the_ideal_output():
    m = small_net()
    lay = map_model(m, CrossbarSpec(8, 8))
    zero = NonIdealityModel.from_config(NonIdealityConfig(ir_drop=IRDrop()))
    assert zero.is_ideal
    x = data(8)[:][0]
    am = convert(m, lay, RRAM_DATE22, zero)
    am.program(trial_generator(0, 0))
    assert torch.allclose(am(x), m(x), atol=1e-5)
    per = nonideality_factor(m, lay, RRAM_DATE22, zero, x)
    assert summarize(per)["nf_mean"] == 0.0
    ir = NonIdealityModel.from_config(NonIdealityConfig(ir_drop=IRDrop(*PARASITICS)))
    s = summarize(nonideality_factor(m, lay, RRAM_DATE22, ir, x))
    assert 0.0 < s["nf_mean"] < 0.5 and s["low_g_fraction"] >= 0.5  # differential: G- idle


def test_negative_resistances_rejected_naming_the_field():
    for field in ("r_row", "r_col", "r_source", "r_sink"):
        with pytest.raises(SpecError, match=f"IRDrop.{field}"):
            IRDrop(**{field: -1.0})
    with pytest.raises(ConfigError, match="r_sink"):
        from_dict(NonIdealityConfig, {"ir_drop": {"r_sink": -5}}, "nonideal")
    p = preset("sparse_nonideal")
    assert (p.ir_drop.r_source, p.ir_drop.r_sink, p.ir_drop.r_row, p.ir_drop.r_col) == (
        1000.0,
        1000.0,
        5.0,
        10.0,
    )
    assert p.quantization.levels == 16 and p.adc_bits == 8 and p.variation.sigma == 0.1
    assert RRAM_DATE22.g_max == pytest.approx(
        1 / 50e3
    ) and RRAM_DATE22.on_off_ratio == pytest.approx(10)


# ----------------------------------------------------------------------------- mapping
def test_rearrangement_and_packing_leave_ideal_outputs_unchanged():
    m = small_net()
    with torch.no_grad():
        m.conv3.weight[:, 20:60] = 0  # a dead stretch: packing has something to drop
    x = data(8)[:][0]
    ideal = NonIdealityModel.from_config(None)
    base = map_model(m, CrossbarSpec(16, 16))
    mats = layer_matrices(m, base)
    want = m(x)
    layouts = [pack_layout(base, m, "tile_column"), pack_layout(base, m, "tile_row")]
    for v in VARIANTS:
        for lay in [base, *layouts]:
            new = lay
            for layer in lay:
                new = new.replace(rearranged(layer, mats[layer.name], v))
            assert new.n_tiles == lay.n_tiles  # a permutation frees or costs nothing
            am = convert(m, new, RRAM_DATE22, ideal)
            am.program(trial_generator(0, 0))
            assert torch.allclose(am(x), want, atol=1e-5), v
    with pytest.raises(SpecError, match="rearrangement"):
        rearranged(base["conv1"], mats["conv1"], "shuffle")


def test_choose_rearrangement_never_measures_worse():
    m = small_net()
    x = data(16)[:][0]
    ni = NonIdealityModel.from_config("ir_drop")
    lay = map_model(m, CrossbarSpec(8, 8))
    new, rep = choose_rearrangement(m, lay, RRAM_DATE22, ni, x)
    for name, r in rep.items():
        assert r[r["chosen"]] <= r["none"] + 1e-15, name
        assert set(r) == {*VARIANTS, "chosen"}
    before = summarize(nonideality_factor(m, lay, RRAM_DATE22, ni, x, max_vectors=128))
    after = summarize(nonideality_factor(m, new, RRAM_DATE22, ni, x, max_vectors=128))
    assert after["nf_mean"] <= before["nf_mean"] + 1e-12


def test_zeroing_k_tile_columns_frees_the_predicted_crossbars():
    lin = nn.Linear(64, 64, bias=False)  # mapped 64 x 64 on 32x32 tiles: 2 bands x 4 tiles
    torch.manual_seed(0)
    nn.init.uniform_(lin.weight, 0.1, 1.0)
    model = nn.Sequential(lin)
    lay = map_model(model, CrossbarSpec(32, 32))
    layer = lay["0"]
    assert layer.dense_tiles == 8
    for k in (0, 5, 16, 20, 33, 48, 64):
        mat = layer_matrices(model, lay)["0"].clone()
        mat[:32, :k] = 0  # k tile-columns of row band 0 (16 per tile)
        want = -(-(64 - k) // 16) + 4  # ceil(alive / weights_per_row) + band 1 untouched
        packed = pack_columns(layer, mat)
        assert packed.n_tiles == want == packed_tile_count(layer, mat, "column")
        assert packed.tiles_needed(mat) == want


# ----------------------------------------------------------------------------- pruning
def test_sparsity_outside_range_is_rejected_naming_the_field():
    for s in (-0.1, 1.0, 1.5):
        with pytest.raises(SpecError, match="method.params.sparsity"):
            StructuredParams(sparsity=s)
        with pytest.raises(ConfigError, match="sparsity"):
            from_dict(get_method("xcs").Params, {"sparsity": s}, "method.params")


@pytest.mark.parametrize("scheme", ["xcs", "xrs"])
def test_xcs_xrs_prune_pack_and_report_ccr(scheme):
    m = small_net()
    ds = data()
    lay = map_model(m, CrossbarSpec(8, 8))
    p = StructuredParams(sparsity=0.6, lam=1e-2, reg_epochs=1, ft_epochs=1)
    res = structured_prune(ctx_for(m, lay, ds), scheme, p)
    kind = {"xcs": "tile_column", "xrs": "tile_row"}[scheme]
    mats = layer_matrices(m, lay)
    for name in res.info["pruned_layers"]:  # whole groups are zero or kept
        g = lay[name].groups(kind)
        vals = g.gather(mats[name])
        zero = (vals == 0).all(1)
        assert zero.float().mean() >= 0.5
    assert res.info["weight_sparsity"] > 0.3
    assert res.layout.n_tiles == res.info["crossbars"] < lay.dense_tiles
    assert res.info["ccr"] == pytest.approx(lay.dense_tiles / res.info["crossbars"])
    x = ds[:8][0]
    am = convert(m, res.layout, RRAM_DATE22, NonIdealityModel.from_config(None))
    am.program(trial_generator(0, 0))
    m.eval()
    assert torch.allclose(am(x), m(x), atol=1e-5)


def test_cf_prunes_coupled_channels_and_removes_them_physically():
    m = small_net()
    lay = map_model(m, CrossbarSpec(8, 8))
    x = data(8)[:][0]
    masks, rep = cf_prune(m, lay, x, 0.5, "uniform")
    assert rep["weight_sparsity"] >= 0.5
    small, srep = remove_cf(m, x)
    assert srep["max_abs_diff"] < 1e-4 and not srep["kept_constant"]
    assert small.conv2.weight.shape[0] < 12 and small.conv3.weight.shape[1] < 12
    assert small.fc.weight.shape[0] == 4  # classifier outputs never pruned
    small_lay = map_model(small, CrossbarSpec(8, 8))
    compact = pack_layout(lay, m, "weight")
    # the compacted layout of the masked model is the smaller model's dense layout
    assert small_lay.dense_tiles == compact.n_tiles
    c = crossbar_counts(small, lay, small_lay)
    assert c["ccr"] == pytest.approx(lay.dense_tiles / small_lay.dense_tiles) and c["ccr"] > 1


# ----------------------------------------------------------------------------- WCT
def test_wct_keeps_weights_within_kappa_w_max():
    m = small_net()
    ds = data()
    lay = map_model(m, CrossbarSpec(8, 8))
    w0 = {n: float(dict(m.named_modules())[n].weight.detach().abs().max()) for n in lay.layers}
    ctx = ctx_for(m, lay, ds)
    info = weight_constrained_training(ctx, WCTParams(kappa=0.4, rounds=2, epochs_per_round=1))
    for n in lay.layers:
        w = dict(m.named_modules())[n].weight
        assert info["w_max"][n] == pytest.approx(w0[n])
        assert float(w.detach().abs().max()) <= 0.4 * w0[n] * (1 + 1e-6)
    # with the fixed mapping scale every conductance sits in the lowest kappa of the window
    ni = NonIdealityModel.from_config("ir_drop")
    x = ds[:16][0]
    free = summarize(nonideality_factor(small_net(), lay, RRAM_DATE22, ni, x, tau=0.4))
    held = summarize(
        nonideality_factor(m, lay, RRAM_DATE22, ni, x, weight_clip=info["w_max"], tau=0.41)
    )
    assert held["low_g_fraction"] == pytest.approx(1.0)
    assert held["low_g_fraction"] > free["low_g_fraction"]
    assert held["nf_mean"] < free["nf_mean"]


def test_kappa_outside_range_is_rejected_naming_the_field():
    for k in (0.0, -0.5, 1.01):
        with pytest.raises(SpecError, match="kappa"):
            check_kappa(k)
        with pytest.raises(ConfigError, match="kappa"):
            from_dict(get_method("wct").Params, {"kappa": k}, "method.params")
    WCTParams(kappa=1.0)


def test_methods_registered():
    for name in ("cf", "xcs", "xrs", "wct"):
        assert get_method(name).name == name


# ----------------------------------------------------------------------------- the study
FIELDS = (
    "model", "dataset", "crossbar", "scheme", "sparsity_weight", "ccr", "mitigation",
    "acc_ideal", "acc_nonideal_mean", "acc_nonideal_std", "trials", "nf_mean", "low_g_fraction",
)  # fmt: skip


def test_quick_study_runs_end_to_end(tmp_path):
    from xbarprune.experiment.sparse_nonideal_compare import sparse_nonideal_study

    data_cfg = copy.deepcopy(load_yaml(CONFIG))
    data_cfg.pop("kind")
    data_cfg["experiments"] = [
        {
            "model": {"name": "lenet5"},
            "data": {
                "name": "mnist-embedded",
                "val_size": 0,
                "train_subset": 200,
                "test_subset": 40,
            },
        }  # fmt: skip
    ]
    # XRS is left out here (its pruning and packing are tested above) to keep this < ~20 s
    data_cfg["quick"] = {
        "epochs": 1, "trials": 2, "crossbars": [16], "reg_epochs": 1, "ft_epochs": 1,
        "rounds": 1, "schemes": {"cf": [0.5], "xcs": [0.5]}, "ablation_trials": 1,
    }  # fmt: skip
    data_cfg["nf"] = {"calib": 8, "max_vectors": 32}
    data_cfg["rearrange"] = {"variants": ["within_desc", "across"]}
    data_cfg["runtime"] = {}
    summary = sparse_nonideal_study(data_cfg, out=str(tmp_path), quick=True, command="t", t0=0.0)
    rows = summary["rows"]
    mits = ("none", "rearrange", "wct", "both", "bn_adapt", "bn_finetune")
    assert {(r["scheme"], r["mitigation"]) for r in rows} == {
        (s, m) for s in ("dense", "cf", "xcs") for m in mits
    }
    for r in rows:  # LeNet-5 has no BatchNorm: its re-calibration arms are the plain chip
        if r["mitigation"].startswith("bn_"):
            plain = next(q for q in rows if (q["scheme"], q["mitigation"]) == (r["scheme"], "none"))
            assert r["acc_nonideal_trials"] == plain["acc_nonideal_trials"]
    for r in rows:
        for f in FIELDS:
            assert f in r, f
        assert r["trials"] == 2 and r["crossbar"] == "16x16"
        assert 0 < r["nf_mean"] < 1 and 0 <= r["low_g_fraction"] <= 1
        if r["scheme"] != "dense":
            assert r["sparsity_weight"] >= 0.45 and r["ccr"] > 1
    for r in rows:  # WCT: smaller NF than the same model without (fixed mapping scale)
        if r["mitigation"] == "wct":
            plain = next(q for q in rows if (q["scheme"], q["mitigation"]) == (r["scheme"], "none"))
            assert r["nf_mean"] < plain["nf_mean"]
    assert (tmp_path / "summary.md").is_file() and (tmp_path / "drop_vs_ccr.png").is_file()
    assert (tmp_path / "nf.png").is_file()
    # the effect ablation: every effect subset for dense and each scheme, and trial 0 of its
    # "all" / "all, uncalibrated" is trial 0 of the study's own rows (same seeds, same model)
    abl = summary["ablation"]
    effects = ["quantization", "quantization+variation", "quantization+parasitics",
               "quantization+adc", "all", "all, uncalibrated"]  # fmt: skip
    assert [a["effects"] for a in abl if a["scheme"] == "dense"] == effects
    assert {a["scheme"] for a in abl} == {"dense", "cf", "xcs"}
    for scheme in ("dense", "cf", "xcs"):
        row = next(r for r in rows if (r["scheme"], r["mitigation"]) == (scheme, "none"))
        got = {a["effects"]: a["acc_mean"] for a in abl if a["scheme"] == scheme}
        assert got["all"] == row["acc_nonideal_trials"][0]
        assert got["all, uncalibrated"] == row["acc_uncalibrated_trials"][0]
    again = sparse_nonideal_study(data_cfg, out=str(tmp_path), quick=True, command="t", t0=0.0)
    assert [r["acc_nonideal_mean"] for r in again["rows"]] == [r["acc_nonideal_mean"] for r in rows]
    # a changed setting redoes exactly the arms that depend on it (cache fingerprints)
    work = tmp_path / "work" / "lenet5_mnist-embedded"
    before = {f.name: f.read_text() for f in work.glob("arm_*.json")}
    data_cfg["bn_calibration"] = {"samples": 50}
    sparse_nonideal_study(data_cfg, out=str(tmp_path), quick=True, command="t", t0=0.0)
    after = {f.name: f.read_text() for f in work.glob("arm_*.json")}
    redone = {k for k in before if after[k] != before[k]}
    assert redone == {k for k in before if "_bn_" in k} and len(redone) == 6


def test_study_rejects_bad_keys_and_values(tmp_path):
    from xbarprune.experiment.sparse_nonideal_compare import sparse_nonideal_study

    with pytest.raises(ConfigError, match="unknown key"):
        sparse_nonideal_study({"bogus": 1}, out=str(tmp_path), quick=False, command="", t0=0)
    with pytest.raises(SpecError, match="sparsity"):
        sparse_nonideal_study(
            {"schemes": {"cf": [1.0]}}, out=str(tmp_path), quick=False, command="", t0=0
        )
    exp = {"model": {"name": "lenet5"}, "mitigations": ["x"]}
    with pytest.raises(ConfigError, match="experiments\\[\\].mitigations"):
        sparse_nonideal_study({"experiments": [exp]}, out=str(tmp_path), quick=False,
                              command="", t0=0)  # fmt: skip
    with pytest.raises(ConfigError, match="kappa"):
        sparse_nonideal_study({"wct": {"kappa": 2}}, out=str(tmp_path), quick=False,
                              command="", t0=0)  # fmt: skip


@pytest.mark.slow
def test_full_study(tmp_path):  # about an hour on 2 CPU cores; writes to tmp_path
    from xbarprune.experiment.sparse_nonideal_compare import sparse_nonideal_study

    data_cfg = copy.deepcopy(load_yaml(CONFIG))
    data_cfg.pop("kind")
    for e in data_cfg["experiments"]:
        e["data"]["root"] = str(ROOT / e["data"]["root"])
    summary = sparse_nonideal_study(data_cfg, out=str(tmp_path), quick=False, command="t", t0=0.0)
    _check_study_rows(summary["rows"], data_cfg)


#: VGG-11 (width 0.125, 1 input channel) conv layers as mapped matrices (in*9 x out)
_VGG11_CONVS = [(9, 8), (72, 16), (144, 32), (288, 32), (288, 64), (576, 64), (576, 64), (576, 64)]


def _check_study_rows(rows: list[dict], cfg: dict) -> None:
    """Laws every row of the full study obeys (the committed summary and a fresh run)."""
    import math
    import statistics

    schemes = cfg["schemes"]
    want = set()
    for e in cfg["experiments"]:
        for xb in cfg["crossbars"]:
            for mit in e.get("mitigations") or cfg["mitigations"]:
                want.add((e["model"]["name"], f"{xb}x{xb}", "dense", 0.0, mit))
                want |= {(e["model"]["name"], f"{xb}x{xb}", k, float(sp), mit)
                         for k, v in schemes.items() for sp in v}  # fmt: skip
    got = [(r["model"], r["crossbar"], r["scheme"], float(r["sparsity_target"]), r["mitigation"])
           for r in rows]  # fmt: skip
    assert len(got) == len(set(got)) and set(got) == want  # every arm once
    for r in rows:
        t = r["acc_nonideal_trials"]
        assert r["trials"] == len(t) == cfg["trials"] >= 10
        assert r["acc_nonideal_mean"] == pytest.approx(statistics.fmean(t), abs=1e-12)
        assert r["acc_nonideal_std"] == pytest.approx(statistics.stdev(t), abs=1e-12)
        assert r["ccr"] == pytest.approx(r["crossbars_dense"] / r["crossbars"], abs=1e-12)
        if r["mitigation"] == "none":  # the uncalibrated chips: only for the rows without
            u = r["acc_uncalibrated_trials"]
            assert len(u) == cfg.get("uncalibrated_trials", 2)  # the study's default
            assert r["acc_uncalibrated_mean"] == pytest.approx(statistics.fmean(u), abs=1e-12)
        q = r["nf_quantiles"]
        assert q == sorted(q) and q[0] <= r["nf_median"] <= q[-1] and q[0] <= r["nf_mean"] <= q[-1]
        assert (r["kappa"] is not None) == (r["mitigation"] in ("wct", "both"))
        assert (r["rearrangement"] is not None) == (r["mitigation"] in ("rearrange", "both"))
        if r["scheme"] == "dense":
            assert r["sparsity_weight"] == 0 and r["ccr"] == 1
        else:
            assert r["sparsity_weight"] >= r["sparsity_target"] - 0.01
        if r["model"] == "vgg11":  # dense conv tiles by hand, differential pairs
            x = int(r["crossbar"].split("x")[0])
            assert r["crossbars_dense"] == sum(
                math.ceil(a / x) * math.ceil(b / (x // 2)) for a, b in _VGG11_CONVS
            )


def test_committed_summary_obeys_the_study_laws():
    """The committed results/sparse_nonideal rows recount (the slow test checks a fresh run)."""
    import json

    f = ROOT / "results" / "sparse_nonideal" / "summary.json"
    if not f.is_file():
        pytest.skip("no committed summary")
    summary = json.loads(f.read_text())
    cfg = load_yaml(CONFIG)
    assert summary["config"]["schemes"] == cfg["schemes"] and summary["trials"] == cfg["trials"]
    _check_study_rows(summary["rows"], cfg)
    rows = {(r["model"], r["crossbar"]): r["crossbars_dense"] for r in summary["rows"]}
    assert rows[("vgg11", "32x32")] == 284 and rows[("vgg11", "64x64")] == 75  # by hand


def test_new_nonideality_fields_leave_cached_fingerprints_alone():
    """A field added to NonIdealityConfig after the cache fingerprints existed enters an arm's
    fingerprint only when set: adding it must not make every cached arm stale."""
    from xbarprune.config import to_dict
    from xbarprune.experiment.sparse_nonideal_compare import _ni_ident
    from xbarprune.hardware.nonideal.model import NonIdealityConfig, preset

    base = preset("sparse_nonideal")
    ident = _ni_ident(base)
    new = ("row_calibration", "io", "read_disturb")
    assert not set(new) & set(ident)
    assert ident == {k: v for k, v in to_dict(base).items() if k not in new}
    assert _ni_ident(preset("aihwkit-default"))["io"]["out_noise"] == 0.06  # set: it counts
    from xbarprune.experiment.sparse_nonideal_compare import _train_ident
    from xbarprune.training.hwa import HWAConfig
    from xbarprune.training.loop import TrainConfig

    assert "hwa" not in _train_ident(TrainConfig())  # HWA (added later) only when on
    assert _train_ident(TrainConfig(hwa=HWAConfig(weight_noise=0.1)))["hwa"]["weight_noise"] == 0.1
    on = NonIdealityConfig(column_calibration=True, row_calibration=True)
    assert _ni_ident(on)["row_calibration"] is True


def test_readme_claims_match_the_committed_summary():
    """README's sparse_nonideal row states counts; recount them from summary.json (issue #21:
    the row had said "sparse models lose more than dense, WCT helps them" for both models)."""
    import json
    import re

    summary = ROOT / "results" / "sparse_nonideal" / "summary.json"
    if not summary.is_file():
        pytest.skip("no committed summary")
    rows = json.loads(summary.read_text())["rows"]
    by = {(r["model"], r["crossbar"], r["scheme"], r["sparsity_target"], r["mitigation"]): r
          for r in rows}  # fmt: skip

    def drop(r: dict) -> float:
        return r["acc_ideal"] - r["acc_nonideal_mean"]

    def counts(model: str) -> tuple[int, int, int]:
        """(pruned arms, of which lose more than dense w/o mitigation, WCT lowers the drop)"""
        n = more = wct = 0
        for (mo, xb, sc, sp, mit), r in by.items():
            if mo != model or mit != "none" or sc == "dense":
                continue
            n += 1
            more += drop(r) > drop(by[(mo, xb, "dense", 0.0, "none")])
            wct += drop(by[(mo, xb, sc, sp, "wct")]) < drop(r)
        return n, more, wct

    readme = (ROOT / "README.md").read_text()
    line = next(s for s in readme.splitlines() if "examples/sparse_nonideal.yaml" in s)
    n_v, more_v, wct_v = counts("vgg11")
    n_r, more_r, wct_r = counts("resnet20")
    assert (n_v, n_r) == (12, 12)
    m = re.search(r"VGG-11 the sparse models lose more than dense, (\d+) of (\d+)", line)
    assert m and (int(m[1]), int(m[2])) == (more_v, n_v)
    assert more_r == 0 and "ResNet-20 the opposite, all 12 lose less" in line
    m = re.search(r"WCT lowers the accuracy drop in (\d+) of (\d+) sparse VGG-11 arms and in "
                  r"(\d+) of (\d+) sparse ResNet-20 arms", line)  # fmt: skip
    assert m and [int(v) for v in m.groups()] == [wct_v, n_v, wct_r, n_r]
