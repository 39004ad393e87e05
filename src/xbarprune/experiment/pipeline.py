"""The experiment pipeline: train -> compress -> finetune -> map -> simulate -> report.

Each stage writes its output atomically in ``<run>/stages/``; a stage whose output exists is
skipped on the next run, so an interrupted run resumes where it stopped (training resumes from
its last epoch checkpoint) and any later stage can be recomputed alone by deleting its file (or
via :meth:`Run.resimulate`, used by ``xbarprune simulate``). The run directory also holds the
resolved ``config.yaml``; a run directory made with another config is refused.
"""

from __future__ import annotations

import dataclasses
import platform
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader

from xbarprune.analog.batchnorm import BNCalibration
from xbarprune.analog.simulate import evaluate
from xbarprune.compress.base import CompressContext, get_method
from xbarprune.compress.pruning import group_sparsity, weight_sparsity
from xbarprune.config import from_dict, to_dict
from xbarprune.errors import ConfigError
from xbarprune.experiment.config import ExperimentConfig
from xbarprune.hardware.nonideal.model import NonIdealityConfig, NonIdealityModel
from xbarprune.io import (
    atomic_write_json,
    atomic_write_text,
    ensure_dir,
    load_checkpoint,
    load_state_into,
    save_checkpoint,
)
from xbarprune.mapping.layout import GROUP_KINDS, CrossbarLayout, layer_matrices, map_model
from xbarprune.training.hwa import check_unmapped
from xbarprune.training.loop import evaluate_accuracy, train
from xbarprune.training.masks import MaskSet

