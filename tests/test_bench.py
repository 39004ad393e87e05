"""The benchmark engine (issue #21): statistics against their formulas, arms identical to
`xbarprune run`, the arm cache, validation-only selection, Ray = local, the quick bench."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import pytest
import torch
import yaml

from xbarprune.errors import ConfigError
from xbarprune.experiment.bench import (
    _merged_lines,
    _record_invocation,
    build_rows,
    hwa_effects,
    interpolate,
    load_bench,
    load_bench_file,
    matched,
    mean_ci95,
    merge_records,
    plan_arms,
    ranking,
    run_bench,
)
from xbarprune.experiment.config import load_config
from xbarprune.experiment.pipeline import Run

ROOT = Path(__file__).resolve().parents[1]

MINI = {
    "name": "mini",
    "seeds": [0],
    "presets": ["pcm", "reram"],
    "match_savings": [0.3],
    "rank_at": 0.3,
    "base": {
        "model": {"name": "lenet5"},
        "data": {
            "name": "mnist-embedded",
            "train_subset": 600,
            "test_subset": 200,
            "val_size": 0.1,
            "batch_size_eval": 200,
        },  # fmt: skip
        "train": {"epochs": 1, "batch_size": 50, "progress": False},
        "finetune": {"epochs": 1, "batch_size": 50, "progress": False},
        "crossbar": {"rows": 32, "cols": 32},
        "evaluate": {"times": ["1d"], "trials": 2, "seed": 0},
        "runtime": {"device": "cpu", "threads": 1},
    },
    "methods": [
        {
            "name": "group-magnitude",
            "knob": "sparsity",
            "budgets": [0.4, 0.7],
            "params": {
                "kind": "tile_column",
                "steps": 1,
                "epochs_per_step": 0,
                "exclude": ["features.conv1", "classifier.fc3"],
            },
        },  # fmt: skip
    ],
}


# ---------------------------------------------------------------- statistics by hand
def test_mean_ci95_against_the_t_formula():
    m, ci = mean_ci95([0.9, 0.8, 0.7])
    assert m == pytest.approx(0.8)
    # t_{0.975, 2} = 4.302653; s = 0.1; half-width = t s / sqrt(3)
    assert ci == pytest.approx(4.302653 * 0.1 / math.sqrt(3), rel=1e-6)
    assert mean_ci95([0.5]) == (0.5, None)


def test_interpolation_never_extrapolates():
    pts = [(0.2, 0.9), (0.6, 0.7), (0.6, 0.5), (1.0, 0.1)]
    assert interpolate(pts, 0.4) == pytest.approx(0.9 + (0.6 - 0.9) * 0.5)  # (0.6 averaged)
    assert interpolate(pts, 0.8) == pytest.approx(0.6 + (0.1 - 0.6) * 0.5)
    assert interpolate(pts, 0.2) == pytest.approx(0.9)
    assert interpolate(pts, 0.1) is None and interpolate(pts, 1.1) is None


def _rec(method, budget, seed, saving, ideal, trials):
    return {"method": method, "method_name": method, "budget": budget, "seed": seed,
            "acc_ideal": ideal, "crossbars_dense": 40,
            "crossbars_compressed": round(40 * (1 - saving)),
            "crossbar_saving": 1 - round(40 * (1 - saving)) / 40, "weight_sparsity": saving,
            "compute_s": 1.0, "nonideal": {"pcm": {"1y": trials}}}  # fmt: skip


def test_rows_matched_savings_and_paired_ranking_by_hand():
    recs = [
        _rec("a", 0.5, 0, 0.5, 0.9, [0.8, 0.6]),
        _rec("a", 0.5, 1, 0.5, 0.9, [0.9, 0.7]),
        _rec("a", 0.9, 0, 0.9, 0.8, [0.4, 0.4]),
        _rec("a", 0.9, 1, 0.9, 0.8, [0.5, 0.5]),
        _rec("b", 0.7, 0, 0.7, 0.9, [0.5, 0.5]),
        _rec("b", 0.7, 1, 0.7, 0.9, [0.5, 0.7]),
    ]
    rows = build_rows(recs, "m", "d")
    a5 = next(r for r in rows if r["method"] == "a" and r["budget"] == 0.5)
    assert a5["time_s"] == pytest.approx(365.25 * 86400)  # after programming, from "1y"
    assert a5["compute_s"] == 1.0 and a5["hwa"] is False
    assert a5["acc_nonideal_per_seed"] == pytest.approx([0.7, 0.8])  # trial means per seed
    m, ci = mean_ci95([0.7, 0.8])
    assert a5["acc_nonideal_mean"] == pytest.approx(m) and a5["acc_nonideal_ci95"] == ci
    for r in rows:  # savings recount from the crossbar counts
        for s, d, c in zip(r["crossbar_saving_per_seed"], r["crossbars_dense"],
                           r["crossbars_compressed"], strict=True):  # fmt: skip
            assert s == pytest.approx(1 - c / d)
    mt = matched(rows, [0.7])
    a7 = next(r for r in mt if r["method"] == "a")
    # seed 0: 0.7 at 0.5, 0.4 at 0.9 -> 0.55 at 0.7; seed 1: 0.8, 0.5 -> 0.65
    assert a7["acc_nonideal_per_seed"] == pytest.approx([0.55, 0.65])
    rk = ranking(mt, 0.7)
    assert [r["method"] for r in rk] == ["a", "b"]
    b = rk[1]
    # paired differences b - a per seed: 0.5 - 0.55, 0.6 - 0.65 -> -0.05 both
    assert b["diff_to_best_mean"] == pytest.approx(-0.05)
    assert b["diff_to_best_ci95"] == pytest.approx(0.0, abs=1e-12)


def test_bad_bench_configs_name_the_key():
    from xbarprune.errors import ConfigError

    with pytest.raises(ConfigError, match="methods"):
        load_bench({**MINI, "methods": []})
    with pytest.raises(ConfigError, match="budgets"):
        load_bench({**MINI, "methods": [{"name": "magnitude", "knob": "sparsity"}]})
    with pytest.raises(ConfigError, match="seeds"):
        load_bench({**MINI, "seeds": [0, 0]})
    bad = copy.deepcopy(MINI)
    bad["base"]["data"]["val_size"] = 0.0
    with pytest.raises(ConfigError, match="val_size"):
        run_bench(bad, out="/nonexistent/never-written", log=lambda s: None)
    bad = copy.deepcopy(MINI)
    bad["methods"][0]["params"]["exclude"] = ["conv9"]
    with pytest.raises(ConfigError, match="method.params.exclude"):
        run_bench(bad, out="/nonexistent/never-written", log=lambda s: None)


def test_hwa_effects_are_paired_by_method_budget_and_seed_by_hand():
    def rec(method, name, hwa, seed, ideal, trials):
        r = _rec(method, 0.8, seed, 0.7, ideal, trials)
        return {**r, "method_name": name, "hwa": hwa}

    recs = [
        rec("cf", "cf", False, 0, 0.98, [0.90, 0.92]),  # loss 0.07
        rec("cf", "cf", False, 1, 0.97, [0.93, 0.93]),  # loss 0.04
        rec("cf+hwa", "cf", True, 0, 0.97, [0.95, 0.95]),  # loss 0.02
        rec("cf+hwa", "cf", True, 1, 0.975, [0.955, 0.955]),  # loss 0.02
        rec("xrs", "xrs", False, 0, 0.9, [0.8, 0.8]),  # no HWA partner: no effect row
    ]
    (e,) = hwa_effects(recs)
    assert (e["method"], e["hwa_method"], e["budget"], e["seeds"]) == ("cf", "cf+hwa", 0.8, [0, 1])
    assert e["loss_plain_mean"] == pytest.approx(0.055)
    assert e["loss_hwa_mean"] == pytest.approx(0.02)
    assert e["loss_removed"] == pytest.approx(1 - 0.02 / 0.055)
    assert e["loss_removed_per_seed"] == pytest.approx([1 - 0.02 / 0.07, 1 - 0.02 / 0.04])
    assert e["ideal_delta_mean"] == pytest.approx((-0.01 + 0.005) / 2)
    assert e["nonideal_gain_mean"] == pytest.approx((0.04 + 0.025) / 2)
    assert e["time_s"] == pytest.approx(365.25 * 86400)


def test_merge_records_adds_only_arms_this_run_lacks_and_refuses_mismatches():
    def _krec(*a):
        r = _rec(*a)
        return {**r, "key": f"{r['method']}/{r['budget']}/s{r['seed']}"}

    own = [_krec("cf", 0.8, 2, 0.7, 0.98, [0.9, 0.9])]
    old = {
        "model": "lenet5",
        "dataset": "mnist",
        "header": {
            "command": "xbarprune bench x.yaml --set seeds=[0,1]",
            "wall_time_s": 5.0,
            "compute_s": 9.0,
        },  # fmt: skip
        "records": [_krec("cf", 0.8, s, 0.7, 0.97, [0.8, 0.8]) for s in (0, 1, 2)],
    }
    recs, prov = merge_records(own, "lenet5", "mnist", [("old.json", old)])
    assert sorted(r["seed"] for r in recs) == [0, 1, 2]
    (s2,) = [r for r in recs if r["seed"] == 2]
    assert s2["acc_ideal"] == 0.98  # this run's own arm wins over the merged one
    assert prov == [{"from": "old.json", "command": old["header"]["command"], "records": 2,
                     "wall_time_s": 5.0, "compute_s": 9.0, "compute_new_s": None,
                     "replaced_differing": ["cf/0.8/s2"], "merged": []}]  # fmt: skip
    same = [{**old["records"][2]}]  # an identical own arm replaces the merged one silently
    assert merge_records(same, "lenet5", "mnist", [("old.json", old)])[1][0][
        "replaced_differing"] == []  # fmt: skip
    rows = build_rows(recs, "lenet5", "mnist")
    assert {len(r["seeds"]) for r in rows} == {3}
    with pytest.raises(ConfigError, match="vgg-small on mnist"):
        merge_records(own, "lenet5", "mnist", [("v.json", {**old, "model": "vgg-small"})])
    with pytest.raises(ConfigError, match="in both"):
        merge_records([], "lenet5", "mnist", [("a.json", old), ("b.json", old)])


def test_merge_keeps_the_whole_chain_of_parts():
    """A bench built in three parts: the third summary's provenance names the second and,
    under it, the first, with their commands and times; summary.md prints both levels."""
    first = {
        "model": "m",
        "dataset": "d",
        "records": [],
        "header": {"command": "part 1", "wall_time_s": 10.0, "compute_s": 20.0},
    }
    _, prov2 = merge_records([], "m", "d", [("s.json", first)])
    second = {"model": "m", "dataset": "d", "records": [],
              "header": {"command": "part 2", "wall_time_s": 30.0, "compute_s": 40.0,
                         "compute_new_s": 25.0, "merged": prov2}}  # fmt: skip
    _, prov3 = merge_records([], "m", "d", [("s.json", second)])
    assert prov3[0]["command"] == "part 2" and prov3[0]["compute_s"] == 40.0
    (inner,) = prov3[0]["merged"]
    assert (inner["command"], inner["wall_time_s"], inner["merged"]) == ("part 1", 10.0, [])
    lines = _merged_lines(prov3)
    assert len(lines) == 2
    assert lines[0].startswith("Merged: 0 record(s) of `part 2`")
    assert "compute 40 s, 25 s of it new)" in lines[0]
    assert lines[1].startswith("  ↳ via that: Merged: 0 record(s) of `part 1`")
    assert "wall time 10.0 s, compute 20 s)" in lines[1]  # written before compute_new_s


def test_overrides_make_a_variant_axis_on_the_same_dense_model(tmp_path):
    """A method listed twice, once with `overrides` (here hardware-aware fine-tuning), gives
    two arms per budget that differ only by the override; a `none` with overrides is a variant
    of the dense model that reuses the plain dense arm's training."""
    from xbarprune.errors import ConfigError

    hwa = {"finetune": {"hwa": {"weight_noise": 0.02}}}
    cfg = copy.deepcopy(MINI)
    gm = cfg["methods"][0]
    cfg["methods"] = [
        {"name": "none", "label": "none+hwa", "overrides": hwa},
        gm,
        {**copy.deepcopy(gm), "label": "group-magnitude+hwa", "overrides": hwa},
    ]
    arms = plan_arms(load_bench(cfg), tmp_path)
    keys = [a.key for a in arms]
    assert keys[0] == "none/default/s0"  # the plain dense arm is inserted and comes first
    assert arms[0].dense_dir is None
    assert all(a.dense_dir == arms[0].dir for a in arms[1:])
    by = {a.key: a.config for a in arms}
    plain, var = by["group-magnitude/0.7/s0"], by["group-magnitude+hwa/0.7/s0"]
    assert "hwa" not in plain["finetune"]
    assert var["finetune"]["hwa"] == {"weight_noise": 0.02}
    strip = lambda c: {k: v for k, v in c.items() if k not in ("finetune", "name")}  # noqa: E731
    assert strip(plain) == strip(var)
    assert by["none+hwa/default/s0"]["finetune"]["hwa"] == {"weight_noise": 0.02}
    dirs = {a.key: a for a in arms}
    assert dirs["group-magnitude+hwa/0.7/s0"].partner_dir == dirs["group-magnitude/0.7/s0"].dir
    assert dirs["group-magnitude/0.7/s0"].partner_dir is None
    assert dirs["none+hwa/default/s0"].partner_dir is None
    # HWA does not enter compression: a variant's compress inputs equal its partner's, its
    # fine-tune inputs do not; the partner's compression is copied, a foreign one is not
    from xbarprune.experiment.bench import _reuse_stage

    runs = {k: Run(load_config(by[k]), tmp_path / k.replace("/", "_"), log=lambda s: None)
            for k in ("group-magnitude/0.7/s0", "group-magnitude+hwa/0.7/s0",
                      "group-magnitude/0.4/s0")}  # fmt: skip
    p_run, v_run, o_run = runs.values()
    assert p_run.stage_inputs("compress") == v_run.stage_inputs("compress")
    assert p_run.stage_inputs("finetune") != v_run.stage_inputs("finetune")
    for r in (p_run, o_run):
        r.stages.mkdir(parents=True)
        (r.stages / "compress.pt").write_bytes(b"ckpt")
        (r.stages / "compress.inputs.json").write_text(json.dumps(r.stage_inputs("compress")))
    variant = dirs["group-magnitude+hwa/0.7/s0"]
    variant = type(variant)(**{**variant.__dict__, "dir": str(v_run.dir)})
    _reuse_stage(variant, str(o_run.dir), "compress")  # other budget: inputs differ
    assert not (v_run.stages / "compress.pt").exists()
    _reuse_stage(variant, str(p_run.dir), "compress")
    assert (v_run.stages / "compress.pt").read_bytes() == b"ckpt"
    bad = copy.deepcopy(cfg)
    bad["methods"][0]["overrides"] = {"seed": 3}
    with pytest.raises(ConfigError, match=r"overrides\.seed"):
        load_bench(bad)


