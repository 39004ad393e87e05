"""Interoperability (issue #19): shrunk-architecture reload, ONNX and aihwkit export, aihwkit
config import, the Python API and its documented example."""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import xbarprune
from xbarprune.cli import main
from xbarprune.errors import CheckpointError, ExportError, SpecError, TranslationError
from xbarprune.experiment.config import load_config
from xbarprune.experiment.export import export_run, load_run
from xbarprune.experiment.pipeline import Run
from xbarprune.hardware.nonideal.io import IOConfig
from xbarprune.hardware.nonideal.model import (
    Aging,
    Drift,
    IRDrop,
    NonIdealityConfig,
    PCMStatistical,
    ProgrammingVariation,
    Quantization,
    ReadDisturb,
    StuckAtFaults,
    preset,
)
from xbarprune.hardware.spec import CrossbarSpec, DeviceSpec
from xbarprune.interop import aihwkit as ak
from xbarprune.interop.architecture import apply_architecture, describe_architecture
from xbarprune.io import load_checkpoint
from xbarprune.models import build_model

ROOT = Path(__file__).resolve().parents[1]

#: a fast ADMM run whose Unused Path Removal is physical (conv1 keeps 3 filters, conv2 6)
ADMM_UPR = {
    "name": "tiny-admm-upr",
    "seed": 0,
    "model": {"name": "lenet5"},
    "data": {"name": "mnist-embedded", "val_size": 100, "train_subset": 500, "test_subset": 200},
    "train": {"epochs": 1, "batch_size": 50, "lr": 0.003, "progress": False},
    "method": {
        "name": "admm",
        "params": {
            "kind": "filter",
            "alpha": {"features.conv1": 3, "features.conv2": 6},
            "iterations": 1,
            "retrain_epochs": 0,
            "quantize": False,
            "physical": True,
        },
    },
    "finetune": {"epochs": 1, "batch_size": 50, "lr": 0.001, "progress": False},
    "crossbar": {"rows": 32, "cols": 32},
    # the quick-start's non-idealities
    "nonideal": {"pcm": {}, "drift_compensation": True, "dac_bits": 8, "adc_bits": 8},
    "evaluate": {"times": ["1s", "1d"], "trials": 2, "seed": 1},
    "runtime": {"device": "cpu"},
}

#: a masked (not physically pruned) run: tile-column pruning as in the quick start
MASKED = {
    **ADMM_UPR,
    "name": "tiny-masked",
    "method": {
        "name": "group-magnitude",
        "params": {"sparsity": 0.7, "kind": "tile_column", "steps": 1, "epochs_per_step": 1},
    },
    "evaluate": {"times": ["1s"], "trials": 1, "seed": 1, "dense": False},
}


@pytest.fixture(scope="module")
def upr_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("admm_upr")
    Run(load_config(ADMM_UPR), out, log=lambda s: None).run()
    return out


@pytest.fixture(scope="module")
def masked_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("masked")
    Run(load_config(MASKED), out, log=lambda s: None).run()
    return out


# ----------------------------------------------------------------------------- architecture
def test_architecture_description_rebuilds_a_shrunk_model():
    from xbarprune.compress.parts.purification import remove_unused_paths

    model = build_model("lenet5", seed=0).eval()
    with torch.no_grad():
        model.features.conv1.weight[:4] = 0  # filters 0..3 dead -> conv2 reads 2 channels
        model.features.conv1.bias[:4] = -1.0  # ReLU of a negative constant: 0, foldable
    x = torch.rand(4, 1, 28, 28)
    small, _ = remove_unused_paths(model, x)
    arch = describe_architecture(small, build_model("lenet5", seed=0))
    assert arch is not None
    assert arch["modules"]["features.conv1"]["tensors"]["weight"] == [2, 1, 5, 5]
    assert arch["modules"]["features.conv2"]["attrs"]["in_channels"] == 2
    assert set(arch["modules"]) == {"features.conv1", "features.conv2"}
    json.dumps(arch)  # plain data
    rebuilt = apply_architecture(build_model("lenet5", seed=1), arch)
    rebuilt.load_state_dict(small.state_dict())
    rebuilt.eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(x), small(x))
        assert torch.allclose(rebuilt(x), model(x), atol=1e-5)
    # an unshrunk model needs no description; a foreign module is refused
    assert describe_architecture(build_model("lenet5"), build_model("lenet5")) is None
    bad = {
        "format": arch["format"],
        "modules": {"features.conv9": arch["modules"]["features.conv1"]},
    }
    with pytest.raises(CheckpointError, match="conv9"):
        apply_architecture(build_model("lenet5"), bad)


