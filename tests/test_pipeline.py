"""End to end: a tiny config through every stage, report consistency, resume, CLI errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from xbarprune.cli import main
from xbarprune.errors import CheckpointError, ConfigError
from xbarprune.experiment.config import load_config
from xbarprune.experiment.pipeline import Run
from xbarprune.io import load_checkpoint, save_checkpoint

TINY = {
    "name": "tiny",
    "seed": 3,
    "model": {"name": "lenet5"},
    "data": {"name": "mnist-embedded", "val_size": 0.1, "train_subset": 800, "test_subset": 300},
    "train": {"epochs": 1, "batch_size": 32, "lr": 0.003, "progress": False},
    "method": {
        "name": "group-magnitude",
        "params": {"sparsity": 0.6, "kind": "tile_column", "steps": 2, "epochs_per_step": 1},
    },
    "finetune": {"epochs": 1, "batch_size": 32, "lr": 0.001, "progress": False},
    "crossbar": {"rows": 32, "cols": 32},
    "nonideal": "reram",
    "evaluate": {"times": ["1s", "1d"], "trials": 2, "seed": 1},
    "runtime": {"device": "cpu"},
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, dict, list[str]]:
    out = tmp_path_factory.mktemp("run")
    logs: list[str] = []
    rep = Run(load_config(TINY), out, log=logs.append).run()
    return out, rep, logs


def test_report_fields_hold_the_runs_numbers(finished):
    """Every report field holds this run's numbers: the config it was made with, the test-set
    size, per-trial accuracies that are counts over 300 images with their mean and sample std,
    and LeNet-5's dense tile counts on 32x32 differential crossbars by hand."""
    import statistics

    _, rep, _ = finished
    assert rep["model"] == "lenet5" and rep["dataset"]["name"] == "mnist-embedded"
    assert rep["dataset"]["test_size"] == 300
    assert rep["method"]["name"] == "group-magnitude"
    assert rep["method"]["params"] == TINY["method"]["params"]
    assert (rep["crossbar"]["rows"], rep["crossbar"]["cols"]) == (32, 32)
    assert rep["nonideal"]["preset"] == "reram"
    assert rep["seeds"] == {"experiment": 3, "evaluate": 1}
    acc = rep["accuracy"]
    for t in ("1s", "1d"):
        r = acc["compressed_nonideal"][t]
        assert r["trials"] == 2 and len(r["per_trial"]) == 2
        for a in r["per_trial"]:
            assert a * 300 == pytest.approx(round(a * 300), abs=1e-9)  # k correct of 300
        assert r["mean"] == pytest.approx(statistics.fmean(r["per_trial"]), abs=1e-12)
        assert r["std"] == pytest.approx(statistics.stdev(r["per_trial"]), abs=1e-12)
    # reram has no time-dependent effect: both times are the same chips, the same numbers
    assert (
        acc["compressed_nonideal"]["1s"]["per_trial"]
        == acc["compressed_nonideal"]["1d"]["per_trial"]
    )
    # 16 weights per tile row (differential on 32 columns): ceil(R/32) * ceil(C/16)
    want = {"features.conv1": 1 * 1, "features.conv2": 5 * 1, "classifier.fc1": 13 * 8,
            "classifier.fc2": 4 * 6, "classifier.fc3": 3 * 1}  # fmt: skip
    assert {r["name"]: r["tiles_dense"] for r in rep["layers"]} == want
    assert rep["crossbars"]["dense"] == sum(want.values()) == 137
    assert set(rep["sparsity"]) >= {"weight", "group", "crossbar_saving"}
    assert all(v > 0 for k, v in rep["timing"].items() if k != "report")
    assert rep["versions"]["torch"] == torch.__version__