# ---------------------------------------------------------------- arms are pipeline runs
@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    summary = run_bench(copy.deepcopy(MINI), out=str(out), log=lambda s: None)
    return out, summary


def test_arm_equals_xbarprune_run(mini, tmp_path):
    """For the same seed, `xbarprune run` with the method and the engine's arm give identical
    masks and accuracies."""
    out, summary = mini
    arm = next(a for a in plan_arms(load_bench(MINI), out) if a.budget == 0.7)
    run = Run(load_config(arm.config), tmp_path / "run", log=lambda s: None)
    rep = run.run()
    arm_dir = Path(arm.dir)
    a = torch.load(arm_dir / "stages" / "compress.pt", weights_only=True)
    b = torch.load(tmp_path / "run" / "stages" / "compress.pt", weights_only=True)
    assert a["masks"].keys() == b["masks"].keys()
    for k in a["masks"]:
        assert torch.equal(a["masks"][k], b["masks"][k]), k
    arm_rep = json.loads((arm_dir / "report.json").read_text())
    assert arm_rep["accuracy"]["compressed_ideal"] == rep["accuracy"]["compressed_ideal"]
    assert (arm_rep["accuracy"]["compressed_nonideal"]["1d"]["per_trial"]
            == rep["accuracy"]["compressed_nonideal"]["1d"]["per_trial"])  # fmt: skip
    row = next(r for r in summary["rows"] if r["budget"] == 0.7 and r["nonideal"] == "pcm")
    assert row["acc_ideal_per_seed"] == [rep["accuracy"]["compressed_ideal"]]
    assert row["selection_split"] == "val"