def test_admm_upr_run_stores_and_reloads_the_shrunk_network(upr_run):
    ck = load_checkpoint(upr_run / "stages" / "finetune.pt")
    arch = ck["architecture"]
    # alpha: conv1 keeps 3 filters, conv2 6 filters over (at most) conv1's 3 channels
    assert arch["modules"]["features.conv1"]["tensors"]["weight"] == [3, 1, 5, 5]
    assert arch["modules"]["features.conv2"]["tensors"]["weight"][:2] == [6, 3]
    assert arch["modules"]["classifier.fc1"]["attrs"]["in_features"] == 6 * 5 * 5
    run = xbarprune.load_run(upr_run)
    assert run.architecture == arch
    assert run.compressed.features.conv2.weight.shape == (6, 3, 5, 5)
    assert run.layout["features.conv2"].weight_shape == (6, 3, 5, 5)
    nparams = sum(p.numel() for p in run.compressed.parameters())
    assert nparams < sum(p.numel() for p in run.dense.parameters())
    # the reloaded model is the stored one
    for k, v in run.compressed.state_dict().items():
        assert torch.equal(v, ck["model"][k])
    # map/report numbers of the shrunk network
    rep = json.loads((upr_run / "report.json").read_text())
    assert rep["crossbars"]["compressed"] < rep["crossbars"]["dense"]
    layers = {r["name"]: r for r in rep["layers"]}
    # dense conv2: 6*25 = 150 rows -> 5 tiles of 32 rows, 16 filters in one 16-column tile;
    # shrunk: 3*25 = 75 rows -> at most 3 tiles
    assert layers["features.conv2"]["tiles_dense"] == 5
    assert layers["features.conv2"]["matrix_shape"] == [150, 16]
    assert 1 <= layers["features.conv2"]["tiles_compressed"] <= 3
    # `xbarprune simulate` and `report` work on it and reproduce the digital accuracy
    assert main(["simulate", str(upr_run), "--nonideal", "ideal", "--label", "ideal"]) == 0
    sim = json.loads((upr_run / "simulations" / "ideal.json").read_text())
    c = sim["compressed"]
    assert c["analog_ideal"] == pytest.approx(c["digital"])
    assert c["digital"] == pytest.approx(rep["accuracy"]["compressed_ideal"])
    assert main(["report", str(upr_run)]) == 0
    assert main(["map", str(upr_run)]) == 0