STAGES = ("train", "compress", "finetune", "map", "simulate", "report")


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("runtime.device = 'cuda' but no CUDA device is available")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class Run:
    """One experiment in one run directory."""

    def __init__(
        self,
        cfg: ExperimentConfig,
        out: str | Path,
        *,
        fresh: bool = False,
        log: Callable[[str], None] = print,
    ):
        self.cfg = cfg
        self.dir = ensure_dir(out)
        self.stages = ensure_dir(self.dir / "stages")
        self.log = log
        self.device = pick_device(cfg.runtime.device)
        if cfg.runtime.threads:
            torch.set_num_threads(cfg.runtime.threads)
        cfg_text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
        cfg_path = self.dir / "config.yaml"
        if fresh:
            shutil.rmtree(self.stages, ignore_errors=True)
            self.stages = ensure_dir(self.dir / "stages")
        elif cfg_path.is_file() and cfg_path.read_text() != cfg_text:
            raise ConfigError(
                f"run directory {self.dir} was made with a different config; use another "
                "--out, or --fresh to discard its stages and start over"
            )
        atomic_write_text(cfg_path, cfg_text)
        self._splits = None

    # ------------------------------------------------------------------ helpers
    @classmethod
    def open(cls, run_dir: str | Path, log: Callable[[str], None] = print) -> Run:
        from xbarprune.experiment.config import load_config

        p = Path(run_dir)
        if not (p / "config.yaml").is_file():
            raise ConfigError(f"{p} is not a run directory (no config.yaml)")
        return cls(load_config(p / "config.yaml"), p, log=log)

    @property
    def splits(self):
        if self._splits is None:
            from xbarprune.data import load_splits

            d = self.cfg.data
            self._splits = load_splits(
                d.name,
                d.root,
                val_size=d.val,
                train_subset=d.train_subset,
                test_subset=d.test_subset,
                pad_to=d.pad_to,
                seed=self.cfg.seed,
                download=d.download,
            )
        return self._splits

    def _val(self):
        v = self.splits.val
        return v if v is not None and len(v) else None

    def test_loader(self) -> DataLoader:
        return DataLoader(self.splits.test, batch_size=self.cfg.data.batch_size_eval)

    def build_model(self) -> nn.Module:
        from xbarprune.models import build_model

        s = self.splits
        m = self.cfg.model
        return build_model(
            m.name,
            num_classes=s.num_classes,
            in_channels=s.in_channels,
            image_size=s.image_size,
            width=m.width,
            seed=self.cfg.seed,
            **m.kwargs,
        )

    def _path(self, stage: str) -> Path:
        return self.stages / f"{stage}.pt"

    def _load_model(self, stage: str) -> tuple[nn.Module, dict]:
        ck = load_checkpoint(self._path(stage), map_location="cpu")
        model = self.build_model()
        if ck.get("architecture") is not None:  # physically shrunk (issue #19)
            from xbarprune.interop.architecture import apply_architecture

            apply_architecture(model, ck["architecture"])
        load_state_into(model, ck["model"], str(self._path(stage)))
        return model.to(self.device), ck

    def done(self, stage: str) -> bool:
        if stage in ("map", "simulate"):
            return (self.stages / f"{stage}.json").is_file()
        if stage == "report":
            return (self.dir / "report.json").is_file()
        return self._path(stage).is_file()

    # ------------------------------------------------------------------ stages
    def run(self) -> dict:
        timing: dict[str, float] = {}
        for stage in STAGES:
            if self.done(stage) and stage != "report":
                self.log(f"[{stage}] done earlier, skipped")
                continue
            self.log(f"[{stage}] ...")
            t0 = time.perf_counter()
            getattr(self, f"stage_{stage}")()
            timing[stage] = time.perf_counter() - t0
            self.log(f"[{stage}] {timing[stage]:.1f} s")
        import json

        return json.loads((self.dir / "report.json").read_text())

    def stage_train(self) -> None:
        t0 = time.perf_counter()
        model = self.build_model().to(self.device)
        hist = train(
            model,
            self.splits.train,
            self.cfg.train,
            device=self.device,
            val_data=self._val(),
            checkpoint=self.stages / "train_ckpt.pt",
            seed=self.cfg.seed,
            desc="train",
            log=self.log,
        )
        save_checkpoint(
            self._path("train"),
            {
                "model": model.state_dict(),
                "history": hist.epochs,
                "seconds": time.perf_counter() - t0,
            },
        )

    def _method(self):
        mc = self.cfg.method
        cls = get_method(mc.name)
        params = from_dict(cls.Params, mc.params, "method.params")
        return cls(params)

    def stage_compress(self) -> None:
        t0 = time.perf_counter()
        method = self._method()
        model, _ = self._load_model("train")
        layout = map_model(model, self.cfg.crossbar)
        ctx = CompressContext(
            model=model,
            layout=layout,
            device_spec=self.cfg.device,
            train_data=self.splits.train,
            val_data=self._val() or self.splits.test,
            finetune_cfg=dataclasses.replace(self.cfg.finetune, hwa=None),  # HWA: finetune only
            device=self.device,
            seed=self.cfg.seed,
            run_dir=self.dir,
            nonideal=self.cfg.nonideal_model(),
            log=self.log,
        )
        res = method.compress(ctx)
        model = res.model if res.model is not None else model  # physically shrunk
        res.masks.apply(model)
        save_checkpoint(
            self._path("compress"),
            {
                "model": model.state_dict(),
                "masks": res.masks.state_dict(),
                "layout": (res.layout or layout).to_dict(),
                "info": res.info,
                "seconds": time.perf_counter() - t0,
                **(_architecture_entry(model, self.build_model) if res.model is not None else {}),
            },
        )

    def stage_finetune(self) -> None:
        t0 = time.perf_counter()
        model, ck = self._load_model("compress")
        masks = MaskSet(ck["masks"])
        hist = []
        hwa = self.cfg.finetune.hwa  # hardware-aware fine-tuning (training/hwa.py)
        if hwa is not None:
            check_unmapped(hwa, {layer["name"] for layer in ck["layout"]["layers"]})
        if (len(masks) or hwa is not None) and self.cfg.finetune.epochs > 0:
            h = train(
                model,
                self.splits.train,
                self.cfg.finetune,
                device=self.device,
                val_data=self._val(),
                masks=masks,
                checkpoint=self.stages / "finetune_ckpt.pt",
                seed=self.cfg.seed + 1,
                desc="finetune",
                log=self.log,
            )
            hist = h.epochs
        save_checkpoint(
            self._path("finetune"),
            {
                "model": model.state_dict(),
                "masks": masks.state_dict(),
                "layout": ck["layout"],
                "info": ck["info"],
                "history": hist,
                "seconds": time.perf_counter() - t0,
                **({"architecture": ck["architecture"]} if ck.get("architecture") else {}),
            },
        )

    def models(self) -> tuple[nn.Module, nn.Module, CrossbarLayout, CrossbarLayout, dict]:
        dense, _ = self._load_model("train")
        comp, ck = self._load_model("finetune")
        dense_layout = map_model(dense, self.cfg.crossbar)
        comp_layout = CrossbarLayout.from_dict(ck["layout"])
        return dense, comp, dense_layout, comp_layout, ck

    def stage_map(self) -> None:
        from xbarprune.cost import TechnologyTable, count_mvms, estimate_cost

        dense, comp, dl, cl, ck = self.models()
        s = self.splits
        shape = (s.in_channels, s.image_size, s.image_size)
        mvms = count_mvms(dense, shape)
        tech = TechnologyTable.from_yaml(self.cfg.cost.tech) if self.cfg.cost.tech else None
        kw: dict[str, Any] = {
            "device": self.cfg.device,
            "input_bits": self.cfg.cost.input_bits,
            "adc_bits": self.cfg.cost.adc_bits,
        }
        if tech is not None:
            kw["tech"] = tech
        cost = estimate_cost(cl, mvms, matrices=layer_matrices(comp, cl), **kw).to_dict()
        dmats = layer_matrices(dense, dl)
        cmats = layer_matrices(comp, cl)
        layers = []
        for name in dl.layers:
            d, c = dl[name], cl[name]
            layers.append(
                {
                    "name": name,
                    "kind": d.kind,
                    "matrix_shape": list(d.matrix_shape),
                    "tiles_dense": d.dense_tiles,
                    "tiles_dense_needed": d.tiles_needed(dmats[name]),
                    "tiles_compressed": c.tiles_needed(cmats[name]),
                    "blocks": len(c.blocks),
                    "weight_sparsity": float((cmats[name] == 0).float().mean()),
                    "occupancy": c.occupancy(cmats[name]).tolist(),
                }
            )
        atomic_write_json(
            self.stages / "map.json",
            {
                "layers": layers,
                "crossbars": {
                    "dense": dl.dense_tiles,
                    "compressed": sum(r["tiles_compressed"] for r in layers),
                },
                "sparsity": {
                    "weight": weight_sparsity(comp, cl),
                    "group": {
                        k: group_sparsity(comp, _own_layout(comp, dl), k) for k in GROUP_KINDS
                    },
                },
                "cost": {
                    "dense": cost["total"]["dense"],
                    "compressed": cost["total"]["compressed"],
                    "saving": {k: cost["total"][k] for k in cost["total"] if k.endswith("saving")},
                    "settings": cost["settings"],
                    "layers": cost["layers"],
                },
                "mvms": mvms,
            },
        )

    def simulate(
        self,
        nonideal: str | NonIdealityConfig | None = None,
        times: list[float] | None = None,
        trials: int | None = None,
    ) -> dict:
        """Digital, analog-ideal and non-ideal accuracies of the dense and compressed models."""
        ev = self.cfg.evaluate
        times = ev.times_s if times is None else times
        trials = ev.trials if trials is None else trials
        ni = self.cfg.nonideal_model(nonideal)
        ideal = NonIdealityModel.from_config(NonIdealityConfig())
        dense, comp, dl, cl, ck = self.models()
        data = self.test_loader()
        out: dict[str, Any] = {"times_s": times, "trials": trials, "seed": ev.seed}
        clip = mapping_clip(ck.get("info") or {}, cl)
        if clip:
            out["weight_clip"] = clip
        bn = None
        if ev.bn_calibration is not None:
            bn = BNCalibration(ev.bn_calibration, self.splits.train, seed=ev.seed,
                               device=self.device)  # fmt: skip
            out["bn_calibration"] = to_dict(ev.bn_calibration)
        pairs = [("compressed", comp, cl, clip)]
        if ev.dense:
            pairs.insert(0, ("dense", dense, dl, None))
        for tag, model, lay, wc in pairs:
            t0 = time.perf_counter()
            digital = evaluate_accuracy(model, data, self.device)
            analog_ideal = evaluate(
                model,
                data,
                lay,
                self.cfg.device,
                ideal,
                trials=1,
                seed=ev.seed,
                device=self.device,
                weight_clip=wc,
            )[0].mean
            res = evaluate(
                model,
                data,
                lay,
                self.cfg.device,
                ni,
                trials=trials,
                seed=ev.seed,
                times=times,
                device=self.device,
                weight_clip=wc,
                bn_calibration=bn,
            )
            out[tag] = {
                "digital": digital,
                "analog_ideal": analog_ideal,
                "nonideal": [r.to_dict() for r in res],
                "seconds": time.perf_counter() - t0,
            }
            self.log(
                f"  {tag}: digital {digital:.4f}, analog ideal {analog_ideal:.4f}, non-ideal "
                + ", ".join(f"{r.mean:.4f}±{r.std:.4f}" for r in res)
            )
        return out

    def stage_simulate(self) -> None:
        out = self.simulate()
        out["nonideal_config"] = _describe_nonideal(self.cfg)
        atomic_write_json(self.stages / "simulate.json", out)

    def stage_report(self) -> None:
        from xbarprune.report import write_report

        write_report(self)