def test_unchanged_arms_are_reused_and_a_changed_arm_is_rebuilt(mini, tmp_path):
    import shutil

    out = shutil.copytree(mini[0], tmp_path / "bench", copy_function=shutil.copy2)
    # a copy: the changed arms below must not replace the module fixture's models
    arms = plan_arms(load_bench(MINI), out)
    stamp = {a.key: (Path(a.dir) / "stages" / "compress.pt").stat().st_mtime_ns for a in arms}
    run_bench(copy.deepcopy(MINI), out=str(out), log=lambda s: None)
    again = {a.key: (Path(a.dir) / "stages" / "compress.pt").stat().st_mtime_ns for a in arms}
    assert again == stamp
    changed = copy.deepcopy(MINI)
    changed["methods"][0]["params"]["kind"] = "tile_row"
    res = run_bench(changed, out=str(out), log=lambda s: None)
    after = {a.key: (Path(a.dir) / "stages" / "compress.pt").stat().st_mtime_ns for a in arms}
    for a in arms:
        if a.method == "none":
            assert after[a.key] == stamp[a.key], a.key  # the dense arm is untouched
        else:
            assert after[a.key] != stamp[a.key], a.key
    # this invocation's compute: all of each rebuilt arm's, none of the cached dense arm's
    new = {r["key"]: r["compute_new_s"] for r in res["records"]}
    for r in res["records"]:
        assert new[r["key"]] == (0.0 if r["method"] == "none" else pytest.approx(r["compute_s"]))
    assert res["header"]["compute_new_s"] == pytest.approx(sum(new.values()))
    dense = next(r for r in res["records"] if r["method"] == "none")["compute_s"]
    assert 0 < res["header"]["compute_new_s"] == pytest.approx(res["header"]["compute_s"] - dense)
    # the dense model was not retrained for the changed arms
    for a in arms:
        t = (Path(a.dir) / "stages" / "train.pt").stat().st_mtime_ns
        assert t <= min(stamp.values())


def test_a_resumed_arm_counts_the_interrupted_epochs_as_not_run_here(mini, tmp_path, monkeypatch):
    """An arm whose fine-tune was interrupted after its first epoch and resumed by the next
    invocation: the stage's seconds include the epoch the interrupted invocation ran (its
    recorded seconds, ``timing_resumed``), and ``compute_new_s`` leaves it out, as it leaves
    out the compress stage the killed invocation redid; an arm the killed invocation never
    reached is all new."""
    import shutil

    import xbarprune.training.loop as loop

    out = shutil.copytree(mini[0], tmp_path / "bench", copy_function=shutil.copy2)
    cfg = copy.deepcopy(MINI)
    cfg["base"]["finetune"]["epochs"] = 2  # the method arms' fine-tunes rerun, compress cached

    class Killed(Exception):
        pass

    save = loop.save_checkpoint

    def save_then_die(path, obj):
        save(path, obj)
        if Path(path).name == "finetune_ckpt.pt" and obj["epoch"] == 0:
            raise Killed(str(path))  # right after the first epoch's checkpoint

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    with pytest.raises(Killed) as killed:
        run_bench(copy.deepcopy(cfg), out=str(out), log=lambda s: None)
    ckpt = Path(killed.value.args[0])
    first = torch.load(ckpt, weights_only=True)["history"][0]["seconds"]
    monkeypatch.setattr(loop, "save_checkpoint", save)
    res = run_bench(copy.deepcopy(cfg), out=str(out), log=lambda s: None)
    arms = {a.key: Path(a.dir) for a in plan_arms(load_bench(cfg), out) if a.method != "none"}
    recs = {r["key"]: r for r in res["records"] if r["key"] in arms}
    assert len(recs) == 2
    for key, arm_dir in arms.items():
        rep = json.loads((arm_dir / "report.json").read_text())
        ft = torch.load(arm_dir / "stages" / "finetune.pt", weights_only=True)
        t, rec = rep["timing"], recs[key]
        if arm_dir == ckpt.parents[1]:  # the interrupted arm
            assert first > 0 and rep["timing_resumed"] == {"finetune": pytest.approx(first)}
            assert ft["seconds_resumed"] == pytest.approx(first) and ft["seconds"] > first
            assert ft["history"][0]["seconds"] == pytest.approx(first)  # the epoch loaded
            # its compress (whose inputs hold the fine-tune config) was redone by the killed
            # invocation, its first fine-tune epoch too: neither was computed here
            assert rec["compute_new_s"] == pytest.approx(rec["compute_s"] - t["compress"] - first)
        else:  # never begun before: every second of it is this invocation's
            assert rep["timing_resumed"] == {} and ft["seconds_resumed"] == 0.0
            assert rec["compute_new_s"] == pytest.approx(rec["compute_s"])
    assert sum(arm_dir == ckpt.parents[1] for arm_dir in arms.values()) == 1


def test_random_test_labels_change_no_selection(tmp_path):
    """Replacing the test set's labels with random ones leaves the method's choices (masks,
    layout) unchanged: selection reads the validation split only."""
    from torch.utils.data import TensorDataset

    cfg = load_config(plan_arms(load_bench(MINI), tmp_path)[-1].config)
    runs = []
    for k, shuffle in enumerate((False, True)):
        run = Run(cfg, tmp_path / f"r{k}", log=lambda s: None)
        if shuffle:
            import dataclasses

            s = run.splits
            x = torch.stack([s.test[i][0] for i in range(len(s.test))])
            y = torch.randint(0, 10, (len(s.test),), generator=torch.Generator().manual_seed(1))
            run._splits = dataclasses.replace(s, test=TensorDataset(x, y))
        run.run()
        runs.append(torch.load(run.stages / "compress.pt", weights_only=True))
    for key in runs[0]["masks"]:
        assert torch.equal(runs[0]["masks"][key], runs[1]["masks"][key])
    assert runs[0]["layout"] == runs[1]["layout"]


