"""Sparse DNNs on non-ideal crossbars (issue #8; Bhattacharjee, Bhatnagar, Panda, DATE 2022).

``xbarprune compare examples/sparse_nonideal.yaml`` (study kind ``sparse_nonideal``). Per
(model, dataset): train the dense model once; per scheme (C/F once, XCS/XRS per crossbar
size, since their groups are tiles) train with the group lasso once, then per sparsity
threshold, fine-tune with masks fixed and pack; per pruned model run WCT once (masks kept,
w_max fixed from the pruned model). Every (model, crossbar, scheme, sparsity) is evaluated
with each mitigation: ``none``, ``rearrange`` (column rearrangement chosen by measured NF),
``wct``, ``both``, and the digital BatchNorm re-calibration of Bhattacharjee et al. (GLSVLSI
2023) on every programmed chip, ``bn_adapt`` and ``bn_finetune`` (section ``bn_calibration``,
:mod:`xbarprune.analog.batchnorm`): ideal accuracy, Monte Carlo non-ideal accuracy
(``trials``), NF and the low-conductance share. C/F models are evaluated physically pruned
(Torch-Pruning), XCS/XRS on their packed layouts. Rows go to ``<out>/summary.json``
(+ summary.md, plots); finished arms in ``<out>/work`` are skipped, so a killed run resumes.
Every cached arm and model carries a fingerprint of the settings it was made with; one made
with other settings is rebuilt (records from before the fingerprints are reused).
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from xbarprune.analog.batchnorm import BNCalibration, BNCalibrationConfig, BNMode
from xbarprune.analog.parasitics import (
    RRAM_DATE22,
    choose_rearrangement,
    nonideality_factor,
    summarize,
)
from xbarprune.analog.simulate import evaluate
from xbarprune.compress.base import CompressContext
from xbarprune.compress.methods.structured import (
    PACK_KIND,
    SCHEMES,
    StructuredParams,
    bn_keeper,
    cf_prune,
    crossbar_counts,
    example_batch,
    prunable_layers,
    regularizer,
    remove_cf,
)
from xbarprune.compress.methods.wct import WCTParams, weight_constrained_training
from xbarprune.compress.parts.pruning import magnitude_masks
from xbarprune.config import from_dict, to_dict
from xbarprune.data.heldout import heldout_val_size
from xbarprune.errors import ConfigError, check_range
from xbarprune.experiment.config import DataConfig, ModelConfig
from xbarprune.experiment.studies import header, study
from xbarprune.experiment.study_html import html_plots
from xbarprune.experiment.studykit import check_keys, config_fingerprint, study_splits
from xbarprune.hardware.nonideal.model import NonIdealityConfig, NonIdealityModel, preset
from xbarprune.hardware.spec import CrossbarSpec, DeviceSpec
from xbarprune.io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    ensure_dir,
    load_checkpoint,
    load_state_into,
    save_checkpoint,
)
from xbarprune.mapping.layout import CrossbarLayout, map_model
from xbarprune.mapping.permute import pack_layout
from xbarprune.mapping.rearrange import VARIANTS
from xbarprune.report.html import LinePlot, Plot, Series
from xbarprune.training.loop import TrainConfig, evaluate_accuracy, train
from xbarprune.training.masks import MaskSet

MITIGATIONS = ("none", "rearrange", "wct", "both", "bn_adapt", "bn_finetune")
_KEYS = {
    "name", "out", "seed", "experiments", "train", "finetune", "crossbars", "device",
    "nonideal", "trials", "eval_seed", "schemes", "params", "wct", "mitigations",
    "rearrange", "nf", "layers", "reference", "quick", "runtime", "data_root",
    "uncalibrated_trials", "ablation_trials", "bn_calibration",
}  # fmt: skip
#: the only published number we have for the DATE 2022 study (secondary source, unverified):
#: 64x64 crossbars, VGG on CIFAR-10, accuracy drop of the dense and the C/F-pruned network.
REFERENCE = {"crossbar": "64x64", "dense_drop_pp": 21.0, "cf_drop_pp": 39.0}


def _section(data: dict, key: str, cls, default=None):
    return from_dict(cls, data.get(key) or {}, key) if key in data else (default or cls())


@study("sparse_nonideal")
def sparse_nonideal_study(
    data: dict, *, out: str | None, quick: bool, command: str, t0: float
) -> dict:
    check_keys(data, _KEYS, "sparse_nonideal")
    if quick:
        data = _apply_quick(data, data.get("quick") or {})
    out_dir = ensure_dir(out or data.get("out", "results/sparse_nonideal"))
    work = ensure_dir(out_dir / "work")
    seed = int(data.get("seed", 0))
    train_cfg = _section(data, "train", TrainConfig)
    ft_cfg = _section(data, "finetune", TrainConfig, TrainConfig(epochs=1))
    dev = _section(data, "device", DeviceSpec, RRAM_DATE22)
    sizes = [int(s) for s in data.get("crossbars", [32, 64])]
    for s in sizes:
        check_range("crossbars[]", s, low=2)
    ni_raw = data.get("nonideal", "sparse_nonideal")
    ni_cfg = (
        preset(ni_raw)
        if isinstance(ni_raw, str)
        else from_dict(NonIdealityConfig, ni_raw, "nonideal")
    )
    ni = NonIdealityModel.from_config(ni_cfg)
    trials = int(data.get("trials", 10))
    check_range("trials", trials, low=1)
    unc_trials = int(data.get("uncalibrated_trials", 2))
    check_range("uncalibrated_trials", unc_trials, low=0)
    # the same hardware without column gain calibration, for the rows without mitigation
    ni_unc = (
        NonIdealityModel.from_config(replace(ni_cfg, column_calibration=False))
        if ni_cfg.column_calibration and unc_trials > 0
        else None
    )
    abl_trials = int(data.get("ablation_trials", 3))
    check_range("ablation_trials", abl_trials, low=0)
    ablations = _ablations(ni_cfg) if abl_trials > 0 else {}
    schemes: dict[str, list[float]] = data.get("schemes") or {
        "cf": [0.5, 0.75],
        "xcs": [0.5, 0.75],
        "xrs": [0.5, 0.75],
    }
    for k, v in schemes.items():
        if k not in SCHEMES:
            raise ConfigError(f"schemes.{k}: unknown scheme; allowed: {', '.join(SCHEMES)}")
        for sp in v:
            check_range(f"schemes.{k}[] (sparsity)", float(sp), low=0.0, high=1.0, high_open=True)
    params = from_dict(StructuredParams, data.get("params") or {}, "params")
    wct_p = from_dict(WCTParams, data.get("wct") or {}, "wct")
    mitigations = _mitigations(data.get("mitigations") or MITIGATIONS, "mitigations")
    exps = data.get("experiments") or [{"model": {"name": "lenet5"}, "data": {}}]
    for e in exps:  # an experiment may run a subset (e.g. to fit a CPU budget)
        check_keys(e, {"model", "data", "mitigations"}, "experiments[]")
        _mitigations(e.get("mitigations") or [], "experiments[].mitigations")
    bn_cfg = from_dict(BNCalibrationConfig, data.get("bn_calibration") or {}, "bn_calibration")
    rr = dict(data.get("rearrange") or {})
    variants = tuple(rr.get("variants", VARIANTS))
    nf_cfg = {"tau": 0.25, "calib": 32, "max_vectors": 128, **(data.get("nf") or {})}
    layers = data.get("layers", "conv")
    if layers not in ("conv", "all"):
        raise ConfigError(f"layers = {layers!r}; allowed: 'conv', 'all'")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    threads = (data.get("runtime") or {}).get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    rows: list[dict] = []
    cfg = {
        "crossbars": sizes, "device": to_dict(dev), "nonideal": ni_raw, "train": to_dict(train_cfg),
        "finetune": to_dict(ft_cfg), "params": to_dict(params), "wct": to_dict(wct_p),
        "schemes": schemes, "mitigations": mitigations, "rearrange_variants": list(variants),
        "nf": nf_cfg, "layers": layers, "seed": seed, "trials": trials,
        "column_calibration": ni_cfg.column_calibration,
        "uncalibrated_trials": unc_trials if ni_unc is not None else 0,
        "ablation_trials": abl_trials, "bn_calibration": to_dict(bn_cfg),
    }  # fmt: skip
    ablation: list[dict] = []

    def flush(plots: bool = True) -> None:
        summary = header(command, t0, {"quick": quick, "trials": trials})
        summary["config"] = cfg
        summary["reference"] = REFERENCE
        summary["rows"] = rows
        summary["ablation"] = ablation
        # nothing here is chosen on accuracy; WCT gets the validation split, never the test
        # split (issue #21); the rearrangement variant is chosen on training images
        summary["selection_split"] = "val"
        summary["selections"] = [
            {"what": "WCT / compress context val_data", "selection_split": "val"},
            {"what": "rearrangement variant (non-ideality factor)", "selection_split": "train"},
        ]
        atomic_write_json(out_dir / "summary.json", summary)
        atomic_write_text(out_dir / "summary.md", _markdown(summary))
        if plots:
            _plots(rows, out_dir)

    for e in exps:
        mc = from_dict(ModelConfig, e.get("model") or {}, "experiments[].model")
        dc = from_dict(DataConfig, e.get("data") or {}, "experiments[].data")
        if data.get("data_root"):
            dc = replace(dc, root=str(data["data_root"]))
        if quick:
            dc = replace(dc, **(data.get("_quick_data") or {}))
        run = _Experiment(
            mc, dc, seed, train_cfg, ft_cfg, dev, ni, trials, int(data.get("eval_seed", 0)),
            params, wct_p, variants, nf_cfg, layers, work / f"{mc.name}_{dc.name}", device,
            ni_unc, unc_trials, bn_cfg, {"model": to_dict(mc),
                                         "data": {**to_dict(dc),
                                                  "val_size": heldout_val_size(dc.val)},
                                         "nonideal": _ni_ident(ni_cfg)},
        )  # fmt: skip
        for size in sizes:
            for arm in run.arms(size, schemes, e.get("mitigations") or mitigations):
                rows.append(arm)
                flush(plots=False)
            if ablations:
                ablation.extend(run.ablation(size, schemes, ablations, abl_trials))
                flush(plots=False)
    flush()
    return json.loads((out_dir / "summary.json").read_text())


#: NonIdealityConfig fields added after the cache fingerprints existed: they enter an arm's
#: fingerprint only when set, so adding a field does not invalidate every cached arm.
_NI_FIELDS_SINCE_FINGERPRINTS = ("row_calibration", "io", "read_disturb")


def _ni_ident(cfg: NonIdealityConfig) -> dict:
    d = to_dict(cfg)
    for k in _NI_FIELDS_SINCE_FINGERPRINTS:
        if d.get(k) == getattr(NonIdealityConfig(), k):
            d.pop(k, None)
    return d


def _train_ident(cfg: TrainConfig) -> dict:
    """``to_dict(cfg)`` without ``hwa`` when it is off (added after the fingerprints)."""
    d = to_dict(cfg)
    if d.get("hwa") is None:
        d.pop("hwa", None)
    return d


def _mitigations(values, where: str) -> list[str]:
    out = [str(m) for m in values]
    for m in out:
        if m not in MITIGATIONS:
            raise ConfigError(f"{where}: {m!r}; allowed: {', '.join(MITIGATIONS)}")
    return out


def _random(cfg: NonIdealityConfig) -> bool:
    """Whether a trial draws anything at random (else every trial gives the same numbers)."""
    return any(
        getattr(cfg, k) is not None for k in ("variation", "faults", "read_noise", "pcm", "drift")
    )


def _ablations(cfg: NonIdealityConfig) -> dict[str, NonIdealityModel]:
    """Effect subsets of ``cfg`` (calibration as in ``cfg`` unless named): what each costs."""
    cal = cfg.column_calibration
    base = NonIdealityConfig(quantization=cfg.quantization, column_calibration=cal)
    subsets = {"quantization": base}
    if cfg.variation is not None:
        subsets["quantization+variation"] = replace(base, variation=cfg.variation)
    if cfg.ir_drop is not None:
        subsets["quantization+parasitics"] = replace(base, ir_drop=cfg.ir_drop)
    if cfg.adc_bits is not None:
        subsets["quantization+adc"] = replace(base, adc_bits=cfg.adc_bits)
    subsets["all"] = cfg
    if cal:
        subsets["all, uncalibrated"] = replace(cfg, column_calibration=False)
    return {k: NonIdealityModel.from_config(v) for k, v in subsets.items()}


def _apply_quick(data: dict, q: dict) -> dict:
    d = copy.deepcopy(data)
    d["_quick_data"] = {k: q[k] for k in ("train_subset", "test_subset") if k in q}
    for sec in ("train", "finetune"):
        if "epochs" in q:
            d.setdefault(sec, {})["epochs"] = q["epochs"]
    for k in (
        "trials",
        "crossbars",
        "schemes",
        "mitigations",
        "ablation_trials",
        "uncalibrated_trials",
    ):
        if k in q:
            d[k] = q[k]
    for k in ("reg_epochs", "ft_epochs"):
        if k in q:
            d.setdefault("params", {})[k] = q[k]
    for k in ("rounds", "epochs_per_round"):
        if k in q:
            d.setdefault("wct", {})[k] = q[k]
    if "experiments" in q:
        d["experiments"] = d["experiments"][: int(q["experiments"])]
    d.pop("quick", None)
    return d


class _Experiment:
    """One (model, dataset): cached models under ``work`` and the evaluation of every arm."""

    def __init__(self, mc, dc, seed, train_cfg, ft_cfg, dev, ni, trials, eval_seed, params,
                 wct_p, variants, nf_cfg, layers, work: Path, device, ni_unc=None,
                 unc_trials=0, bn_cfg: BNCalibrationConfig | None = None,
                 ident: dict | None = None):  # fmt: skip
        self.mc, self.seed, self.train_cfg, self.ft_cfg = mc, seed, train_cfg, ft_cfg
        self.dev, self.ni, self.trials, self.eval_seed = dev, ni, trials, eval_seed
        self.params, self.wct_p, self.variants, self.nf_cfg = params, wct_p, variants, nf_cfg
        self.layers, self.device = layers, device
        self.ni_unc, self.unc_trials = ni_unc, unc_trials
        self.bn_cfg = bn_cfg or BNCalibrationConfig()
        ident = dict(ident or {})
        self.ni_ident = ident.pop("nonideal", None)
        # what every cached model of this experiment depends on (see _cached)
        self.fp_dense = {**ident, "seed": seed, "train": _train_ident(train_cfg)}
        self.fp_pruned = {
            **self.fp_dense, "finetune": _train_ident(ft_cfg), "params": to_dict(params)
        }  # fmt: skip
        self.work = ensure_dir(work)
        self._verified: set[Path] = set()
        self.splits = study_splits(dc, seed)  # always a validation split (issue #21)
        self.test = DataLoader(self.splits.test, batch_size=dc.batch_size_eval)
        self.calib = example_batch(self.splits.train, int(nf_cfg["calib"])).to(device)
        self.example = self.calib[:8]
        self.log = print
        self.dense = self._dense()

    # ------------------------------------------------------------------ models
    def fresh(self) -> nn.Module:
        from xbarprune.models import build_model

        return build_model(
            self.mc.name, num_classes=self.splits.num_classes,
            in_channels=self.splits.in_channels, image_size=self.splits.image_size,
            width=self.mc.width, seed=self.seed, **self.mc.kwargs,
        ).to(self.device)  # fmt: skip

    def load(self, path: Path) -> nn.Module:
        m = self.fresh()
        load_state_into(m, load_checkpoint(path, self.device)["model"], str(path))
        return m

    def _fresh(self, path: Path, fp: str, stored_fp, *partials: Path) -> bool:
        """Whether the cached ``path`` exists and was made with fingerprint ``fp``
        (``stored_fp(path)`` reads the one it carries). One made with another is deleted, with
        its resumable ``partials``, so it is rebuilt; one without a fingerprint (made before
        fingerprints existed) is trusted. A path found fresh is not read again in this run."""
        if not path.is_file():
            return False
        if path in self._verified:
            return True
        got = stored_fp(path)
        if got is None or got == fp:
            self._verified.add(path)
            return True
        self.log(f"[{self.mc.name}] {path.name}: made with other settings, rebuilding")
        for p in (path, *partials):
            p.unlink(missing_ok=True)
        return False

    def _cached(self, path: Path, config: Any, *partials: Path) -> bool:
        """:meth:`_fresh` for a model checkpoint made with ``config``."""
        fp = config_fingerprint(config)
        return self._fresh(path, fp, lambda p: load_checkpoint(p).get("fingerprint"), *partials)

    def _fresh_json(self, f: Path, fp: str) -> bool:
        """:meth:`_fresh` for a JSON record (a bare list: an old ablation, no fingerprint)."""

        def stored(p: Path):
            d = json.loads(p.read_text())
            return d.get("config_fingerprint") if isinstance(d, dict) else None

        return self._fresh(f, fp, stored)

    def _save(self, path: Path, state: dict, config: Any) -> None:
        save_checkpoint(path, {**state, "fingerprint": config_fingerprint(config)})

    def _dense(self) -> nn.Module:
        path = self.work / "dense.pt"
        if not self._cached(path, self.fp_dense, self.work / "dense_ckpt.pt"):
            self.log(f"[{self.mc.name}] dense training")
            m = self.fresh()
            train(m, self.splits.train, self.train_cfg, device=self.device,
                  checkpoint=self.work / "dense_ckpt.pt", seed=self.seed, desc="dense",
                  log=self.log)  # fmt: skip
            self._save(path, {"model": m.state_dict()}, self.fp_dense)
        return self.load(path)

    def layout(self, model: nn.Module, size: int) -> CrossbarLayout:
        xbar = CrossbarSpec(size, size)
        lay = map_model(model, xbar, on_unsupported="digital")
        if self.layers == "conv":
            lay = CrossbarLayout(xbar, {n: v for n, v in lay.layers.items() if v.kind == "conv"})
        return lay

    def ctx(self, model: nn.Module, layout: CrossbarLayout) -> CompressContext:
        return CompressContext(
            model=model, layout=layout, device_spec=self.dev, train_data=self.splits.train,
            val_data=self.splits.val, finetune_cfg=self.ft_cfg, device=self.device,
            seed=self.seed, run_dir=None, nonideal=self.ni, log=self.log,
        )  # fmt: skip

    def pruned(self, scheme: str, sparsity: float, size: int) -> tuple[Path, Path]:
        """Paths of the pruned + fine-tuned model and of its WCT version (trained if absent)."""
        tag = scheme if scheme == "cf" else f"{scheme}{size}"
        p_path = self.work / f"{tag}_s{sparsity:g}.pt"
        w_path = self.work / f"{tag}_s{sparsity:g}_wct.pt"
        layout = self.layout(self.dense, size)
        fp_l = {**self.fp_pruned, "scheme": tag}
        fp_p = {**fp_l, "sparsity": sparsity}
        fp_w = {**fp_p, "wct": to_dict(self.wct_p)}
        if not self._cached(p_path, fp_p):
            lasso = self.work / f"{tag}_lasso.pt"
            if not self._cached(lasso, fp_l, self.work / f"{tag}_lasso_ckpt.pt"):
                m = copy.deepcopy(self.dense)
                reg = regularizer(scheme, layout, self.params)
                if reg is not None and self.params.reg_epochs > 0:
                    self.log(f"[{self.mc.name}] {tag}: group lasso")
                    train(m, self.splits.train, self.ft_cfg, device=self.device, regularizer=reg,
                          seed=self.seed + 3, checkpoint=self.work / f"{tag}_lasso_ckpt.pt",
                          desc=f"{tag} lasso", epochs=self.params.reg_epochs,
                          log=self.log)  # fmt: skip
                self._save(lasso, {"model": m.state_dict()}, fp_l)
            m = self.load(lasso)
            self.log(f"[{self.mc.name}] {tag}: prune to {sparsity:g} + fine-tune")
            post = None
            if scheme == "cf":
                masks, rep = cf_prune(m, layout, self.example, sparsity, self.params.select)
                post = bn_keeper(rep.pop("_bn_zero"))
            else:
                masks = magnitude_masks(
                    m, layout, sparsity=sparsity, kind={"xcs": "tile_column", "xrs": "tile_row"}[
                        scheme], scope=self.params.select,
                    prunable=prunable_layers(layout, self.params),
                )  # fmt: skip
                masks.apply(m)
            train(m, self.splits.train, self.ft_cfg, device=self.device, masks=masks,
                  post_step=post, seed=self.seed + 5, desc=f"{tag} finetune",
                  epochs=max(self.params.ft_epochs, 1), log=self.log)  # fmt: skip
            if post is not None:
                post(m)
            self._save(p_path, {"model": m.state_dict(), "masks": masks.state_dict()}, fp_p)
        if not self._cached(w_path, fp_w):
            m = self.load(p_path)
            masks = MaskSet(load_checkpoint(p_path)["masks"])
            post = None
            if scheme == "cf":  # keep pruned channels' BatchNorm at zero during WCT
                post = _bn_zero_keeper(m)
            self.log(f"[{self.mc.name}] {tag} s={sparsity:g}: WCT (kappa {self.wct_p.kappa})")
            info = weight_constrained_training(self.ctx(m, layout), self.wct_p, masks=masks,
                                               post_step=post)  # fmt: skip
            if post is not None:
                post(m)
            self._save(w_path, {"model": m.state_dict(), "w_max": info["w_max"]}, fp_w)
        return p_path, w_path

    def dense_wct(self) -> Path:
        path = self.work / "dense_wct.pt"
        fp = {**self.fp_dense, "wct": to_dict(self.wct_p)}
        if not self._cached(path, fp):
            m = copy.deepcopy(self.dense)
            lay = self.layout(m, 32)
            self.log(f"[{self.mc.name}] dense: WCT (kappa {self.wct_p.kappa})")
            info = weight_constrained_training(self.ctx(m, lay), self.wct_p)
            self._save(path, {"model": m.state_dict(), "w_max": info["w_max"]}, fp)
        return path

    # ------------------------------------------------------------------ evaluation
    def arms(self, size: int, schemes: dict, mitigations: list[str]):
        """Rows of every (scheme, sparsity, mitigation) at crossbar ``size`` (cached)."""
        cases = [("dense", 0.0)] + [(k, float(s)) for k, v in schemes.items() for s in v]
        dense_tiles = self.layout(self.dense, size).dense_tiles
        for scheme, s in cases:
            for mit in mitigations:
                f = self.work / f"arm_{size}_{scheme}_{s:g}_{mit}.json"
                fp = config_fingerprint(self._arm_config(scheme, s, mit))
                if not self._fresh_json(f, fp):
                    rec = self._arm(size, scheme, s, mit, dense_tiles)
                    atomic_write_json(f, {**rec, "config_fingerprint": fp})
                yield json.loads(f.read_text())

    def _arm_config(self, scheme: str, s: float, mit: str) -> dict:
        """Everything an arm's numbers depend on (its cache fingerprint)."""
        wct = mit in ("wct", "both")
        cfg: dict[str, Any] = {
            "models": self.fp_pruned if scheme != "dense" else self.fp_dense,
            "scheme": scheme, "sparsity": s, "mitigation": mit,
            "nonideal": self.ni_ident, "device": to_dict(self.dev), "trials": self.trials,
            "eval_seed": self.eval_seed, "nf": self.nf_cfg, "layers": self.layers,
        }  # fmt: skip
        if wct:
            cfg["wct"] = to_dict(self.wct_p)
        if mit in ("rearrange", "both"):
            cfg["variants"] = list(self.variants)
        if mit == "bn_adapt":  # adaptation uses only these settings
            cfg["bn_calibration"] = {"samples": self.bn_cfg.samples,
                                     "batch_size": self.bn_cfg.batch_size}  # fmt: skip
        elif mit == "bn_finetune":
            cfg["bn_calibration"] = to_dict(self._bn_cfg(mit))
        if mit == "none" and self.ni_unc is not None:
            cfg["uncalibrated_trials"] = self.unc_trials
        return cfg

    def _bn_cfg(self, mit: str) -> BNCalibrationConfig:
        modes: dict[str, BNMode] = {"bn_adapt": "adapt", "bn_finetune": "finetune"}
        mode = modes[mit]
        return replace(self.bn_cfg, mode=mode)

    def _bn(self, mit: str) -> BNCalibration:
        return BNCalibration(self._bn_cfg(mit), self.splits.train, seed=self.eval_seed,
                             device=self.device)  # fmt: skip

    def prepared(self, size: int, scheme: str, s: float, wct: bool):
        """(model, layout, weight clip or None) of one arm as it goes on the crossbars: C/F
        physically pruned, XCS/XRS on their packed layouts, WCT with its fixed w_max."""
        w_max = None
        if scheme == "dense":
            path = self.dense_wct() if wct else None
        else:
            p_path, w_path = self.pruned(scheme, s, size)
            path = w_path if wct else p_path
        model = self.load(path) if path is not None else copy.deepcopy(self.dense)
        if wct:
            assert path is not None  # the WCT checkpoint chosen above
            w_max = load_checkpoint(path)["w_max"]
        model.eval()
        if scheme == "cf":
            model, rep = remove_cf(model, self.example)
            if rep["kept_constant"]:
                self.log(f"  note: C/F kept {len(rep['kept_constant'])} constant channel(s)")
        layout = self.layout(model, size)
        if scheme in ("xcs", "xrs"):
            layout = pack_layout(layout, model, PACK_KIND[scheme])
        clip = {n: w_max[n] for n in layout.layers} if w_max else None
        return model, layout, clip

    def ablation(self, size: int, schemes: dict, ablations: dict, trials: int) -> list[dict]:
        """Which effect costs what: the dense model and each scheme at its highest sparsity
        (no mitigation) under each effect subset of ``ablations`` (cached per size)."""
        f = self.work / f"ablation_{size}.json"
        cases = [("dense", 0.0)] + [(k, float(max(v))) for k, v in schemes.items() if v]
        fp = config_fingerprint({
            "models": self.fp_pruned, "cases": cases, "trials": trials,
            "effects": {k: to_dict(v.config) for k, v in ablations.items()},
            "device": to_dict(self.dev), "eval_seed": self.eval_seed, "layers": self.layers,
        })  # fmt: skip
        if not self._fresh_json(f, fp):
            out = []
            for scheme, s in cases:
                model, layout, clip = self.prepared(size, scheme, s, wct=False)
                acc = evaluate_accuracy(model, self.test, self.device)
                for name, ni in ablations.items():
                    n = trials if _random(ni.config) else 1  # deterministic: one trial
                    res = evaluate(model, self.test, layout, self.dev, ni, trials=n,
                                   seed=self.eval_seed, device=self.device,
                                   weight_clip=clip)[0]  # fmt: skip
                    out.append({
                        "model": self.mc.name, "dataset": self.splits.name,
                        "crossbar": f"{size}x{size}", "scheme": scheme, "sparsity_target": s,
                        "effects": name, "acc_ideal": acc, "acc_mean": res.mean,
                        "acc_std": res.std, "trials": len(res.per_trial),
                    })  # fmt: skip
            atomic_write_json(f, {"config_fingerprint": fp, "rows": out})
        stored = json.loads(f.read_text())
        return stored["rows"] if isinstance(stored, dict) else stored  # list: before fingerprints

    def _arm(self, size: int, scheme: str, s: float, mit: str, dense_tiles: int) -> dict:
        t = time.perf_counter()
        wct = mit in ("wct", "both")
        model, layout, clip = self.prepared(size, scheme, s, wct)
        counts = crossbar_counts(model, layout, layout)
        base_w = sum(dict(self.dense.named_modules())[n].weight.numel() for n in layout.layers)
        nz = sum(int((dict(model.named_modules())[n].weight != 0).sum()) for n in layout.layers)
        report = None
        if mit in ("rearrange", "both"):
            layout, report = choose_rearrangement(
                model, layout, self.dev, self.ni, self.calib, variants=self.variants,
                weight_clip=clip, max_vectors=int(self.nf_cfg["max_vectors"]), seed=self.eval_seed,
            )  # fmt: skip
        per_layer = nonideality_factor(
            model, layout, self.dev, self.ni, self.calib, weight_clip=clip,
            tau=float(self.nf_cfg["tau"]), max_vectors=int(self.nf_cfg["max_vectors"]),
            seed=self.eval_seed,
        )  # fmt: skip
        nf = summarize(per_layer)
        nf_cols = _nf_quantiles(per_layer)
        acc = evaluate_accuracy(model, self.test, self.device)
        bn = self._bn(mit) if mit.startswith("bn_") else None
        res = evaluate(model, self.test, layout, self.dev, self.ni, trials=self.trials,
                       seed=self.eval_seed, device=self.device, weight_clip=clip,
                       bn_calibration=bn)[0]  # fmt: skip
        unc = None
        if self.ni_unc is not None and mit == "none":
            unc = evaluate(model, self.test, layout, self.dev, self.ni_unc,
                           trials=self.unc_trials, seed=self.eval_seed, device=self.device,
                           weight_clip=clip)[0]  # fmt: skip
        chosen: dict[str, int] = {}
        for v in (report or {}).values():
            chosen[v["chosen"]] = chosen.get(v["chosen"], 0) + 1
        return {
            "model": self.mc.name, "width": self.mc.width, "dataset": self.splits.name,
            "crossbar": f"{size}x{size}", "scheme": scheme, "sparsity_target": s,
            "sparsity_weight": 1.0 - nz / base_w, "crossbars_dense": dense_tiles,
            "crossbars": counts["crossbars"], "ccr": dense_tiles / max(counts["crossbars"], 1),
            "mitigation": mit, "acc_ideal": acc, "acc_nonideal_mean": res.mean,
            "acc_nonideal_std": res.std, "acc_nonideal_trials": res.per_trial,
            "trials": len(res.per_trial),
            "acc_uncalibrated_mean": unc.mean if unc else None,
            "acc_uncalibrated_trials": unc.per_trial if unc else None,
            "nf_mean": nf["nf_mean"], "nf_median": nf["nf_median"],
            "nf_p95": nf["nf_p95"], "nf_quantiles": nf_cols,
            "low_g_fraction": nf["low_g_fraction"], "low_g_min": nf["low_g_min"],
            "kappa": self.wct_p.kappa if wct else None, "rearrangement": chosen or None,
            "eval_seconds": round(time.perf_counter() - t, 1),
        }  # fmt: skip


