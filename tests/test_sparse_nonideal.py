"""Issue #8: C/F, XCS, XRS pruning, parasitics (NF, low-G share), column rearrangement, WCT and
the sparse_nonideal study on the benchmark engine (issue #21: WCT after the fine-tune as
`method.then`, the `crossbar-nf` evaluation, per-experiment method lists; quick pieces in the
default suite, the full study marked slow), and the laws of the legacy study's committed rows."""

from __future__ import annotations

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
from xbarprune.training.masks import MaskSet

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "sparse_nonideal.yaml"
#: the single-seed results of the removed study code, with the config that made them
LEGACY = ROOT / "results" / "sparse_nonideal" / "study_legacy"
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
def _engine_cfg(methods: list[str]) -> dict:
    """examples/sparse_nonideal.yaml, --quick on LeNet-5 (convs on 16x16 crossbars, the
    classifier digital), 200 training images, one budget: seconds per arm."""
    cfg = load_yaml(CONFIG)
    cfg["workers"] = 1
    q = cfg["quick"]
    q["methods_only"] = methods
    q["base"]["model"] = {"name": "lenet5", "digital": ["classifier.*"]}
    q["base"]["data"] = {"name": "mnist-embedded", "root": None, "train_subset": 200,
                         "test_subset": 40, "val_size": 0.2}  # fmt: skip
    q["base"]["crossbar"] = {"rows": 16, "cols": 16}
    q["evaluations"] = [{**cfg["evaluations"][0], "params": {
        "variants": ["within_desc", "across"], "calib": 8, "max_vectors": 32}}]  # fmt: skip
    for m in cfg["methods"]:
        if m.get("budgets"):
            m["budgets"] = [0.5]
    return cfg


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    import json

    from xbarprune.experiment.bench import run_bench

    out = tmp_path_factory.mktemp("sparse")
    run_bench(_engine_cfg(["xcs", "xcs+wct", "none+wct"]), out=str(out), quick=True,
              log=lambda s: None)  # fmt: skip
    return out / "vgg11-32", json.loads((out / "vgg11-32" / "summary.json").read_text())


def _run(out: Path, label: str, budget: str):
    from xbarprune.experiment.pipeline import Run

    return Run.open(out / "work" / label / budget / "s0")


def test_wct_after_the_finetune_is_the_plain_arm_plus_wct(engine):
    """`then: [wct]`: the arm reuses its plain partner's compression; its model is exactly the
    partner's fine-tuned model put through WCT (same seed and data), every weight within
    kappa * w_max with w_max fixed from the pruned model, the pruned weights still zero; the
    engine simulates it with that w_max as the mapping clip."""
    from xbarprune.compress.methods.wct import WCTParams, weight_constrained_training
    from xbarprune.experiment.pipeline import mapping_clip
    from xbarprune.io import load_checkpoint

    out, summary = engine
    plain, wct = _run(out, "xcs", "0.5"), _run(out, "xcs+wct", "0.5")
    a = (plain.dir / "stages" / "compress.pt").read_bytes()
    assert a == (wct.dir / "stages" / "compress.pt").read_bytes()  # reused, not recomputed
    ck = load_checkpoint(wct.dir / "stages" / "finetune.pt")
    [rec] = ck["info"]["then"]
    assert rec["name"] == "wct" and rec["info"]["kappa"] == 0.5
    model, pck = plain._load_model("finetune")
    w0 = {n: float(dict(model.named_modules())[n].weight.detach().abs().max())
          for n in plain.map(model).layers}  # fmt: skip
    info = weight_constrained_training(
        wct._compress_context(model, wct.map(model), "check"),
        WCTParams(kappa=0.5, rounds=2, epochs_per_round=1),
        masks=MaskSet.from_model(model, list(wct.map(model).layers)),
    )
    for k, v in ck["model"].items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0)
    assert info["w_max"] == pytest.approx(w0) and ck["info"]["w_max"] == pytest.approx(w0)
    mods = dict(model.named_modules())
    for n, w in w0.items():
        assert float(mods[n].weight.abs().max()) <= 0.5 * w * (1 + 1e-6)
    for n, m in MaskSet(pck["masks"]).items():
        assert torch.all(ck["model"][f"{n}.weight"][~m.bool()] == 0)
    _d, _c, _dl, cl, ck2 = wct.models()
    assert mapping_clip(ck2["info"], cl) == pytest.approx(w0)
    rows = {(r["method"], r["budget"]): r for r in summary["records"]}
    assert rows[("xcs+wct", 0.5)]["crossbars_compressed"] == rows[("xcs", 0.5)][
        "crossbars_compressed"]  # the packing is kept  # fmt: skip