def test_ray_executor_gives_the_same_rows(mini, tmp_path):
    pytest.importorskip("ray")
    import ray

    out, summary = mini
    one = copy.deepcopy(MINI)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        s2 = run_bench(one, out=str(tmp_path / "ray"), executor="ray", log=lambda s: None)
    finally:
        ray.shutdown()
    keys = ("method", "budget", "nonideal", "time", "acc_ideal_per_seed",
            "acc_nonideal_per_seed", "crossbar_saving_per_seed")  # fmt: skip
    assert [{k: r[k] for k in keys} for r in s2["rows"]] == [
        {k: r[k] for k in keys} for r in summary["rows"]
    ]


def test_quick_bench_of_every_method(tmp_path):
    """`xbarprune bench examples/bench_lenet5.yaml --quick`: every registered method at three
    budgets, both presets, both times; rows recount."""
    from xbarprune.cli import main
    from xbarprune.compress import list_methods

    out = tmp_path / "q"
    assert main(["bench", str(ROOT / "examples" / "bench_lenet5.yaml"), "--quick",
                 "--out", str(out)]) == 0  # fmt: skip
    s = json.loads((out / "summary.json").read_text())
    methods = {r["method"] for r in s["rows"]}
    assert methods == set(list_methods())
    cfg = load_bench(yaml.safe_load((ROOT / "examples" / "bench_lenet5.yaml").read_text()))
    n_arms = 1 + sum(len(m.budgets) for m in cfg.methods)
    assert len(s["rows"]) == n_arms * 2 * 2
    for r in s["rows"]:
        assert r["seeds"] == [0] and r["selection_split"] == "val"
        assert r["acc_nonideal_ci95"] is None  # one seed: no interval
        for sv, d, c in zip(r["crossbar_saving_per_seed"], r["crossbars_dense"],
                            r["crossbars_compressed"], strict=True):  # fmt: skip
            assert sv == pytest.approx(1 - c / d)
    for f in ("summary.md", "pareto.png", "report.html"):
        assert (out / f).stat().st_size > 500, f
    assert "single-seed" in (out / "summary.md").read_text()
    assert load_bench_file(ROOT / "examples" / "bench_lenet5.yaml")["kind"] == "bench"


# ---------------------------------------------------------------- a bench's own non-idealities
def test_bench_nonideal_definitions_are_validated_and_named_in_arms(tmp_path):
    base = {"methods": [{"name": "none"}], "seeds": [0]}
    cfg = load_bench({**base, "presets": ["paper", "pcm"],
                      "nonideal": {"paper": {"quantization": {"levels": 16}}}})  # fmt: skip
    (arm,) = plan_arms(cfg, tmp_path)
    assert arm.config["nonideal"] == {"quantization": {"levels": 16}}  # the first preset
    assert arm.definitions == {"paper": {"quantization": {"levels": 16}}, "pcm": "pcm"}
    assert load_config(arm.config).nonideal_config().quantization.levels == 16
    for bad, key in [
        ({"presets": ["pcm"], "nonideal": {"pcm": {}}}, r"nonideal\.pcm: shadows"),
        ({"presets": ["mine"]}, r"presets: 'mine' is neither"),
        ({"presets": ["p"], "nonideal": {"p": {"quantization": {"levels": 1}}}},
         r"nonideal\.p: quantization\.levels"),
        ({"presets": ["p"], "nonideal": {"p": {"bogus": 1}}}, r"nonideal\.p: unknown"),
        ({"presets": ["pcm"], "nonideal": {"q": {}}}, r"nonideal: \['q'\] defined but not"),
        ({"presets": ["pcm", "pcm"]}, r"presets: .* repeats"),
    ]:  # fmt: skip
        with pytest.raises(ConfigError, match=key):
            load_bench({**base, **bad})


def test_a_bench_defined_preset_equal_to_a_builtin_gives_its_numbers(mini):
    """The pcm preset written out as a bench-defined effect mapping under another name gives
    the same per-trial accuracies as the built-in name (two code paths, same draws); the
    cache keeps the definition, so a changed mapping is simulated again."""
    from xbarprune.config import to_dict
    from xbarprune.experiment.bench import _cached_simulation
    from xbarprune.hardware.nonideal.model import preset

    out, summary = mini
    arm = next(a for a in plan_arms(load_bench(MINI), out) if a.budget == 0.7)
    run = Run(load_config(arm.config), arm.dir, log=lambda s: None)
    rec = next(r for r in summary["records"] if r["key"] == arm.key)
    mine = to_dict(preset("pcm"))
    res, secs, hit = _cached_simulation(run, "mypcm", mine)
    assert hit is False
    got = {r["time_s"]: r["per_trial"] for r in res["compressed"]["nonideal"]}
    assert list(got.values()) == [rec["nonideal"]["pcm"]["1d"]]
    assert secs > 0
    again, secs2, hit = _cached_simulation(run, "mypcm", mine)
    assert again == res and secs2 == secs and hit is True  # read back from the cache
    mine["faults"] = {"sa0": 0.9, "sa1": 0.0}
    changed, _, hit = _cached_simulation(run, "mypcm", mine)
    assert hit is False
    cached = json.loads((Path(arm.dir) / "bench_sim" / "mypcm.json").read_text())
    assert cached["record"]["nonideal"]["faults"]["sa0"] == 0.9
    assert changed["compressed"]["nonideal"] != res["compressed"]["nonideal"]


def test_method_metrics_are_averaged_over_seeds_by_hand():
    from xbarprune.experiment.bench import _method_metrics, metrics_markdown

    rep = {"method": {"info": {"compression": {"compression_conv": 100, "weights": 7,
                                               "flag": True, "note": "x"}}}}  # fmt: skip
    assert _method_metrics(rep) == {"compression_conv": 100.0, "weights": 7.0}
    assert _method_metrics({"method": {"info": {}}}) == {}
    search = {"search": {"ratios": {"conv2": 0.7, "fc1": 0.75}, "stops": {"conv2": ["T_d"]}}}
    assert _method_metrics({"method": {"info": search}}) == {"ratio:conv2": 0.7, "ratio:fc1": 0.75}
    staged = {"dense": {"compression_conv": 1.0}, "admm+prm": {"compression_conv": 170.0}}
    assert _method_metrics({"method": {"info": {"compression": staged}}}) == {
        "compression_conv": 170.0  # the last stage: the final model
    }
    recs = []
    for seed, conv in enumerate([100.0, 110.0, 120.0]):
        r = _rec("admm", None, seed, 0.5, 0.98, [0.9])
        r["method_metrics"] = {"compression_conv": conv}
        recs.append(r)
    (row,) = build_rows(recs, "m", "d")
    m = row["method_metrics"]["compression_conv"]
    assert m["mean"] == pytest.approx(110.0)
    assert m["ci95"] == pytest.approx(4.302653 * 10.0 / math.sqrt(3), rel=1e-6)
    text = "\n".join(metrics_markdown([row]))
    assert "| admm | – | 110 ± 24.8 | 98.00 ± 0.00 | 3 |" in text
    recs[0].pop("method_metrics")  # a seed without the metric: not reported
    (row,) = build_rows(recs, "m", "d")
    assert "method_metrics" not in row and metrics_markdown([row]) == []