def _bn_zero_keeper(model: nn.Module):
    """post_step keeping at zero the BatchNorm scale/shift that are zero now (pruned C/F
    channels), so they stay removable."""
    zero = [
        (m, (m.weight == 0) & (m.bias == 0))
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None
    ]

    @torch.no_grad()
    def hook(_model: nn.Module) -> None:
        for m, z in zero:
            m.weight[z] = 0
            m.bias[z] = 0

    return hook


def _nf_quantiles(per_layer: dict) -> list[float]:
    """NF at the 0, 5, ..., 100 % quantiles of all used columns (the distribution plot)."""
    cols = torch.cat([v.columns for v in per_layer.values()])
    if cols.numel() == 0:
        return []
    return [float(v) for v in torch.quantile(cols, torch.linspace(0, 1, 21, dtype=cols.dtype))]


# ---------------------------------------------------------------------------- report
def _drop(r: dict) -> float:
    return 100 * (r["acc_ideal"] - r["acc_nonideal_mean"])


def _markdown(summary: dict[str, Any]) -> str:
    rows = summary["rows"]
    c = summary["config"]
    lines = [
        "# Sparse DNNs on non-ideal crossbars (issue #8)",
        "",
        f"Command: `{summary['command']}`  ",
        f"Wall time: {summary['wall_time_s']:.0f} s ({summary['machine']}); compute time of all "
        "arms, including arms reused from earlier invocations (pruning, WCT, evaluation; dense "
        f"training excluded): {sum(r.get('eval_seconds', 0) for r in rows):.0f} s  ",
        f"Non-idealities: `{c['nonideal']}`; device g_min {c['device']['g_min']:.3g} S, "
        f"g_max {c['device']['g_max']:.3g} S, {c['device']['levels']} levels; "
        f"{summary['trials']} Monte Carlo trials per point; layers on crossbars: {c['layers']}",
        "",
        f"Column gain calibration: {'on' if c.get('column_calibration') else 'off'}; "
        "'uncalibrated %' is the mitigation-free model on the same hardware without it "
        f"({c.get('uncalibrated_trials', 0)} trials).",
        "",
        "| model | dataset | crossbar | scheme | target | weight sparsity % | CCR | mitigation | "
        "ideal % | non-ideal % | drop pp | uncalibrated % | NF mean | low-G share |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        unc = r.get("acc_uncalibrated_mean")
        unc_s = "–" if unc is None else f"{100 * unc:.1f}"
        lines.append(
            f"| {r['model']} | {r['dataset']} | {r['crossbar']} | {r['scheme']} | "
            f"{r['sparsity_target']:g} | {100 * r['sparsity_weight']:.1f} | {r['ccr']:.2f} | "
            f"{r['mitigation']} | {100 * r['acc_ideal']:.2f} | {100 * r['acc_nonideal_mean']:.2f}"
            f" ± {100 * r['acc_nonideal_std']:.2f} | {_drop(r):.1f} | {unc_s} | "
            f"{r['nf_mean']:.4f} | {r['low_g_fraction']:.3f} |"
        )
    lines += ["", "![accuracy drop vs CCR](drop_vs_ccr.png)", "", "![NF distribution](nf.png)", ""]
    lines += _mitigation_markdown(rows)
    lines += _ablation_markdown(summary.get("ablation") or [])
    ref = summary["reference"]
    lines += [
        f"## Against the only published number ({ref['crossbar']}, secondary source, unverified)",
        "",
        f"Reported for VGG on CIFAR-10: dense -{ref['dense_drop_pp']:.0f} pp, C/F "
        f"-{ref['cf_drop_pp']:.0f} pp. Ours (no mitigation, same crossbar size):",
        "",
        "| model | dataset | dense drop pp | C/F drop pp (highest sparsity) | C/F CCR |",
        "|---|---|---|---|---|",
    ]
    for mo, ds in sorted({(r["model"], r["dataset"]) for r in rows}):
        sel = [r for r in rows if (r["model"], r["dataset"], r["crossbar"], r["mitigation"])
               == (mo, ds, ref["crossbar"], "none")]  # fmt: skip
        d = [r for r in sel if r["scheme"] == "dense"]
        cf = sorted((r for r in sel if r["scheme"] == "cf"), key=lambda r: r["sparsity_target"])
        if d and cf:
            lines.append(
                f"| {mo} | {ds} | {-_drop(d[0]):.1f} | {-_drop(cf[-1]):.1f} | {cf[-1]['ccr']:.2f} |"
            )
    lines.append("")
    return "\n".join(lines)


def _mitigation_markdown(rows: list[dict]) -> list[str]:
    """Accuracy drop (pp, each arm against its own ideal accuracy) per mitigation, one line
    per (model, crossbar, scheme, sparsity)."""
    mits = [m for m in MITIGATIONS if any(r["mitigation"] == m for r in rows)]
    keys: list[tuple] = []
    for r in rows:
        k = (r["model"], r["dataset"], r["crossbar"], r["scheme"], r["sparsity_target"])
        if k not in keys:
            keys.append(k)
    if not keys:
        return []
    by = {(r["model"], r["dataset"], r["crossbar"], r["scheme"], r["sparsity_target"],
           r["mitigation"]): r for r in rows}  # fmt: skip
    lines = [
        "## Accuracy drop by mitigation (pp; each arm against its own ideal accuracy, which "
        "WCT changes)",
        "",
        "| model | crossbar | scheme | target | ideal % | " + " | ".join(mits) + " |",
        "|---|---|---|---|---|" + "---|" * len(mits),
    ]
    for k in keys:
        # k + (m,), not by[(*k, m)]: mypy misreads a starred tuple in brackets as 3.11 syntax
        base = by.get((*k, "none")) or next(by[k + (m,)] for m in mits if (*k, m) in by)
        cells = [f"{_drop(by[k + (m,)]):.1f}" if (*k, m) in by else "–" for m in mits]
        lines.append(f"| {k[0]} | {k[2]} | {k[3]} | {k[4]:g} | {100 * base['acc_ideal']:.1f} | "
                     + " | ".join(cells) + " |")  # fmt: skip
    return [*lines, ""]


def _ablation_markdown(abl: list[dict]) -> list[str]:
    """Accuracy (%) under each effect subset, one line per (model, crossbar, scheme)."""
    if not abl:
        return []
    effects = list(dict.fromkeys(a["effects"] for a in abl))
    keys = list(dict.fromkeys((a["model"], a["crossbar"], a["scheme"]) for a in abl))
    lines = [
        f"## Which effect costs what (no mitigation; {max(a['trials'] for a in abl)} trials, 1 "
        "for the deterministic subsets; highest sparsity of each scheme)",
        "",
        "| model | crossbar | scheme | ideal % | " + " | ".join(effects) + " |",
        "|---|---|---|---|" + "---|" * len(effects),
    ]
    for mo, xb, sc in keys:
        sel = {
            a["effects"]: a for a in abl if (a["model"], a["crossbar"], a["scheme"]) == (mo, xb, sc)
        }
        first = next(iter(sel.values()))
        cells = [
            f"{100 * sel[e]['acc_mean']:.1f} ± {100 * sel[e]['acc_std']:.1f}" if e in sel else "–"
            for e in effects
        ]
        head = f"| {mo} | {xb} | {sc} | {100 * first['acc_ideal']:.1f} | "
        lines.append(head + " | ".join(cells) + " |")
    lines.append("")
    return lines


_LINESTYLES: dict[str, Any] = {
    "none": "-", "rearrange": ":", "wct": "--", "both": "-.",
    "bn_adapt": (0, (3, 1, 1, 1, 1, 1)), "bn_finetune": (0, (6, 2)),
}  # fmt: skip
_COLORS = {"dense": "k", "cf": "C0", "xcs": "C1", "xrs": "C2"}


def _plots(rows: list[dict], out_dir: Path) -> None:
    if not rows:
        return
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r["model"], r["dataset"], r["crossbar"]) for r in rows})
    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.8), squeeze=False)
    styles, colors = _LINESTYLES, _COLORS
    for ax, (mo, ds, xb) in zip(axes[0], groups, strict=True):
        sel = [r for r in rows if (r["model"], r["dataset"], r["crossbar"]) == (mo, ds, xb)]
        for scheme in colors:
            for mit, ls in styles.items():
                pts = sorted(
                    (r["ccr"], _drop(r))
                    for r in sel
                    if r["mitigation"] == mit and (r["scheme"] == scheme or r["scheme"] == "dense")
                )
                if len(pts) < 2 and scheme != "dense":
                    continue
                if scheme == "dense":
                    pts = [p for p in pts if p[0] <= 1.0 + 1e-9]
                if not pts:
                    continue
                ax.plot([p[0] for p in pts], [p[1] for p in pts], linestyle=ls,
                        marker="s" if mit.startswith("bn_") else "o", ms=3,
                        color=colors[scheme], label=f"{scheme} / {mit}")  # fmt: skip
        ax.set_xlabel("crossbar compression rate (CCR)")
        ax.set_ylabel("accuracy drop, ideal - non-ideal (pp)")
        ax.set_title(f"{mo} / {ds} / {xb}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=5, ncol=2)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(out_dir / "drop_vs_ccr.png", buf.getvalue())

    fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.8), squeeze=False)
    for ax, (mo, ds, xb) in zip(axes[0], groups, strict=True):
        for r in rows:
            if (r["model"], r["dataset"], r["crossbar"]) != (mo, ds, xb) or not r["nf_quantiles"]:
                continue
            if r["mitigation"] not in ("none", "both"):
                continue
            q = r["nf_quantiles"]
            lab = f"{r['scheme']} {r['sparsity_target']:g} / {r['mitigation']}"
            ys = [i / (len(q) - 1) for i in range(len(q))]
            ax.plot(q, ys, linestyle=styles[r["mitigation"]], color=colors[r["scheme"]], lw=1,
                    label=lab)  # fmt: skip
        ax.set_xlabel("non-ideality factor NF per column")
        ax.set_ylabel("cumulative share of columns")
        ax.set_title(f"{mo} / {ds} / {xb}", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=5, ncol=2)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(out_dir / "nf.png", buf.getvalue())