def test_crossbar_nf_equals_a_direct_computation(engine):
    """`crossbar-nf`: the NF of the placement as mapped and of the rearrangement chosen on
    training images, and the rearranged chips' accuracies, equal the functions called by hand
    (the same chips as the arm's own measurement)."""
    from xbarprune.analog.simulate import evaluate

    out, summary = engine
    rec = next(r for r in summary["records"] if (r["method"], r["budget"]) == ("xcs+wct", 0.5))
    run = _run(out, "xcs+wct", "0.5")
    _d, comp, _dl, cl, ck = run.models()
    from xbarprune.experiment.pipeline import mapping_clip

    clip = mapping_clip(ck["info"], cl)
    ni = run.cfg.nonideal_model()
    batch = run.calibration_images()[:8]
    comp.eval()
    per = nonideality_factor(comp, cl, run.cfg.device, ni, batch, weight_clip=clip, tau=0.25,
                             max_vectors=32, seed=run.cfg.evaluate.seed)  # fmt: skip
    pts = rec["evaluations"]["crossbar-nf"]
    mapped = next(p for p in pts if p["placement"] == "as mapped")
    want = summarize(per)
    for k in ("nf_mean", "nf_median", "low_g_fraction"):
        assert mapped["metrics"][k] == pytest.approx(want[k], abs=1e-12)
    lay, report = choose_rearrangement(comp, cl, run.cfg.device, ni, batch,
                                       variants=("within_desc", "across"), weight_clip=clip,
                                       max_vectors=32, seed=run.cfg.evaluate.seed)  # fmt: skip
    res = evaluate(comp, run.test_loader(), lay, run.cfg.device, ni, trials=2,
                   seed=run.cfg.evaluate.seed, times=(1.0,), weight_clip=clip,
                   calibration=run.calibration_images())  # fmt: skip
    rearr = next(p for p in pts if p["placement"] == "rearranged")
    assert rearr["per_trial"] == res[0].per_trial
    chosen = {f"layers:{v['chosen']}" for v in report.values()}
    assert {k for k in rearr["metrics"] if k.startswith("layers:")} == chosen
    # "as mapped" = the arm itself: its chips are the engine's own measurement (rows)
    assert len(rec["nonideal"]["sparse_nonideal"]["1s"]) == 2


def test_experiment_methods_keep_their_arms_and_drop_the_rest():
    from xbarprune.experiment.bench import load_bench

    cfg = load_bench(load_yaml(CONFIG))
    resnet = cfg.experiment(next(e for e in cfg.experiments if e.label == "resnet20-32"))
    tags = {m.tag for m in resnet.methods}
    assert "none" in tags and not any(t.endswith("bn_finetune") for t in tags)
    assert len(tags) == 12 and len(resnet.pairs) == 11
    vgg = cfg.experiment(cfg.experiments[0])
    assert len(vgg.methods) == 16 and len(vgg.pairs) == 15
    bad = load_yaml(CONFIG)
    bad["experiments"][2]["methods"] = ["cf", "nope"]
    with pytest.raises(ConfigError, match="nope"):
        load_bench(bad)