@pytest.mark.parametrize(
    "name",
    sorted(
        p.name
        for p in (ROOT / "examples").glob("*.yaml")
        if yaml.safe_load(p.read_text()).get("kind") == "bench"
    ),  # fmt: skip
)
@pytest.mark.parametrize("quick", [False, True])
def test_every_bench_example_plans_and_validates(name, quick, tmp_path):
    from xbarprune.experiment.bench import validate_arms

    cfg = load_bench(load_bench_file(ROOT / "examples" / name), quick=quick)
    arms = plan_arms(cfg, tmp_path)
    root = arms[0].config["data"].get("root")
    if quick or root is None or Path(root).exists():
        validate_arms(arms)  # loads every config and carves the splits from the data
    else:  # a clean clone has no ../shared/data: the configs still load, strictly
        from xbarprune.experiment.config import load_config

        for arm in arms:
            load_config(arm.config)
    n = sum(len(m.budgets) or 1 for m in cfg.methods)
    n += not any(m.name == "none" and not m.overrides for m in cfg.methods)  # dense arm added
    assert len(arms) == n * len(cfg.seeds)
    assert all(set(a.definitions) == set(cfg.presets) for a in arms)


def test_paired_comparisons_by_hand():
    from xbarprune.experiment.bench import paired_comparisons, pairs_markdown

    recs = []
    for seed, (ia, ib) in enumerate([(0.98, 0.97), (0.97, 0.97), (0.99, 0.97)]):
        recs.append(_rec("a", None, seed, 0.8, ia, [0.9, 0.8]))
        recs.append(_rec("b", None, seed, 0.8, ib, [0.8, 0.8 - 0.01 * seed]))
    recs.append(_rec("a", 0.5, 0, 0.5, 0.9, [0.9]))  # b has no 0.5: its budget-less arm
    c, c5 = paired_comparisons(recs, [("a", "b")])
    assert (c["a"], c["b"], c["budget"], c["seeds"]) == ("a", "b", None, [0, 1, 2])
    assert (c5["budget"], c5["budget_b"], c5["seeds"]) == (0.5, None, [0])
    # seed 0: ideal 0.9 - 0.97; non-ideal 0.9 - 0.8; loss (0.9 - 0.9) - (0.97 - 0.8)
    assert c5["ideal_diff_per_seed"] == pytest.approx([-0.07])
    assert c5["nonideal_diff_per_seed"] == pytest.approx([0.1])
    assert c5["loss_diff_per_seed"] == pytest.approx([-0.17])
    assert c5["ideal_diff_ci95"] is None  # one seed: no interval
    assert "| a | b | 0.5 / – | 50.0 / 80.0 |" in "\n".join(pairs_markdown([c5]))
    # b with budgets but none at 0.5 and no budget-less arm: nothing to pair a's 0.5 with
    recs_b = [r for r in recs if r["method"] == "a"] + [_rec("b", 0.9, 0, 0.9, 0.9, [0.9])]
    assert paired_comparisons(recs_b, [("a", "b")]) == []
    assert c["ideal_diff_per_seed"] == pytest.approx([0.01, 0.0, 0.02])
    assert c["ideal_diff_mean"] == pytest.approx(0.01)
    assert c["ideal_diff_ci95"] == pytest.approx(4.302653 * 0.01 / math.sqrt(3), rel=1e-6)
    # per-seed trial means: a 0.85; b 0.8, 0.795, 0.79
    assert c["nonideal_diff_per_seed"] == pytest.approx([0.05, 0.055, 0.06])
    assert c["nonideal_diff_mean"] == pytest.approx(0.055)
    # loss to the non-idealities, a's minus b's: (0.01 - 0.05, 0 - 0.055, 0.02 - 0.06)
    assert c["loss_diff_per_seed"] == pytest.approx([-0.04, -0.055, -0.04])
    assert c["loss_diff_mean"] == pytest.approx(-0.045)
    row = "| a | b | – | 80.0 / 80.0 | pcm | 1y | +1.00 ± 2.48 | +5.50 ± 1.24 | -4.50 ± 2.15 | 3 |"
    assert row in "\n".join(pairs_markdown([c]))
    assert paired_comparisons(recs, [("b", "a")])[0]["nonideal_diff_mean"] == pytest.approx(-0.055)
    assert len(paired_comparisons(recs, [("b", "a")])) == 1  # a has a budget-less arm: b's only
    base = {"methods": [{"name": "cf", "label": "x"}], "seeds": [0]}
    assert load_bench({**base, "pairs": [["x", "none"]]}).pairs == (("x", "none"),)
    for bad, key in [([["x", "y"]], r"pairs\[0\]: 'y' is not"), ([["x", "x"]], r"two different")]:
        with pytest.raises(ConfigError, match=key):
            load_bench({**base, "pairs": bad})


def test_every_arm_logs_its_pipeline_to_its_own_run_log(mini, tmp_path):
    """A bench's workers run quietly; each arm appends its pipeline's lines, time-stamped, to
    ``<arm>/run.log``: the stages it ran, then, on a second invocation, the stages it found up
    to date and nothing computed."""
    import re
    import shutil

    out = shutil.copytree(mini[0], tmp_path / "bench", copy_function=shutil.copy2)
    arms = plan_arms(load_bench(MINI), out)
    first = {a.key: (Path(a.dir) / "run.log").read_text().splitlines() for a in arms}
    stamp = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")
    for a in arms:
        lines = first[a.key]
        assert all(stamp.match(x) for x in lines), lines
        body = [x[20:] for x in lines]
        assert body[0].startswith(f"arm {a.key}: pid ")
        assert body[-1].startswith(f"arm {a.key} done: ")
        ran = "[train] " if a.method == "none" else "[compress] "
        assert any(x.startswith(ran) and not x.endswith("up to date, skipped") for x in body)
        if a.method != "none":  # the seed's dense model, reused from the dense arm
            assert "[train] up to date, skipped" in body
        else:  # and every epoch of the training, as the pipeline logs it
            epochs = MINI["base"]["train"]["epochs"]
            assert sum(x.startswith("  train epoch ") for x in body) == epochs
    run_bench(copy.deepcopy(MINI), out=str(out), log=lambda s: None)
    for a in arms:
        lines = (Path(a.dir) / "run.log").read_text().splitlines()
        assert lines[: len(first[a.key])] == first[a.key]  # appended, nothing lost
        again = [x[20:] for x in lines[len(first[a.key]) :]]
        assert again[0].startswith(f"arm {a.key}: pid ")
        assert "[compress] up to date, skipped" in again or a.method == "none"
        assert again[-1].startswith(f"arm {a.key} done: 0.0 s computed here")


def test_a_failing_arm_is_reported_and_the_others_go_on(mini, monkeypatch, tmp_path):
    """A method that fails on its own numbers (a diverging loss) is a result: its arm is listed
    under `failed`, no row includes it, and every other arm is measured as before."""
    from xbarprune.errors import CompressionError
    from xbarprune.experiment import pipeline

    out, summary = mini
    real = pipeline.Run.run

    def run(self):
        if "/0.7/" in str(self.dir):
            raise CompressionError("the training loss became inf in epoch 3")
        return real(self)

    monkeypatch.setattr(pipeline.Run, "run", run)
    again = run_bench(copy.deepcopy(MINI), out=str(out), log=lambda s: None)
    (f,) = again["failed"]
    assert f["key"] == "group-magnitude/0.7/s0" and "loss became inf" in f["failed"]
    arm = next(a for a in plan_arms(load_bench(MINI), out) if a.key == f["key"])
    last = (Path(arm.dir) / "run.log").read_text().splitlines()[-1]
    assert last.endswith(f"arm {f['key']} FAILED: {f['failed']}")
    assert {r["budget"] for r in again["rows"]} == {None, 0.4}
    keep = [r for r in summary["rows"] if r["budget"] != 0.7]
    assert [r["acc_nonideal_per_seed"] for r in again["rows"]] == [
        r["acc_nonideal_per_seed"] for r in keep
    ]
    md = (out / "summary.md").read_text()
    assert "## Failed arms" in md and "| group-magnitude/0.7/s0 | CompressionError:" in md
    # a merged summary keeps its failed arms (not silently dropped)
    recs, _ = merge_records([], "lenet5", "mnist-embedded", [("old", again)])
    assert any(r.get("failed") for r in recs)