# ----------------------------------------------------------------------------- ONNX
def test_onnx_export_matches_pytorch_and_layout_places_every_weight(masked_run, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    out = tmp_path / "m.onnx"
    rep = export_run(masked_run, "onnx", out)
    assert out.is_file() and rep["compressed"]["bytes"] == out.stat().st_size
    onnx.checker.check_model(onnx.load(str(out)))
    run = load_run(masked_run)
    x = run.test_batch(100)  # another batch than the export's check (64)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    y_ort = torch.from_numpy(sess.run(None, {"input": x.numpy()})[0])
    with torch.no_grad():
        y = run.compressed.cpu()(x)
    assert (y_ort - y).abs().max() <= 1e-5
    # tile-column pruning to 70 % leaves whole filters dead: the export shrank them
    assert rep["shrunk"] and rep["compressed"]["parameters"] < rep["dense"]["parameters"]
    assert rep["compressed"]["bytes"] < rep["dense"]["bytes"]
    # the layout document: every non-zero weight of the exported model on exactly one tile
    doc = json.loads((tmp_path / "m.layout.json").read_text())
    assert doc["crossbar"]["rows"] == 32 and doc["crossbar"]["weights_per_row"] == 16
    sess_inits = {i.name: i for i in onnx.load(str(out)).graph.initializer}
    for lay in doc["layers"]:
        w = onnx.numpy_helper.to_array(sess_inits[lay["name"] + ".weight"])
        mat = torch.from_numpy(w.copy()).reshape(w.shape[0], -1).t()  # mapped matrix (R, C)
        assert list(mat.shape) == lay["matrix_shape"]
        seen = torch.zeros_like(mat, dtype=torch.int64)
        for t in lay["tiles"]:
            r = torch.tensor([i for i in t["rows"] if i >= 0])
            c = torch.tensor([j for j in t["cols"] if j >= 0])
            seen[r.view(-1, 1), c.view(1, -1)] += 1
            block = mat[r.view(-1, 1), c.view(1, -1)] != 0
            assert t["nonzero"] == int(block.sum()) and t["needed"] == bool(block.any())
        assert int(seen[mat != 0].min()) == 1 and int(seen.max()) <= 1
    assert doc["tiles_needed"] == rep["compressed"]["tiles"]


def test_onnx_export_of_a_physically_pruned_run(upr_run, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    assert (
        main(["export", str(upr_run), "--format", "onnx", "--out", str(tmp_path / "u.onnx")]) == 0
    )
    assert "onnxruntime vs PyTorch: max |diff|" in capsys.readouterr().out
    rep = json.loads((tmp_path / "u.export.json").read_text())
    assert rep["compressed"]["max_abs_diff"] <= 1e-5
    assert rep["compressed"]["parameters"] <= sum(
        p.numel() for p in load_run(upr_run).compressed.parameters()
    )


def test_bad_input_gets_one_clear_error(masked_run, tmp_path, capsys):
    with pytest.raises(ExportError, match="unknown export format 'tflite'; allowed: onnx"):
        export_run(masked_run, "tflite")
    assert main(["export", str(masked_run), "--format", "tflite"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "tflite" in err
    unfinished = tmp_path / "unfinished"
    shutil.copytree(masked_run, unfinished)
    (unfinished / "stages" / "finetune.pt").unlink()
    with pytest.raises(ExportError, match="stage 'finetune'"):
        export_run(unfinished, "onnx")
    assert main(["export", str(unfinished), "--format", "onnx"]) == 2
    assert main(["export", str(tmp_path), "--format", "onnx"]) == 2  # not a run at all
    assert not (unfinished / "export").exists()


# ----------------------------------------------------------------------------- aihwkit
def test_translation_lists_what_aihwkit_cannot_express():
    cfg = NonIdealityConfig(
        quantization=Quantization(levels=16),
        aging=Aging(cycles=1e6),
        variation=ProgrammingVariation(sigma=0.05),
        faults=StuckAtFaults(sa0=0.01),
        pcm=PCMStatistical(),
        ir_drop=IRDrop(r_row=5.0),
        dac_bits=8,
        adc_bits=6,
        drift_compensation=True,
        column_calibration=True,
        read_disturb=ReadDisturb(),
    )
    tr = ak.translate_to_aihwkit(cfg, CrossbarSpec(128, 128, 2), DeviceSpec(g_min=0, g_max=5e-5))
    assert {r["setting"] for r in tr.untranslated} == {
        "nonideal.quantization",
        "nonideal.aging",
        "nonideal.variation",  # next to pcm: one noise model per tile
        "nonideal.faults",
        "nonideal.ir_drop",
        "nonideal.column_calibration",
        "nonideal.read_disturb",
        "crossbar.cells_per_weight",
    }
    s = tr.spec
    assert s["forward"]["inp_res"] == pytest.approx(1 / 254)  # 8 bits: 2**8 - 2 steps
    assert s["forward"]["out_res"] == pytest.approx(1 / 62)
    assert s["noise_model"]["g_converter"]["g_max"] == pytest.approx(50.0)  # uS
    assert s["mapping"]["max_input_size"] == 128 and s["mapping"]["max_output_size"] == 32
    assert s["drift_compensation"] == {"type": "GlobalDriftCompensation"}
    ideal = ak.translate_to_aihwkit(NonIdealityConfig(), CrossbarSpec(), DeviceSpec())
    assert ideal.spec["forward"] == {"is_perfect": True} and not ideal.untranslated
    # without pcm: variation (relative) and drift as StateIndependentNoiseModel
    si = ak.translate_to_aihwkit(
        NonIdealityConfig(variation=ProgrammingVariation(0.1), drift=Drift(0.05, 0.01, 2.0)),
        CrossbarSpec(),
        DeviceSpec(g_min=0, g_max=1e-4),
    ).spec["noise_model"]
    assert si["type"] == "StateIndependentNoiseModel"
    assert si["prog_coeff"] == pytest.approx([0.0, 10.0, 0.0])  # 0.1 * 100 uS
    assert (si["drift_nu_mean"], si["drift_nu_std"], si["t_0"]) == (0.05, 0.01, 2.0)


def _io_of_bits(dac: int | None, adc: int | None, rows: int) -> IOConfig:
    """What dac_bits/adc_bits come back as: aihwkit's I/O with our converter grids, no
    noise, no bound management (out_bound: aihwkit's default 12 when there is an ADC)."""
    return IOConfig(
        inp_res=None if dac is None else 1 / (2**dac - 2),
        out_res=None if adc is None else 1 / (2**adc - 2),
        out_bound=12.0 if adc is not None else None,
        out_noise=0.0,
        bound_management="none",
        max_input_size=rows,
    )


@pytest.mark.parametrize(
    "cfg, expected",
    [
        (
            NonIdealityConfig(
                pcm=PCMStatistical(), drift_compensation=True, dac_bits=8, adc_bits=8
            ),
            NonIdealityConfig(
                pcm=PCMStatistical(), drift_compensation=True, io=_io_of_bits(8, 8, 64)
            ),
        ),
        (
            NonIdealityConfig(
                pcm=PCMStatistical(prog_coeff=(0.1, 1.0, -0.5), t0=5.0, drift_scale=0.5), adc_bits=6
            ),
            NonIdealityConfig(
                pcm=PCMStatistical(prog_coeff=(0.1, 1.0, -0.5), t0=5.0, drift_scale=0.5),
                io=_io_of_bits(None, 6, 64),
            ),
        ),
        (
            NonIdealityConfig(
                variation=ProgrammingVariation(0.03, "absolute"), drift=Drift(0.1, 0.02, 1.0)
            ),
            None,
        ),
        (NonIdealityConfig(), None),
        (preset("aihwkit-default"), None),
        (
            NonIdealityConfig(
                pcm=PCMStatistical(read_noise_scale=0.5),
                io=IOConfig(
                    inp_res=1 / 62,
                    inp_noise=0.01,
                    out_bound=10.0,
                    out_noise=0.02,
                    noise_management="none",
                    bound_management="none",
                    weight_scaling_omega=1.0,
                    max_input_size=256,
                ),
            ),
            None,
        ),
    ],
)
def test_export_then_import_gives_the_same_config(cfg, expected, tmp_path):
    expected = expected or cfg
    dev = DeviceSpec(g_min=0.0, g_max=2.5e-5)
    spec = ak.translate_to_aihwkit(cfg, CrossbarSpec(64, 64), dev).spec
    back = ak.nonideal_from_aihwkit(spec)
    if cfg.variation is not None:  # sigma round-trips through uS
        assert back.variation.sigma == pytest.approx(cfg.variation.sigma)
        back = replace(back, variation=cfg.variation)
    if cfg.pcm is not None:
        assert back.pcm.prog_coeff == pytest.approx(cfg.pcm.prog_coeff)
        back = replace(back, pcm=cfg.pcm)
    assert back == expected
    # the same through a YAML file and the config form nonideal: {from_aihwkit: FILE}
    (tmp_path / "rpu.yaml").write_text(yaml.safe_dump(spec))
    c = load_config({"nonideal": {"from_aihwkit": str(tmp_path / "rpu.yaml")}})
    assert c.nonideal_config().io == expected.io
    assert c.nonideal_config().drift_compensation == cfg.drift_compensation


def test_aihwkit_default_config_is_our_aihwkit_default_preset():
    pytest.importorskip("aihwkit")
    from aihwkit.simulator.configs import TorchInferenceRPUConfig

    assert ak.nonideal_from_aihwkit(TorchInferenceRPUConfig()) == preset("aihwkit-default")
    # and back: every forward, mapping and noise-model field equals aihwkit's default
    tr = ak.translate_to_aihwkit(
        preset("aihwkit-default"), CrossbarSpec(), DeviceSpec(g_min=0, g_max=2.5e-5)
    )
    assert tr.untranslated == [] and tr.approximate == []
    ours = ak.aihwkit_config_dict(ak.build_rpu_config(tr.spec))
    assert ours == ak.aihwkit_config_dict(TorchInferenceRPUConfig())


def test_import_rescales_programming_coefficients_and_reads_io():
    # aihwkit: sigma = poly(x) * g_max / ref; explicit coefficients without a reference are
    # relative to g_max (50 uS here), ours to 25 uS: c * 25 / 50
    d = {
        "noise_model": {
            "type": "PCMLikeNoiseModel",
            "prog_coeff": [1.0, 2.0, 3.0],
            "g_converter": {"g_max": 50.0, "g_min": 0.0},
        },
        "forward": {"inp_res": 1 / 126, "out_res": 510, "out_noise": 0.0, "out_bound": -1},
        "mapping": {"max_input_size": 128},
    }
    cfg = ak.nonideal_from_aihwkit(d)
    assert cfg.pcm.prog_coeff == pytest.approx((0.5, 1.0, 1.5))
    assert cfg.drift_compensation  # left out: aihwkit's default GlobalDriftCompensation
    io = cfg.io
    assert (io.inp_res, io.out_res, io.out_bound, io.out_noise) == (1 / 126, 510, None, 0.0)
    assert io.max_input_size == 128 and io.bound_management == "iterative"  # aihwkit default
    perfect = ak.nonideal_from_aihwkit({"forward": {"is_perfect": True}, "noise_model": None})
    assert perfect == NonIdealityConfig(drift_compensation=True)


def test_untranslatable_aihwkit_fields_get_one_error_naming_each(tmp_path):
    d = {
        "forward": {"w_noise": 0.01, "ir_drop": 1.0, "noise_management": "AbsMaxNPSum"},
        "mapping": {"weight_scaling_columnwise": True},
        "noise_model": {"type": "ReRamWan2022NoiseModel"},
        "drift_compensation": {"type": "PerColumnDriftCompensation"},
    }
    with pytest.raises(TranslationError) as e:
        ak.nonideal_from_aihwkit(d)
    msg = str(e.value)
    for name in (
        "forward.w_noise = 0.01",
        "forward.ir_drop = 1.0",
        "forward.noise_management = 'AbsMaxNPSum'",
        "mapping.weight_scaling_columnwise",
        "noise_model.type",
        "PerColumnDriftCompensation",
    ):
        assert name in msg
    names = ["forward.w_noise", "forward.ir_drop", "forward.noise_management"]
    names += ["mapping.weight_scaling_columnwise", "noise_model.type", "drift_compensation.type"]
    assert ak.nonideal_from_aihwkit(d, ignore=names) == NonIdealityConfig(io=IOConfig())
    with pytest.raises(TranslationError, match="malformed"):
        ak.nonideal_from_aihwkit({"forward": {"inp_res": "fine"}})
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(d))
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(yaml.safe_dump({"nonideal": {"from_aihwkit": "bad.yaml"}}))
    assert main(["run", str(cfg_path), "--out", str(tmp_path / "r")]) == 2


def _import_script(path: Path):
    spec = importlib.util.spec_from_file_location("exported_aihwkit", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_aihwkit_export_perfect_io_equals_ours(upr_run, tmp_path):
    pytest.importorskip("aihwkit")
    from xbarprune.analog.simulate import convert
    from xbarprune.hardware.nonideal.model import NonIdealityModel

    rep = export_run(upr_run, "aihwkit", tmp_path / "net.py")
    assert rep["check"]["max_abs_diff"] <= 1e-5
    assert rep["untranslated"] == []  # pcm, compensation, 8-bit converters: all expressible
    mod = _import_script(tmp_path / "net.py")
    spec = yaml.safe_load((tmp_path / "net.rpu.yaml").read_text())
    # the generated aihwkit code builds exactly the spec
    assert ak.aihwkit_config_dict(mod.rpu_config()) == ak.aihwkit_config_dict(
        ak.build_rpu_config(spec)
    )
    assert mod.rpu_config().forward.inp_res == pytest.approx(1 / 254)
    analog = mod.build(ak.build_rpu_config(ak.perfect_spec(spec)))
    assert type(analog).__name__ == "AnalogSequential"
    analog.program_analog_weights()
    analog.drift_analog_weights(86400.0)
    run = load_run(upr_run)
    ours = convert(
        run.compressed,
        run.layout,
        run.device_spec,
        NonIdealityModel.from_config(NonIdealityConfig()),
    )
    ours.program(torch.Generator().manual_seed(0), time_s=86400.0)
    x = run.test_batch(50)
    with torch.no_grad():
        diff = (analog(x) - ours(x)).abs().max()
    assert diff <= 1e-5
    # the live aihwkit config reads back: PCM and compensation as the run's, the 8-bit
    # converters as aihwkit I/O on the same grids
    back = ak.nonideal_from_aihwkit(mod.rpu_config())
    assert back.pcm == run.nonideal.pcm and back.drift_compensation
    assert back.io == _io_of_bits(8, 8, 32)


# ----------------------------------------------------------------------------- API and docs
def test_api_doc_example_runs(masked_run, tmp_path, capsys):
    text = (ROOT / "docs" / "api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "docs/api.md has no python example"
    code = blocks[0].replace('"runs/quickstart"', repr(str(masked_run)))
    exec(compile(code, "docs/api.md", "exec"), {})
    out = capsys.readouterr().out
    assert "group-magnitude" in out and "t = 86400 s" in out
    run = xbarprune.load_run(masked_run)
    res = xbarprune.simulate(
        run.compressed,
        run.layout,
        data=run.test_data,
        device_spec=run.device_spec,
        preset="ideal",
        trials=1,
    )
    sim = json.loads((masked_run / "stages" / "simulate.json").read_text())
    assert res[0]["mean"] == pytest.approx(sim["compressed"]["digital"])


def test_simulate_refuses_preset_and_config_together(masked_run):
    run = xbarprune.load_run(masked_run)
    with pytest.raises(ExportError, match="not both"):
        xbarprune.simulate(
            run.compressed,
            run.layout,
            data=run.test_data,
            preset="pcm",
            nonideal=NonIdealityConfig(),
        )


def test_aihwkit_analog_sequential_of_a_plain_model():
    pytest.importorskip("aihwkit")
    m = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 5))
    spec = ak.perfect_spec(
        ak.translate_to_aihwkit(
            NonIdealityConfig(pcm=PCMStatistical()),
            CrossbarSpec(8, 8),
            DeviceSpec(g_min=0, g_max=2.5e-5),
        ).spec
    )
    am = ak.to_analog_sequential(m, ak.build_rpu_config(spec))  # tiled 8 x 4: several tiles
    am.program_analog_weights()
    x = torch.randn(3, 2, 4, 4)
    with torch.no_grad():
        assert (am(x) - m(x)).abs().max() <= 1e-5
    assert isinstance(copy.deepcopy(m)[0], nn.Conv2d)  # the input model is left alone


def test_cf_physical_run_with_batchnorm_reloads_and_exports(tmp_path):
    pytest.importorskip("onnxruntime")
    cfg = copy.deepcopy(ADMM_UPR)
    cfg["name"] = "tiny-cf"
    cfg["model"] = {"name": "vgg-small", "width": 0.25, "kwargs": {"batch_norm": True}}
    cfg["method"] = {"name": "cf", "params": {"sparsity": 0.4, "reg_epochs": 1, "physical": True}}
    cfg["evaluate"] = {"times": ["1s"], "trials": 1, "seed": 1, "dense": False}
    rep = Run(load_config(cfg), tmp_path / "r", log=lambda s: None).run()
    arch = load_checkpoint(tmp_path / "r" / "stages" / "finetune.pt")["architecture"]
    types = {d["type"] for d in arch["modules"].values()}
    assert {"Conv2d", "BatchNorm2d"} <= types  # BatchNorm channels went with their filters
    for d in arch["modules"].values():
        if d["type"] == "BatchNorm2d":
            n = d["attrs"]["num_features"]
            assert d["tensors"]["weight"] == [n] and d["tensors"]["running_mean"] == [n]
    run = xbarprune.load_run(tmp_path / "r")
    from xbarprune.training.loop import evaluate_accuracy

    loader = torch.utils.data.DataLoader(run.test_data, batch_size=100)
    sim = json.loads((tmp_path / "r" / "stages" / "simulate.json").read_text())
    assert evaluate_accuracy(run.compressed, loader, "cpu") == sim["compressed"]["digital"]
    ex = export_run(tmp_path / "r", "onnx", tmp_path / "cf.onnx")
    assert ex["compressed"]["max_abs_diff"] <= 1e-5
    assert ex["compressed"]["parameters"] < ex["dense"]["parameters"]
    assert rep["crossbars"]["compressed"] < rep["crossbars"]["dense"]
    with pytest.raises(SpecError, match="physical = true is for 'cf'"):
        bad = copy.deepcopy(cfg)
        bad["method"]["name"] = "xcs"
        Run(load_config(bad), tmp_path / "x", log=lambda s: None).run()


@pytest.mark.parametrize("max_input_size", [0, 16])
def test_translated_io_makes_aihwkit_compute_what_our_periphery_computes(max_input_size):
    """DAC, abs-max noise management and ADC of IOConfig, translated to aihwkit's forward
    (noise-free device, no output noise): both outputs equal, and both differ from the
    digital one by the quantisation (so a wrong translation would show)."""
    pytest.importorskip("aihwkit")
    from xbarprune.analog.simulate import convert
    from xbarprune.hardware.nonideal.model import NonIdealityModel
    from xbarprune.mapping import map_model

    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(40, 20), nn.ReLU(), nn.Linear(20, 7)).eval()
    x = torch.randn(16, 40)
    io = IOConfig(out_noise=0.0, bound_management="none", max_input_size=max_input_size)
    quiet = PCMStatistical(prog_noise_scale=0, read_noise_scale=0, drift_scale=0)
    cfg = NonIdealityConfig(pcm=quiet, io=io)
    dev, xbar = DeviceSpec(g_min=0, g_max=2.5e-5), CrossbarSpec(64, 64)
    spec = ak.translate_to_aihwkit(cfg, xbar, dev).spec
    analog = ak.to_analog_sequential(m, ak.build_rpu_config(spec))
    analog.program_analog_weights()
    ours = convert(m, map_model(m, xbar), dev, NonIdealityModel.from_config(cfg))
    ours.program(torch.Generator().manual_seed(0), 1.0)
    with torch.no_grad():
        ya, yo, y = analog(x), ours(x), m(x)
    assert (ya - yo).abs().max() <= 1e-5
    assert (ya - y).abs().max() > 1e-3