def test_report_numbers_are_consistent(finished):
    out, rep, _ = finished
    acc = rep["accuracy"]
    # ideal analog simulation == digital model
    assert acc["compressed_analog_ideal"] == pytest.approx(acc["compressed_ideal"], abs=1e-9)
    assert acc["dense_analog_ideal"] == pytest.approx(acc["dense_ideal"], abs=1e-9)
    x = rep["crossbars"]
    assert x["compressed"] <= x["dense"]
    assert rep["sparsity"]["crossbar_saving"] == pytest.approx(1 - x["compressed"] / x["dense"])
    assert x["compressed"] == sum(r["tiles_compressed"] for r in rep["layers"])
    # sparsity matches the masks of the final checkpoint, and pruned weights are zero
    ck = load_checkpoint(out / "stages" / "finetune.pt")
    masks = ck["masks"]
    tot = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    zeros = sum(int((ck["model"][f"{n}.weight"] == 0).sum()) for n in masks)
    assert rep["sparsity"]["weight"] == pytest.approx(zeros / tot)
    assert zeros >= tot - kept
    for n, m in masks.items():
        assert bool((ck["model"][f"{n}.weight"][~m] == 0).all())
    assert rep["sparsity"]["weight"] >= 0.59
    assert rep["cost"]["compressed"]["energy_nj"] <= rep["cost"]["dense"]["energy_nj"]
    assert (out / "report.md").is_file()
    for p in ("accuracy_vs_time", "layer_sparsity", "occupancy"):
        assert (out / "plots" / f"{p}.png").stat().st_size > 1000


def test_rerun_skips_finished_stages(finished):
    out, rep, _ = finished
    logs: list[str] = []
    rep2 = Run(load_config(TINY), out, log=logs.append).run()
    assert sum("skipped" in s for s in logs) == 5
    assert rep2["accuracy"] == rep["accuracy"]


def test_simulate_cli_resimulates_without_training(finished, capsys):
    out, _, _ = finished
    assert main(["simulate", str(out), "--time", "1y", "--nonideal", "ideal", "--trials", "1"]) == 0
    files = list((out / "simulations").glob("*.json"))
    assert files
    sim = json.loads(files[0].read_text())
    assert sim["times_s"] == [31557600.0]
    assert sim["compressed"]["nonideal"][0]["mean"] == pytest.approx(sim["compressed"]["digital"])


def _copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _mtimes(d: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (d / "stages").iterdir()}


def test_changed_evaluate_reruns_only_simulate_and_report(finished, tmp_path):
    """Per-stage invalidation: `evaluate.trials` re-simulates, training is untouched (file
    modification times and the log); the log names the changed key."""
    out = _copy_run(finished[0], tmp_path / "r")
    before = _mtimes(out)
    logs: list[str] = []
    cfg = dict(TINY, evaluate={"times": ["1s", "1d"], "trials": 3, "seed": 1})
    rep = Run(load_config(cfg), out, log=logs.append).run()
    after = _mtimes(out)
    for f in ("train.pt", "compress.pt", "finetune.pt", "map.json"):
        assert after[f] == before[f], f
    assert after["simulate.json"] != before["simulate.json"]
    skipped = [s.split("]")[0][1:] for s in logs if "up to date, skipped" in s]
    assert skipped == ["train", "compress", "finetune", "map"]
    assert any("[simulate] config changed: evaluate.trials: 2 -> 3" in s for s in logs)
    assert rep["accuracy"]["compressed_nonideal"]["1d"]["trials"] == 3
    # the first two trials are those of the 2-trial run: trials are paired by seed
    old = finished[1]["accuracy"]["compressed_nonideal"]["1d"]["per_trial"]
    assert rep["accuracy"]["compressed_nonideal"]["1d"]["per_trial"][:2] == old