def test_an_arm_alone_in_its_group_gets_the_pool_thread_count(monkeypatch, tmp_path):
    """With workers, an arm run alone in this process (a group of one, e.g. the one arm left
    on a resumed bench) gets the pool's thread count, so it computes exactly what the pool
    would: float reductions depend on the thread count."""
    from xbarprune.experiment import bench

    seen = []
    monkeypatch.setattr(bench, "run_arm", lambda a, threads=None: seen.append(threads) or {})
    arms = plan_arms(load_bench({"methods": [{"name": "none"}], "seeds": [0]}), tmp_path)
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        bench.execute(arms, workers=2, log=lambda s: None)
        assert seen == [2] and torch.get_num_threads() == 4  # restored afterwards
        bench.execute(arms, workers=1, log=lambda s: None)
        assert seen == [2, None]  # one worker: the process's own threads
    finally:
        torch.set_num_threads(before)


def test_report_html_lists_pairs_and_failed_arms(tmp_path):
    from xbarprune.experiment.bench import (
        TargetSpec,
        paired_comparisons,
        select_targets,
        write_bench_html,
    )

    recs = [_rec(m, None, s, 0.8, 0.9, [0.8]) for m in ("a", "b") for s in (0, 1)]
    rows = build_rows(recs, "m", "d")
    summary = {
        "header": {"command": "x", "wall_time_s": 1.0, "compute_s": 2.0},
        "model": "m", "dataset": "d", "rank_at": 0.7, "ranking": [], "rows": rows,
        "pairs": paired_comparisons(recs, [("a", "b")]),
        "failed": [{"key": "c/default/s0", "failed": "CompressionError: loss inf"}],
        "targets": select_targets(TARGET_RECS, [TargetSpec(label="within-2pp",
                                                           max_val_drop=0.02)]),
    }  # fmt: skip
    html = write_bench_html(summary, tmp_path / "report.html").read_text()
    assert "Paired comparisons" in html and "Δ non-ideal ± CI95" in html
    assert "Failed arms" in html and "c/default/s0" in html and "loss inf" in html
    assert "within-2pp" in html and "b@default (1), a@default (1)" in html


def test_a_second_bench_shares_the_first_ones_arms_through_work(mini, tmp_path):
    """`work:` points a bench at another bench's arm cache: its common arms are reused
    (nothing recomputed, identical rows), and a variant that only overrides the evaluation
    takes its partner's compression and fine-tuning as they are (copied, not retrained)."""
    import shutil

    first = shutil.copytree(mini[0], tmp_path / "first", copy_function=shutil.copy2)
    summary_a = mini[1]  # (the fixture's summary.json may be rewritten by other tests)
    cfg = copy.deepcopy(MINI)
    gm = cfg["methods"][0]
    cfg["methods"] = [gm, {**copy.deepcopy(gm), "label": "gm-t3", "budgets": [0.7],
                           "overrides": {"evaluate": {"trials": 3}}}]  # fmt: skip
    cfg["work"] = str(first / "work")
    arms = plan_arms(load_bench(cfg), tmp_path / "second")
    assert all(Path(a.dir).is_relative_to(first / "work") for a in arms)
    plain = next(a for a in arms if a.key == "group-magnitude/0.7/s0")
    stamps = {f.name: f.stat().st_mtime_ns for f in (Path(plain.dir) / "stages").glob("*.pt")}
    summary_b = run_bench(cfg, out=str(tmp_path / "second"), log=lambda s: None)
    assert {f.name: f.stat().st_mtime_ns
            for f in (Path(plain.dir) / "stages").glob("*.pt")} == stamps  # fmt: skip
    rows_a = [r for r in summary_a["rows"] if r["method"] != "gm-t3"]
    rows_b = [r for r in summary_b["rows"] if r["method"] != "gm-t3"]
    assert rows_b == rows_a
    var = next(a for a in arms if a.key == "gm-t3/0.7/s0")
    for stage in ("compress", "finetune"):
        mine, theirs = Path(var.dir) / "stages" / f"{stage}.pt", Path(plain.dir) / "stages"
        assert mine.read_bytes() == (theirs / f"{stage}.pt").read_bytes()
        # copy2 keeps the partner's time stamp: a retrained stage would carry a new one
        assert mine.stat().st_mtime_ns == (theirs / f"{stage}.pt").stat().st_mtime_ns
    rec = next(r for r in summary_b["records"] if r["key"] == "gm-t3/0.7/s0")
    assert len(rec["nonideal"]["pcm"]["1d"]) == 3
    base = next(r for r in summary_b["records"] if r["key"] == "group-magnitude/0.7/s0")
    assert rec["acc_ideal"] == base["acc_ideal"]
    # trials 0 and 1 are the same chips (seeds) as the plain arm's two trials
    assert rec["nonideal"]["pcm"]["1d"][:2] == base["nonideal"]["pcm"]["1d"]


def _two_experiments() -> dict:
    cfg = copy.deepcopy(MINI)
    cfg["presets"] = ["pcm"]
    cfg["methods"][0]["budgets"] = [0.7]
    cfg["experiments"] = [
        {"label": "x32", "base": {"crossbar": {"rows": 32, "cols": 32}}},
        {
            "label": "x16",
            "base": {"crossbar": {"rows": 16, "cols": 16}},
            "presets": ["reram"],
        },  # fmt: skip
    ]
    return cfg


def test_experiments_are_benches_of_their_own_validated_first(tmp_path):
    """`experiments` runs one bench per setting in <out>/<label>/: each equals the same bench
    run alone (rows bitwise), the index lists them, and a bad last experiment stops everything
    before the first arm trains."""
    cfg = _two_experiments()
    index = run_bench(copy.deepcopy(cfg), out=str(tmp_path / "multi"), log=lambda s: None)
    assert [e["label"] for e in index["experiments"]] == ["x32", "x16"]
    assert [e["presets"] for e in index["experiments"]] == [["pcm"], ["reram"]]
    alone = copy.deepcopy(cfg)
    del alone["experiments"]
    alone["base"]["crossbar"] = {"rows": 16, "cols": 16}
    alone["presets"] = ["reram"]
    single = run_bench(alone, out=str(tmp_path / "alone"), log=lambda s: None)
    multi = json.loads((tmp_path / "multi" / "x16" / "summary.json").read_text())

    def strip(rows):  # compute_s is a measured time
        return [{k: v for k, v in r.items() if k != "compute_s"} for r in rows]

    assert strip(multi["rows"]) == strip(single["rows"])
    x32 = json.loads((tmp_path / "multi" / "x32" / "summary.json").read_text())
    assert x32["rows"][0]["crossbars_dense"] != multi["rows"][0]["crossbars_dense"]
    md = (tmp_path / "multi" / "summary.md").read_text()
    assert "| x16 | lenet5 | mnist-embedded | reram | 1 | 2 | 0 |" in md
    assert (tmp_path / "multi" / "x32" / "report.html").is_file()
    # --experiment x16: that one alone runs (from its cached arms); the index keeps x32 from
    # the earlier invocation and says so
    again = run_bench(copy.deepcopy(cfg), out=str(tmp_path / "multi"), only=["x16"],
                      log=lambda s: None)  # fmt: skip
    assert [e["label"] for e in again["experiments"]] == ["x32", "x16"]
    assert again["header"]["earlier_invocations"] == ["x32"]
    assert again["experiments"][0]["arms"] == index["experiments"][0]["arms"]
    x16 = json.loads((tmp_path / "multi" / "x16" / "summary.json").read_text())
    assert strip(x16["rows"]) == strip(multi["rows"])
    assert "Not rerun by this invocation" in (tmp_path / "multi" / "summary.md").read_text()
    with pytest.raises(ConfigError, match="--experiment x64.*allowed: x32, x16"):
        run_bench(copy.deepcopy(cfg), out=str(tmp_path / "multi"), only=["x64"],
                  log=lambda s: None)  # fmt: skip
    bad = _two_experiments()
    bad["experiments"][1]["base"]["crossbar"] = {"rows": 0, "cols": 16}
    with pytest.raises(ConfigError, match="crossbar"):
        run_bench(bad, out=str(tmp_path / "bad"), log=lambda s: None)
    assert not (tmp_path / "bad" / "x32" / "work").exists()  # nothing ran
    for wrong, msg in [({"label": "a/b"}, "label"), ({"label": "a", "base": {"seed": 1}}, "seed")]:
        c = _two_experiments()
        c["experiments"] = [wrong]
        with pytest.raises(ConfigError, match=msg):
            load_bench(c)