@html_plots("sparse_nonideal", replaces=("drop_vs_ccr.png", "nf.png"))
def html_report_plots(summary: dict) -> list[Plot]:
    """The two plots of :func:`_plots` for report.html: one panel per (model, dataset,
    crossbar), one checkbox per scheme and per mitigation instead of a 20-entry legend."""
    rows = summary.get("rows") or []
    drop: list[Series] = []
    nf: list[Series] = []
    groups = sorted({(r["model"], r["dataset"], r["crossbar"]) for r in rows})
    for mo, ds, xb in groups:
        facet = f"{mo} / {ds} / {xb}"
        sel = [r for r in rows if (r["model"], r["dataset"], r["crossbar"]) == (mo, ds, xb)]
        for scheme, color in _COLORS.items():
            for mit, ls in _LINESTYLES.items():
                pts = sorted(
                    (r["ccr"], _drop(r))
                    for r in sel
                    if r["mitigation"] == mit and r["scheme"] in (scheme, "dense")
                )
                if scheme == "dense":
                    pts = [p for p in pts if p[0] <= 1.0 + 1e-9]
                if not pts or (len(pts) < 2 and scheme != "dense"):
                    continue
                style = {"color": color, "linestyle": ls, "markersize": 3,
                         "marker": "s" if mit.startswith("bn_") else "o"}  # fmt: skip
                drop.append(Series([p[0] for p in pts], [p[1] for p in pts],
                                   label=f"{scheme} / {mit}", facet=facet, style=style,
                                   tags={"scheme": scheme, "mitigation": mit}))  # fmt: skip
        for r in sel:
            q = r.get("nf_quantiles")
            if not q or r["mitigation"] not in ("none", "both") or len(q) < 2:
                continue
            ys = [i / (len(q) - 1) for i in range(len(q))]
            nf.append(Series(q, ys, label=f"{r['scheme']} {r['sparsity_target']:g}", facet=facet,
                             style={"color": _COLORS.get(r["scheme"], "C3"), "marker": "",
                                    "linestyle": _LINESTYLES[r["mitigation"]], "linewidth": 1},
                             tags={"scheme": r["scheme"], "mitigation": r["mitigation"],
                                   "sparsity": f"{r['sparsity_target']:g}"}))  # fmt: skip
    plots: list[Plot] = []
    if drop:
        plots.append(LinePlot(
            "Accuracy drop against crossbar compression rate", drop,
            xlabel="crossbar compression rate (CCR)",
            ylabel="accuracy drop, ideal - non-ideal (pp)",
            caption="Colour: scheme; line style: mitigation. Untick a box to hide its series.",
        ))  # fmt: skip
    if nf:
        plots.append(LinePlot(
            "Non-ideality factor per column (cumulative)", nf,
            xlabel="non-ideality factor NF per column", ylabel="cumulative share of columns",
        ))  # fmt: skip
    return plots