def test_finished_stage_without_record_reruns(finished, tmp_path):
    """A finished stage whose inputs record is gone (or unreadable) reruns with a reason; it
    used to crash describing the change against a missing record (found by mypy, #18)."""
    out = _copy_run(finished[0], tmp_path / "r")
    (out / "stages" / "simulate.inputs.json").unlink()
    logs: list[str] = []
    rep = Run(load_config(TINY), out, log=logs.append).run()
    assert any("[simulate] no record of the config that made it" in s for s in logs)
    assert rep["accuracy"] == finished[1]["accuracy"]


def test_runtime_and_key_order_recompute_nothing(finished, tmp_path):
    out = _copy_run(finished[0], tmp_path / "r")
    before = _mtimes(out)
    logs: list[str] = []
    params = dict(reversed(list(TINY["method"]["params"].items())))
    runtime = {"device": "cpu", "threads": torch.get_num_threads()}
    cfg = dict(TINY, runtime=runtime, method=dict(TINY["method"], params=params))
    Run(load_config(cfg), out, log=logs.append).run()
    after = _mtimes(out)
    assert {k: v for k, v in after.items() if k != "report.inputs.json"} == {
        k: v for k, v in before.items() if k != "report.inputs.json"
    }
    assert sum("up to date, skipped" in s for s in logs) == 5


def test_changed_training_recomputes_everything_after_it(finished, tmp_path):
    out = _copy_run(finished[0], tmp_path / "r")
    run = Run(load_config(dict(TINY, method={"name": "none"})), out, log=lambda s: None)
    logs: list[str] = []
    run.log = logs.append
    run.run()
    skipped = [s.split("]")[0][1:] for s in logs if "up to date, skipped" in s]
    assert skipped == ["train"]
    assert any("[compress] config changed: method.name: 'group-magnitude' -> 'none'" in s
               for s in logs)  # fmt: skip
    for stage in ("finetune", "map", "simulate"):  # downstream records hold method.name too
        assert any(s.startswith(f"[{stage}] config changed: method.name") for s in logs), stage


def test_bad_config_leaves_nothing_and_fixed_config_resumes(finished, tmp_path):
    out = tmp_path / "r"
    bad = dict(TINY, method={"name": "magnitude", "params": {"sparsity": 0.5,
               "exclude": ["conv9"]}})  # fmt: skip
    with pytest.raises(ConfigError, match=r"method.params.exclude names unknown layer\(s\): conv9"):
        Run(load_config(bad), out).run()
    assert not out.exists()
    # a run whose finished stages came from the old config takes the fixed config stage by
    # stage: the fix of a later stage keeps training
    out = _copy_run(finished[0], tmp_path / "r2")
    logs: list[str] = []
    Run(load_config(dict(TINY, nonideal="pcm")), out, log=logs.append).run()
    skipped = [s.split("]")[0][1:] for s in logs if "up to date, skipped" in s]
    assert skipped == ["train", "compress", "finetune", "map"]


def test_unknown_key_named(tmp_path):
    bad = dict(TINY, train={"epochs": 1, "lr_max": 3})
    with pytest.raises(ConfigError, match="lr_max"):
        load_config(bad)
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(dict(TINY, modle={"name": "x"})))
    assert main(["run", str(p), "--out", str(tmp_path / "r")]) == 2


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    p = tmp_path / "x.pt"
    save_checkpoint(p, {"model": {"w": torch.zeros(3)}})
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(p)


def test_checkpoint_from_another_model_is_refused(finished, tmp_path):
    out, _, _ = finished
    other = dict(TINY, model={"name": "mlp"})
    run = Run(load_config(other), tmp_path / "o")
    run.stages.mkdir(parents=True)
    (run.stages / "train.pt").write_bytes((out / "stages" / "train.pt").read_bytes())
    with pytest.raises(CheckpointError, match="does not match the model"):
        run._load_model("train")


def test_unwritable_output_is_clear(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(TINY))
    try:
        if (ro / "x").exists() or _can_write(ro):
            pytest.skip("running as a user that ignores permissions")
        assert main(["run", str(p), "--out", str(ro / "run")]) == 2
        assert "cannot create" in capsys.readouterr().err
    finally:
        ro.chmod(0o700)