# ---------------------------------------------------------------- targets (issue #21)
def _trec(method, seed, val, test, saving, comp=None, name=None):
    r = _rec(method, None, seed, saving, test, [test - 0.1, test - 0.2])
    r["method_name"] = name or ("none" if method == "none" else "m")
    r["acc_val"] = val
    if comp is not None:
        r["method_metrics"] = {"compression_conv": comp}
    return r


TARGET_RECS = [
    # seed 0: dense val 0.95; a (0.5 saving, val 0.94) and b (0.75, val 0.935) are within
    # 2 pp; c (0.9) drops 5 pp
    _trec("none", 0, 0.95, 0.96, 0.0),
    _trec("a", 0, 0.94, 0.90, 0.5, comp=120),
    _trec("b", 0, 0.935, 0.80, 0.75, comp=90),
    _trec("c", 0, 0.90, 0.99, 0.9, comp=300),
    # seed 1: dense val 0.97; only a is within 2 pp
    _trec("none", 1, 0.97, 0.96, 0.0),
    _trec("a", 1, 0.96, 0.92, 0.5, comp=110),
    _trec("b", 1, 0.94, 0.85, 0.75, comp=95),
    _trec("c", 1, 0.80, 0.99, 0.9, comp=300),
]


def test_targets_choose_on_validation_by_hand():
    from xbarprune.experiment.bench import TargetSpec, select_targets

    drop = TargetSpec(label="2pp", max_val_drop=0.02)
    comp = TargetSpec(label="100x", methods=("a", "b", "c"), metric="compression_conv",
                      min_metric=100, min_val_accuracy=0.93)  # fmt: skip
    t_drop, t_comp = select_targets(TARGET_RECS, [drop, comp])
    # most crossbar saving within 2 pp of the seed's dense validation accuracy: b, then a
    assert [(e["method"], e["seed"]) for e in t_drop["per_seed"]] == [("b", 0), ("a", 1)]
    assert [e["feasible_arms"] for e in t_drop["per_seed"]] == [2, 1]
    assert t_drop["choices"] == {"b@default": 1, "a@default": 1}
    assert t_drop["seeds_met"] == 2 and t_drop["selection_split"] == "val"
    m, ci = mean_ci95([0.80, 0.92])  # the chosen arms' test accuracies
    assert t_drop["acc_ideal"]["mean"] == pytest.approx(m)
    assert t_drop["acc_ideal"]["ci95"] == pytest.approx(ci)
    m, ci = mean_ci95([0.75, 0.5])
    assert t_drop["crossbar_saving"]["mean"] == pytest.approx(m)
    # the non-ideal test figure: each chosen arm's trial mean, then mean over seeds
    m, _ = mean_ci95([0.80 - 0.15, 0.92 - 0.15])
    assert t_drop["nonideal"]["pcm"]["1y"]["mean"] == pytest.approx(m)
    # >= 100x at >= 93 % validation: a in both seeds (c fails validation, b the metric)
    assert [e["method"] for e in t_comp["per_seed"]] == ["a", "a"]
    assert t_comp["metric"]["mean"] == pytest.approx(115.0)
    # against another arm than the dense one: within 0.6 pp of `a`'s validation accuracy
    [ref] = select_targets(TARGET_RECS, [TargetSpec(label="r", reference="a", methods=("b", "c"),
                                                    max_val_drop=0.006)])  # fmt: skip
    assert [e.get("method") for e in ref["per_seed"]] == ["b", None]
    assert [e["reference_acc_val"] for e in ref["per_seed"]] == [0.94, 0.96]
    # no seed meets an impossible target; a metric no arm reports is named
    none, missing = select_targets(
        TARGET_RECS,
        [TargetSpec(label="x", min_val_accuracy=0.99),
         TargetSpec(label="y", metric="nope", max_val_drop=0.5)],
    )  # fmt: skip
    assert none["seeds_met"] == 0 and "acc_ideal" not in none
    assert "nope" in missing["error"]


def test_targets_ignore_the_test_split():
    """Scrambling every test figure (ideal and non-ideal) changes no target's choice."""
    import random

    from xbarprune.experiment.bench import TargetSpec, select_targets

    specs = [TargetSpec(label="2pp", max_val_drop=0.02),
             TargetSpec(label="93", min_val_accuracy=0.93, metric="compression_conv")]  # fmt: skip
    before = select_targets(TARGET_RECS, specs)
    rng = random.Random(0)
    scrambled = copy.deepcopy(TARGET_RECS)
    for r in scrambled:
        r["acc_ideal"] = rng.random()
        r["nonideal"] = {"pcm": {"1y": [rng.random(), rng.random()]}}
    after = select_targets(scrambled, specs)
    for b, a in zip(before, after, strict=True):
        assert [(e.get("method"), e["met"]) for e in b["per_seed"]] == [
            (e.get("method"), e["met"]) for e in a["per_seed"]
        ]


def test_bad_targets_name_the_field():
    bad = [
        ({"label": "t"}, "min_val_accuracy or max_val_drop"),
        ({"label": "t", "min_val_accuracy": 1.5}, "targets[t].min_val_accuracy"),
        ({"label": "t", "max_val_drop": -0.1}, "targets[t].max_val_drop"),
        ({"label": "t", "max_val_drop": 0.01, "methods": ["zzz"]}, "targets[t].methods"),
        ({"label": "t", "max_val_drop": 0.01, "reference": "zzz"}, "targets[t].reference"),
    ]
    for t, msg in bad:
        with pytest.raises(ConfigError, match=re.escape(msg)):
            load_bench({**copy.deepcopy(MINI), "targets": [t]})
    with pytest.raises(ConfigError, match="repeat"):
        load_bench({**copy.deepcopy(MINI), "targets": [{"label": "t", "max_val_drop": 0.1}] * 2})


