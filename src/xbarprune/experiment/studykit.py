"""Shared pieces of the method comparisons (``xbarprune compare``).

A comparison runs several *arms* (dense, a method at a budget, a baseline) on one (model,
dataset) *bench*. The bench holds the seeded data splits and a model factory, trains the dense
model once (cached and resumable in ``<out>/work/<model>_<dataset>/``), and keeps every finished
arm as a JSON record there, so a killed comparison resumes where it stopped. Each arm is
evaluated the same way: ideal test accuracy, crossbars of its layout, weight sparsity and Monte
Carlo accuracy through a non-ideality model at each drift time, plus the ideal validation
accuracy.

Held-out selection (issue #21): a bench always has a validation split carved from the training
data (:func:`study_splits`); every selection (method sweeps through :meth:`Bench.context`,
"best" rows through :func:`select_best`) reads it, never the test split.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from xbarprune.analog.simulate import evaluate
from xbarprune.compress.base import CompressContext
from xbarprune.config import from_dict, to_dict
from xbarprune.data.heldout import heldout_val_size, selection_data
from xbarprune.errors import ConfigError
from xbarprune.experiment.config import DataConfig, EvaluateConfig, ModelConfig
from xbarprune.hardware.nonideal.model import NonIdealityConfig, NonIdealityModel, preset
from xbarprune.hardware.spec import DeviceSpec
from xbarprune.io import (
    atomic_write_json,
    ensure_dir,
    load_checkpoint,
    load_state_into,
    save_checkpoint,
)
from xbarprune.mapping.layout import CrossbarLayout, layer_matrices
from xbarprune.training.loop import TrainConfig, evaluate_accuracy, train
from xbarprune.training.masks import MaskSet
from xbarprune.units import format_time


def check_keys(data: dict, allowed: set[str], what: str) -> None:
    """Reject unknown top-level keys of a comparison config, naming them and the allowed ones."""
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(
            f"unknown key(s) in the {what} comparison: {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )


def section(data: dict, key: str, cls, default=None):
    """``data[key]`` loaded into the dataclass ``cls`` (strict keys), or ``default``."""
    return from_dict(cls, data.get(key) or {}, key) if key in data else (default or cls())


def nonideal_model(raw: str | dict, where: str = "nonideal") -> NonIdealityModel:
    """A preset name or a full ``NonIdealityConfig`` mapping."""
    cfg = preset(raw) if isinstance(raw, str) else from_dict(NonIdealityConfig, raw, where)
    return NonIdealityModel.from_config(cfg)


def config_fingerprint(config: Any) -> str:
    """A short stable hash of a JSON-able config (dataclasses go through ``to_dict``)."""
    import hashlib
    from dataclasses import is_dataclass

    def plain(v: Any) -> Any:
        if is_dataclass(v) and not isinstance(v, type):
            return to_dict(v)
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v

    text = json.dumps(plain(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def apply_quick(data: dict, *, param_keys: tuple[str, ...] = ()) -> dict:
    """The config with its ``quick:`` section applied (``--quick``: a smoke run on a subset).

    Generic keys: ``experiments`` (keep the first n), ``train_subset`` / ``test_subset`` /
    ``val_size`` (every experiment's data), ``epochs`` (train and finetune), ``trials`` and
    ``times`` (evaluate), ``params`` (merged into ``params``); the keys in ``param_keys`` go into
    ``params`` too. Other keys are left for the study in ``data["_quick"]``.
    """
    d = copy.deepcopy(data)
    q = dict(d.pop("quick", None) or {})
    if "experiments" in q:
        d["experiments"] = (d.get("experiments") or [])[: int(q.pop("experiments"))]
    sub = {k: q.pop(k) for k in ("train_subset", "test_subset", "val_size") if k in q}
    for e in d.get("experiments") or []:
        e.setdefault("data", {}).update(sub)
    if "epochs" in q:
        ep = q.pop("epochs")
        for sec in ("train", "finetune"):
            d.setdefault(sec, {})["epochs"] = ep
    for k in ("trials", "times"):
        if k in q:
            d.setdefault("evaluate", {})[k] = q.pop(k)
    p = d.setdefault("params", {})
    p.update(q.pop("params", None) or {})
    for k in param_keys:
        if k in q:
            p[k] = q.pop(k)
    d["_quick"] = q
    return d


def set_threads(data: dict) -> None:
    """Apply ``runtime: {threads: n}`` of a comparison config."""
    threads = (data.get("runtime") or {}).get("threads")
    if threads:
        torch.set_num_threads(int(threads))


def select_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def study_splits(dc: DataConfig, seed: int):
    """The data splits of a study: ``dc`` with ``download`` passed, and always a validation
    split carved from the training data (``data.val_size``; 0 or none given:
    :data:`~xbarprune.data.heldout.DEFAULT_VAL_FRACTION` of it), which every selection reads
    (issue #21). The test split is read only by the final measurement."""
    from xbarprune.data import load_splits

    return load_splits(
        dc.name,
        dc.root,
        val_size=heldout_val_size(dc.val),
        train_subset=dc.train_subset,
        test_subset=dc.test_subset,
        pad_to=dc.pad_to,
        seed=seed,
        download=dc.download,
    )


@dataclass
class Bench:
    """One (model, dataset) of a comparison: data, model factory, dense model, arm cache."""

    model_cfg: ModelConfig
    data_cfg: DataConfig
    seed: int
    work: Path
    device: torch.device
    splits: Any = None
    log: Callable[[str], None] = print
    _test: DataLoader | None = field(default=None, repr=False)
    _val: DataLoader | None = field(default=None, repr=False)

    @classmethod
    def open(
        cls,
        mc: ModelConfig,
        dc: DataConfig,
        seed: int,
        work: Path,
        device: torch.device,
        log: Callable[[str], None] = print,
    ) -> Bench:
        return cls(mc, dc, seed, ensure_dir(work), device, study_splits(dc, seed), log)

    @property
    def tag(self) -> str:
        return f"{self.model_cfg.name}/{self.splits.name}"

    @property
    def test(self) -> DataLoader:
        if self._test is None:
            self._test = DataLoader(self.splits.test, batch_size=self.data_cfg.batch_size_eval)
        return self._test

    @property
    def val(self):
        """The validation split: what every selection reads. Never the test split: a bench
        opened by :meth:`open` always has one (:func:`study_splits`); one without raises."""
        return selection_data(self.splits.val, f"{self.tag}: selection")

    def val_accuracy(self, model: nn.Module) -> float:
        """Ideal accuracy on the validation split (what "best" rows are chosen on)."""
        if self._val is None:
            self._val = DataLoader(self.val, batch_size=self.data_cfg.batch_size_eval)
        return evaluate_accuracy(model, self._val, self.device)

    def fresh(self) -> nn.Module:
        from xbarprune.models import build_model

        mc = self.model_cfg
        return build_model(
            mc.name,
            num_classes=self.splits.num_classes,
            in_channels=self.splits.in_channels,
            image_size=self.splits.image_size,
            width=mc.width,
            seed=self.seed,
            **mc.kwargs,
        ).to(self.device)

    def load(self, path: Path, model: nn.Module | None = None) -> nn.Module:
        m = model if model is not None else self.fresh()
        load_state_into(m, load_checkpoint(path, self.device)["model"], str(path))
        return m

    def save(self, model: nn.Module, path: Path) -> None:
        save_checkpoint(path, {"model": model.state_dict()})

    def dense(self, cfg: TrainConfig, name: str = "dense") -> nn.Module:
        """The dense model trained with ``cfg`` (cached in ``work/<name>.pt``, resumable)."""
        path = self.work / f"{name}.pt"
        if not path.is_file():
            self.log(f"[{self.tag}] dense training ({cfg.epochs} epochs)")
            m = self.fresh()
            train(
                m,
                self.splits.train,
                cfg,
                device=self.device,
                checkpoint=self.work / f"{name}_ckpt.pt",
                seed=self.seed,
                desc=name,
                log=self.log,
            )
            self.save(m, path)
        return self.load(path)

    def finetune(
        self,
        model: nn.Module,
        masks: MaskSet | None,
        cfg: TrainConfig,
        *,
        epochs: int | None = None,
        seed_offset: int = 5,
        desc: str = "finetune",
        regularizer=None,
    ) -> None:
        """Fine-tune in place with the masks fixed (pruned weights stay exactly zero);
        ``regularizer(model, progress)`` is added to the loss if given."""
        if (epochs if epochs is not None else cfg.epochs) <= 0:
            return
        train(
            model,
            self.splits.train,
            cfg,
            device=self.device,
            masks=masks,
            seed=self.seed + seed_offset,
            desc=desc,
            epochs=epochs,
            log=self.log,
            regularizer=regularizer,
        )
        if masks is not None:
            MaskSet(masks.masks).apply(model)

    def context(
        self,
        model: nn.Module,
        layout: CrossbarLayout,
        dev: DeviceSpec,
        ft_cfg: TrainConfig,
        ni: NonIdealityModel | None = None,
    ) -> CompressContext:
        return CompressContext(
            model=model,
            layout=layout,
            device_spec=dev,
            train_data=self.splits.train,
            val_data=self.val,
            finetune_cfg=ft_cfg,
            device=self.device,
            seed=self.seed,
            run_dir=None,
            nonideal=ni,
            log=self.log,
        )

    def arm(self, key: str, build: Callable[[], dict], config: Any = None) -> dict:
        """The record of arm ``key``: read from ``work/arm_<key>.json`` or built and stored.

        ``config`` (the arm's parameters, JSON-able) is fingerprinted into the record; a stored
        record with another fingerprint is stale (the config changed since) and is rebuilt, so
        a resumed run never mixes results of two configurations under one name. Records
        without a fingerprint are reused, except records stored before held-out selection
        (no ``selection_split: "val"`` in their base, issue #21), which are rebuilt.
        """
        path = self.work / f"arm_{key}.json"
        fp = config_fingerprint(config) if config is not None else None
        if path.is_file():
            base = json.loads(path.read_text()).get("base") or {}
            stored = base.get("arm_config")
            if base.get("selection_split") != "val":
                self.log(f"[{self.tag}] arm {key}: stored before held-out selection, rebuilding")
                path.unlink()
            elif fp is not None and stored is not None and stored != fp:
                self.log(f"[{self.tag}] arm {key}: config changed since it was stored, rebuilding")
                path.unlink()
        if not path.is_file():
            self.log(f"[{self.tag}] arm {key}")
            t = time.perf_counter()
            rec = build()
            base = rec.setdefault("base", {})
            base["arm_seconds"] = round(time.perf_counter() - t, 1)
            base["selection_split"] = "val"  # every selection of this arm read validation data
            if fp is not None:
                base["arm_config"] = fp
            atomic_write_json(path, rec)
        return json.loads(path.read_text())

    def measure(
        self,
        model: nn.Module,
        layout: CrossbarLayout,
        dev: DeviceSpec,
        ni: NonIdealityModel,
        ev: EvaluateConfig,
        *,
        reference: CrossbarLayout | None = None,
        extra: dict | None = None,
    ) -> dict:
        """Ideal accuracy, crossbars, sparsity and Monte Carlo accuracy of one arm.

        ``acc_ideal`` (and the Monte Carlo part) is measured on the test split, ``acc_val`` on
        the validation split: selection ("best" rows) reads ``acc_val`` only.

        ``reference`` is the dense layout the saving is counted against (default ``layout``).
        Returns ``{"base": {...}, "nonideal": [EvalResult.to_dict() per time]}``.
        """
        ref = reference or layout
        t = time.perf_counter()
        acc = evaluate_accuracy(model, self.test, self.device)
        acc_val = self.val_accuracy(model)
        res = (
            evaluate(
                model,
                self.test,
                layout,
                dev,
                ni,
                trials=ev.trials,
                seed=ev.seed,
                times=ev.times_s,
                device=self.device,
            )
            if not ni.is_ideal
            else []
        )
        mats = layer_matrices(model, layout)
        needed = sum(layout[n].tiles_needed(mats[n]) for n in layout.layers)
        nnz = sum(int((m != 0).sum()) for m in mats.values())
        tot = sum(m.numel() for m in mats.values())
        base = {
            "model": self.model_cfg.name,
            "dataset": self.splits.name,
            "sparsity_weight": 1 - nnz / tot,
            "crossbars_dense": ref.dense_tiles,
            "crossbars": needed,
            "crossbar_saving": 1 - needed / ref.dense_tiles,
            "acc_ideal": acc,
            "acc_val": acc_val,
            "trials": ev.trials,
            **(extra or {}),
            "eval_seconds": round(time.perf_counter() - t, 1),
        }
        return {"base": base, "nonideal": [r.to_dict() for r in res]}


def select_best(
    rows: list[dict],
    *,
    feasible: Callable[[dict], bool],
    objective: Callable[[dict], float],
) -> dict | None:
    """The "best" row of a study: among rows that are ``feasible`` the one of largest
    ``objective``; None if none is.

    Held-out by construction: ``feasible`` and ``objective`` are called on a *view* of each
    row that holds no test-split number (``acc_ideal``, ``acc_nonideal_*`` and ``acc_dense``
    removed; ``acc_val`` / ``acc_dense_val`` kept), so a criterion that reads a test
    accuracy fails with a ``KeyError`` instead of selecting on it. Rows without ``acc_val``
    (records of runs before held-out selection) are never selected.
    """
    best, best_v = None, None
    for r in rows:
        view = selection_view(r)
        if view.get("acc_val") is None or not feasible(view):
            continue
        v = objective(view)
        if best_v is None or v > best_v:
            best, best_v = r, v
    return best


_TEST_KEYS = ("acc_ideal", "acc_dense", "acc_pruned", "acc_nonideal_mean", "acc_nonideal_std",
              "acc_nonideal_trials")  # fmt: skip


def selection_view(row: dict) -> dict:
    """``row`` without its test-split numbers (see :func:`select_best`)."""
    return {k: v for k, v in row.items() if k not in _TEST_KEYS}


def expand(rec: dict) -> list[dict]:
    """One summary row per drift time of an arm record (one row if it has no non-ideal part)."""
    if not rec["nonideal"]:
        return [{**rec["base"], "acc_nonideal_mean": None, "acc_nonideal_std": None}]
    out = []
    for r in rec["nonideal"]:
        out.append(
            {
                **rec["base"],
                "drift_time_s": r["time_s"],
                "drift_time": format_time(r["time_s"]),
                "acc_nonideal_mean": r["mean"],
                "acc_nonideal_std": r["std"],
                "acc_nonideal_trials": r["per_trial"],
            }
        )
    return out


def mean_std(row: dict) -> str:
    if row.get("acc_nonideal_mean") is None:
        return "–"
    return f"{100 * row['acc_nonideal_mean']:.2f} ± {100 * row['acc_nonideal_std']:.2f}"


def save_figure(fig, path: Path) -> None:
    import io

    import matplotlib.pyplot as plt

    from xbarprune.io import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