def _can_write(d: Path) -> bool:
    try:
        (d / ".probe").write_text("x")
        (d / ".probe").unlink()
        return True
    except OSError:
        return False


def test_methods_cli_lists_registry(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ("magnitude", "group-magnitude", "prunix", "none"):
        assert name in out


def test_wct_run_simulates_with_its_fixed_mapping_scale(tmp_path):
    import copy

    from xbarprune.experiment.pipeline import mapping_clip

    cfg = copy.deepcopy(TINY)
    cfg["method"] = {"name": "wct", "params": {"kappa": 0.5, "rounds": 1, "epochs_per_round": 1}}
    cfg["finetune"]["epochs"] = 0  # keep |w| <= kappa w_max as WCT left it
    cfg["evaluate"] = {"times": ["1s"], "trials": 1, "seed": 1}
    run = Run(load_config(cfg), tmp_path, log=lambda s: None)
    run.run()
    sim = json.loads((tmp_path / "stages" / "simulate.json").read_text())
    dense, comp, dl, cl, ck = run.models()
    clip = mapping_clip(ck["info"], cl)
    assert clip is not None and sim["weight_clip"] == pytest.approx(clip)
    mods = dict(comp.named_modules())
    for n, w_max in clip.items():  # the clip is the pre-WCT scale: weights use half of it
        assert float(mods[n].weight.detach().abs().max()) <= 0.5 * w_max + 1e-6
    assert mapping_clip({}, cl) is None and mapping_clip({"w_max": {"nope": 1.0}}, cl) is None


def test_simulate_recalibrates_batchnorm_when_asked(tmp_path):
    """`evaluate.bn_calibration` re-calibrates the BatchNorm layers on every programmed chip
    (GLSVLSI 2023): recorded in simulate.json, and the non-ideal numbers change while the
    digital and analog-ideal ones do not."""
    import copy
    from dataclasses import replace

    cfg = copy.deepcopy(TINY)
    cfg["model"] = {"name": "vgg-small", "width": 0.25, "kwargs": {"batch_norm": True}}
    cfg["method"] = {"name": "none"}
    cfg["finetune"]["epochs"] = 0
    cfg["evaluate"] = {"times": ["1s"], "trials": 2, "seed": 1, "dense": False,
                       "bn_calibration": {"mode": "adapt", "samples": 200}}  # fmt: skip
    run = Run(load_config(cfg), tmp_path, log=lambda s: None)
    run.run()
    sim = json.loads((tmp_path / "stages" / "simulate.json").read_text())
    assert sim["bn_calibration"]["mode"] == "adapt" and sim["bn_calibration"]["samples"] == 200
    run.cfg = replace(run.cfg, evaluate=replace(run.cfg.evaluate, bn_calibration=None))
    plain = run.simulate()
    assert "bn_calibration" not in plain
    got, ref = sim["compressed"], plain["compressed"]
    assert got["digital"] == ref["digital"] and got["analog_ideal"] == ref["analog_ideal"]
    assert got["nonideal"][0]["per_trial"] != ref["nonideal"][0]["per_trial"]
    with pytest.raises(ConfigError, match="bn_calibration"):
        load_config({**cfg, "evaluate": {"bn_calibration": {"mode": "retrain"}}})
    # the CLI switches it off (or on) for a re-simulation
    assert main(["simulate", str(tmp_path), "--bn-calibration", "off", "--time", "1s"]) == 0
    off = json.loads((tmp_path / "simulations" / "config_1s_bn-off.json").read_text())
    assert "bn_calibration" not in off
    assert off["compressed"]["nonideal"][0]["per_trial"] == ref["nonideal"][0]["per_trial"]


def test_simulate_reproduces_the_reports_trials_and_refuses_bad_flags(finished, capsys):
    """`simulate --time 1d` gives the report's own 1-day trials (calibration does not depend on
    which times run); --trials < 1 and a --label with a path are refused."""
    out, rep, _ = finished
    assert main(["simulate", str(out), "--time", "1d", "--trials", "2", "--label", "d1"]) == 0
    sim = json.loads((out / "simulations" / "d1.json").read_text())
    want = rep["accuracy"]["compressed_nonideal"]["1d"]["per_trial"]
    assert sim["compressed"]["nonideal"][0]["per_trial"] == want
    capsys.readouterr()
    for bad, key in ((["--trials", "0"], "--trials"), (["--trials", "-3"], "--trials"),
                     (["--label", "/tmp/x"], "--label"), (["--label", ".."], "--label"),
                     (["--nonideal", "pcmm"], "pcmm")):  # fmt: skip
        assert main(["simulate", str(out), *bad]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and key in err[0], err
    assert not (Path("/tmp/x.json")).exists()


def test_an_interrupted_recompute_never_leaves_the_old_output_as_up_to_date(
    finished, tmp_path, monkeypatch
):
    """A finished run whose fine-tune config changed, killed after the new fine-tune's first
    epoch: the next run resumes that fine-tune (before, the old config's finetune.pt stood
    under the new config's record and was skipped as up to date) and ends with a fresh run's
    model; the epoch the killed run did is counted as resumed."""
    import xbarprune.training.loop as loop

    out = _copy_run(finished[0], tmp_path / "r")
    cfg = dict(TINY, finetune={**TINY["finetune"], "epochs": 2})
    save = loop.save_checkpoint

    class Killed(Exception):
        pass

    def save_then_die(path, obj):
        save(path, obj)
        if Path(path).name == "finetune_ckpt.pt" and obj["epoch"] == 0:
            raise Killed

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        Run(load_config(cfg), out, log=lambda s: None).run()
    assert not (out / "stages" / "finetune.pt").exists()  # the old output is gone
    first = load_checkpoint(out / "stages" / "finetune_ckpt.pt")["history"][0]["seconds"]
    monkeypatch.setattr(loop, "save_checkpoint", save)
    logs: list[str] = []
    rep = Run(load_config(cfg), out, log=logs.append).run()
    assert any(s.startswith("[finetune] not done yet") for s in logs), logs
    Run(load_config(cfg), tmp_path / "fresh", log=lambda s: None).run()
    a = load_checkpoint(out / "stages" / "finetune.pt")
    b = load_checkpoint(tmp_path / "fresh" / "stages" / "finetune.pt")
    for k in a["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0)
    assert len(a["history"]) == 2 and first > 0
    assert a["seconds_resumed"] == pytest.approx(first)
    assert rep["timing_resumed"] == {"finetune": pytest.approx(first)}
    assert b["seconds_resumed"] == 0.0


def test_a_changed_method_never_resumes_from_its_old_trainings(tmp_path):
    """A method's own trainings checkpoint in stages/compress_parts/ (resumable); when the
    config changes, the recomputed stage starts afresh: the rerun equals a fresh run of the new
    config (before, WCT's finished round checkpoints of kappa 0.5 were resumed under 0.3)."""
    cfg = {**TINY, "method": {"name": "wct", "params": {"kappa": 0.5, "rounds": 1}},
           "finetune": {**TINY["finetune"], "epochs": 0}}  # fmt: skip
    Run(load_config(cfg), tmp_path / "a", log=lambda s: None).run()
    assert list((tmp_path / "a" / "stages" / "compress_parts").glob("wct_round1.pt"))
    cfg["method"] = {"name": "wct", "params": {"kappa": 0.3, "rounds": 1}}
    Run(load_config(cfg), tmp_path / "a", log=lambda s: None).run()
    Run(load_config(cfg), tmp_path / "b", log=lambda s: None).run()
    a = load_checkpoint(tmp_path / "a" / "stages" / "compress.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "stages" / "compress.pt")["model"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