def _architecture_entry(model: nn.Module, build: Callable[[], nn.Module]) -> dict:
    """``{"architecture": ...}`` when ``model`` was physically shrunk (issue #19), else {}."""
    from xbarprune.interop.architecture import describe_architecture

    arch = describe_architecture(model, build())
    return {"architecture": arch} if arch else {}


def _own_layout(model: nn.Module, layout: CrossbarLayout) -> CrossbarLayout:
    """``layout`` when ``model`` has its shapes, else ``model``'s dense layout (a physically
    shrunk model: its group sparsity is that of its remaining groups)."""
    mods = dict(model.named_modules())
    if all(tuple(mods[n].weight.shape) == lay.weight_shape for n, lay in layout.layers.items()):
        return layout
    return map_model(model, layout.crossbar, include=list(layout.layers))


def _describe_nonideal(cfg: ExperimentConfig) -> Any:
    """The non-ideality settings that are on (disabled sections omitted), with the preset name."""
    from xbarprune.config import to_dict

    on = {k: v for k, v in to_dict(cfg.nonideal_config()).items() if v not in (None, False)}
    return {"preset": cfg.nonideal, **on} if isinstance(cfg.nonideal, str) else on


def versions() -> dict[str, str]:
    import numpy

    import xbarprune

    v = {
        "xbarprune": xbarprune.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }
    try:
        import torch_pruning

        v["torch_pruning"] = getattr(torch_pruning, "__version__", "?")
    except ImportError:
        pass
    return v


def mapping_clip(info: dict, layout: CrossbarLayout) -> dict[str, float] | None:
    """The fixed mapping scale a method asks for (``info["w_max"]``: layer -> weight mapped to
    g_max, e.g. weight-constrained training), restricted to the layout's layers; None if none."""
    w_max = info.get("w_max")
    if not isinstance(w_max, dict):
        return None
    clip = {n: float(v) for n, v in w_max.items() if n in layout.layers}
    return clip or None