def test_records_carry_the_validation_accuracy_and_cost_savings(mini):
    """acc_val is the compressed model's accuracy on the arm's validation split; the area and
    energy savings are the pipeline's cost model figures."""
    from torch.utils.data import DataLoader

    from xbarprune.training.loop import evaluate_accuracy

    out, summary = mini
    rec = next(r for r in summary["records"] if r["budget"] == 0.7)
    arm = next(a for a in plan_arms(load_bench(MINI), out) if a.budget == 0.7)
    run = Run(load_config(arm.config), Path(arm.dir), log=lambda s: None)
    _d, comp, *_ = run.models()
    loader = DataLoader(run.splits.val, batch_size=200)
    assert rec["acc_val"] == evaluate_accuracy(comp, loader, "cpu")
    rep = json.loads((Path(arm.dir) / "report.json").read_text())
    assert rec["area_saving"] == rep["cost"]["saving"]["area_saving"]
    row = next(r for r in summary["rows"] if r["budget"] == 0.7)
    assert row["area_saving"]["mean"] == rec["area_saving"]


def test_the_header_says_how_many_arms_shared_the_cores(mini):
    """An arm's compute is comparable with another's only at the same load: the header keeps
    the workers and the CPU cores, each record the torch threads its arm ran with (the MINI
    runtime's 1, set by the pipeline in the arm's process)."""
    import os

    out, summary = mini
    h = summary["header"]
    assert (h["workers"], h["cpu_count"]) == (1, os.cpu_count())
    assert f"{os.cpu_count()} CPU cores, 1 worker(s)" in h["machine"]
    assert f"machine: {h['machine']}" in (out / "summary.md").read_text()
    assert [r["torch_threads"] for r in summary["records"]] == [1] * len(summary["records"])


def test_quick_methods_only_drops_the_other_methods_and_what_names_them():
    data = copy.deepcopy(MINI)
    data["methods"] = [*data["methods"], {"name": "magnitude", "label": "mag", "knob": "sparsity",
                                          "budgets": [0.5]}]  # fmt: skip
    data["pairs"] = [["group-magnitude", "mag"]]
    data["targets"] = [{"label": "t", "methods": ["mag"], "max_val_drop": 0.1},
                       {"label": "u", "max_val_drop": 0.1}]  # fmt: skip
    data["quick"] = {"methods_only": ["group-magnitude"]}
    cfg = load_bench(data, quick=True)
    assert [m.tag for m in cfg.methods] == ["group-magnitude"]
    assert cfg.pairs == () and [t.label for t in cfg.targets] == ["u"]
    assert [m.tag for m in load_bench(data).methods] == ["group-magnitude", "mag"]
    data["quick"] = {"methods_only": ["nope"]}
    with pytest.raises(ConfigError, match="methods_only"):
        load_bench(data, quick=True)


def test_every_invocation_on_an_arm_cache_is_counted(mini, tmp_path):
    """A resumed bench's header keeps the wall time of every invocation on its arm cache, the
    first one (which did the work) included, and summary.md says so."""
    import shutil

    first = mini[1]["header"]
    assert first["invocations"][0]["wall_time_s"] == first["wall_time_s"]
    # a fresh bench computed every second it records; a rerun on the full cache none of them
    assert first["compute_new_s"] == pytest.approx(first["compute_s"]) and first["compute_s"] > 0
    out = shutil.copytree(mini[0], tmp_path / "bench", copy_function=shutil.copy2)
    # (other tests may have rerun the fixture's bench: read what its cache holds now)
    before = json.loads((out / "work" / "bench_invocations.json").read_text())
    again = run_bench(copy.deepcopy(MINI), out=str(out), log=lambda s: None)["header"]
    assert again["compute_new_s"] == 0.0 and again["compute_s"] == pytest.approx(first["compute_s"])
    assert "computed by this invocation" in (out / "summary.md").read_text()
    assert again["invocations"][:-1] == before
    assert again["invocations"][-1]["wall_time_s"] == again["wall_time_s"]
    walls = [h["wall_time_s"] for h in again["invocations"]]
    assert again["wall_time_all_invocations_s"] == pytest.approx(sum(walls), abs=0.11)
    n = len(before) + 1
    assert f"All {n} invocations on this arm cache" in (out / "summary.md").read_text()
    # an invocation killed before its end is on record (it starts its entry before any arm
    # runs): the next one marks it interrupted, and the total is said to be a lower bound
    from xbarprune.experiment.bench import _start_invocation

    _start_invocation(out / "work", "xbarprune bench killed.yaml")
    third = run_bench(copy.deepcopy(MINI), out=str(out), log=lambda s: None)["header"]
    assert third["invocations"][:-2] == again["invocations"]
    killed = third["invocations"][-2]
    assert killed["command"] == "xbarprune bench killed.yaml"
    assert killed["interrupted"] is True and killed["wall_time_s"] is None
    assert "interrupted" not in third["invocations"][-1]
    assert third["interrupted_invocations"] == 1
    walls = [h["wall_time_s"] for h in third["invocations"] if h["wall_time_s"] is not None]
    assert len(walls) == n + 1
    assert third["wall_time_all_invocations_s"] == pytest.approx(sum(walls), abs=0.11)
    assert (f"All {n + 2} invocations on this arm cache: {third['wall_time_all_invocations_s']}"
            " s wall (1 of them interrupted") in (out / "summary.md").read_text()  # fmt: skip
    # one that was still running when another finished (marked interrupted by it) and then
    # finishes is an ordinary finished invocation again
    late = _record_invocation(out / "work", killed["command"], 5.0, killed["started"])
    assert late[-2]["wall_time_s"] == 5.0 and "interrupted" not in late[-2]
    assert late[:-2] == third["invocations"][:-2] and late[-1] == third["invocations"][-1]


def test_a_bench_in_method_parts_merges_to_the_whole_run(tmp_path):
    """`--method` runs one method's arms and the dense arm; a second part that merges the
    first one's summary gives the rows of the whole bench run at once (bitwise but the measured
    times), and an unknown label names the allowed ones before anything trains."""
    cfg = copy.deepcopy(MINI)
    params = {"steps": 1, "epochs_per_step": 0, "exclude": ["features.conv1", "classifier.fc3"]}
    cfg["methods"].append({"name": "magnitude", "knob": "sparsity", "budgets": [0.5],
                           "params": params})  # fmt: skip
    quiet = {"log": lambda s: None}
    whole = run_bench(copy.deepcopy(cfg), out=str(tmp_path / "whole"), **quiet)
    a = run_bench(copy.deepcopy(cfg), out=str(tmp_path / "a"), methods=["group-magnitude"],
                  **quiet)  # fmt: skip
    assert sorted({r["method"] for r in a["records"]}) == ["group-magnitude", "none"]
    b = run_bench(copy.deepcopy(cfg), out=str(tmp_path / "b"), methods=["magnitude"],
                  merge=[str(tmp_path / "a" / "summary.json")], **quiet)  # fmt: skip
    assert [m["records"] for m in b["header"]["merged"]] == [2]  # gm 0.4, 0.7; none is b's own
    assert b["header"]["merged"][0]["replaced_differing"] == []  # the same dense model

    def strip(rows):  # compute_s is a measured time; the parts list their rows in merge order
        key = lambda r: (r["method"], str(r["budget"]), r["nonideal"], r["time"])  # noqa: E731
        return sorted(({k: v for k, v in r.items() if k != "compute_s"} for r in rows), key=key)

    assert len(whole["rows"]) == 8  # (none + 2 gm + 1 magnitude) x 2 presets
    assert strip(b["rows"]) == strip(whole["rows"])
    assert b["ranking"] == whole["ranking"]
    with pytest.raises(ConfigError, match=r"--method xcs.*allowed: group-magnitude, magnitude"):
        run_bench(copy.deepcopy(cfg), out=str(tmp_path / "c"), methods=["xcs"], **quiet)
    assert not (tmp_path / "c").exists()