def test_bad_then_is_rejected_before_training(tmp_path):
    from xbarprune.experiment.bench import run_bench

    cfg = _engine_cfg(["xcs+wct"])
    for m in cfg["methods"]:
        if m.get("label") == "xcs+wct":
            m["then"] = [{"name": "wct", "params": {"kappa": 2.0}}]
    with pytest.raises(ConfigError, match="kappa"):
        run_bench(cfg, out=str(tmp_path), quick=True, log=lambda s: None)
    cfg = _engine_cfg(["xcs+wct"])
    for m in cfg["methods"]:
        if m.get("label") == "xcs+wct":
            m["then"] = [{"name": "wtc"}]
    with pytest.raises(ConfigError, match=r"method.then\[0\].name"):
        run_bench(cfg, out=str(tmp_path), quick=True, log=lambda s: None)
    assert not list(tmp_path.rglob("train.pt"))


@pytest.mark.slow
def test_full_study(tmp_path):  # about 4 h on 2 CPU cores; needs ../shared/data
    from xbarprune.experiment.compare import run_compare

    if not (ROOT.parent / "shared" / "data" / "fashion-mnist").exists():
        pytest.skip("needs ../shared/data")
    index = run_compare(CONFIG, out=str(tmp_path))
    assert [e["label"] for e in index["experiments"]] == [
        "vgg11-32",
        "vgg11-64",
        "resnet20-32",
        "resnet20-64",
    ]


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
    """The legacy study's committed rows recount (results/sparse_nonideal/study_legacy)."""
    import json

    summary = json.loads((LEGACY / "summary.json").read_text())
    cfg = load_yaml(LEGACY / "config.yaml")
    assert summary["config"]["schemes"] == cfg["schemes"] and summary["trials"] == cfg["trials"]
    _check_study_rows(summary["rows"], cfg)
    rows = {(r["model"], r["crossbar"]): r["crossbars_dense"] for r in summary["rows"]}
    assert rows[("vgg11", "32x32")] == 284 and rows[("vgg11", "64x64")] == 75  # by hand


def test_readme_claims_match_the_committed_summary():
    """README's sparse_nonideal row states counts; recount them from summary.json (issue #21:
    the row had said "sparse models lose more than dense, WCT helps them" for both models)."""
    import json
    import re

    rows = json.loads((LEGACY / "summary.json").read_text())["rows"]
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


def test_engine_report_html_in_chromium(engine):
    """The study's report.html (the engine's, offline): the arm table has one row per summary
    row and sorts numerically, the Pareto plot has a toggle per method instead of one legend
    of every line, and the console shows no error (issue #21 item 6)."""
    import sys
    import tempfile

    sys.path.insert(0, str(Path(__file__).parent))
    from _chromium import Chromium, find_chromium

    exe = find_chromium()
    if exe is None:
        pytest.skip("chromium is not installed")
    out, summary = engine
    with Chromium(exe) as browser:
        browser.open(out / "report.html")
        heads = browser.eval("Array.from(document.querySelectorAll('table.sortable'))"
                             ".map(t => Array.from(t.tHead.rows[0].cells)"
                             ".map(c => c.textContent))")  # fmt: skip
        t = next(i for i, h in enumerate(heads) if "crossbar saving %" in h and "budget" in h)
        n = browser.eval(f"document.querySelectorAll('table.sortable')[{t}].tBodies[0].rows"
                         ".length")  # fmt: skip
        assert n == len(summary["rows"])
        col = heads[t].index("non-ideal %")
        browser.eval(f"document.querySelectorAll('table.sortable')[{t}].tHead.rows[0]"
                     f".cells[{col}].click()")  # fmt: skip
        got = browser.eval(
            f"Array.from(document.querySelectorAll('table.sortable')[{t}]"
            f".tBodies[0].rows).map(r => parseFloat(r.cells[{col}].textContent))"
        )
        assert got == sorted(round(100 * r["acc_nonideal_mean"], 2) for r in summary["rows"])
        boxes = browser.eval("Array.from(document.querySelectorAll('section.plot input'))"
                             ".map(b => b.value)")  # fmt: skip
        assert sorted(boxes) == sorted({r["method"] for r in summary["rows"]})
        assert browser.errors() == []
        shot = Path(tempfile.gettempdir()) / "xbarprune_sparse_report.png"
        assert browser.screenshot(shot).stat().st_size > 10_000
