"""The experiment pipeline: train -> compress -> finetune -> map -> simulate -> report.

Before anything is written, :meth:`Run.preflight` validates the whole config against the data
and the model (names, method parameters and the layers they name, the mapping of every layer
and the memory of its tiles, files, one digital and one analog forward pass): a bad config
fails in seconds and leaves nothing in the run directory.

Each stage writes its output atomically in ``<run>/stages/`` together with a record of its
inputs (``<stage>.inputs.json``: the config keys it depends on, its own and those of the stages
before it, as canonical JSON). On the next run a stage is skipped when its output exists and
its record equals the current config's; otherwise it is recomputed, and so is every stage
that depends on it (as Snakemake and DVC do), and the log says why. So an interrupted run
resumes where it stopped (training resumes from its last epoch checkpoint), changing
``evaluate.trials`` re-simulates without retraining, and ``runtime`` settings recompute nothing.
The run directory also holds the latest resolved ``config.yaml``.
"""

from __future__ import annotations

import dataclasses
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
from xbarprune.compress.parts.pruning import group_sparsity, weight_sparsity
from xbarprune.config import from_dict, to_dict
from xbarprune.errors import ConfigError, XbarpruneError
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
from xbarprune.mapping.coverage import Coverage, check_tile_memory, coverage
from xbarprune.mapping.layout import GROUP_KINDS, CrossbarLayout, layer_matrices, map_model
from xbarprune.provenance import describe_nonideal
from xbarprune.training.hwa import check_unmapped
from xbarprune.training.loop import evaluate_accuracy, train
from xbarprune.training.masks import MaskSet

STAGES = ("train", "compress", "finetune", "map", "simulate", "report")
# the stages whose output each stage reads
STAGE_DEPS: dict[str, tuple[str, ...]] = {
    "train": (),
    "compress": ("train",),
    "finetune": ("compress",),
    "map": ("finetune",),
    "simulate": ("finetune",),
    "report": ("map", "simulate"),
}


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("runtime.device = 'cuda' but no CUDA device is available")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _stage_seconds(t0: float, resumed_s: float) -> dict[str, float]:
    """A stage's compute for its record: ``seconds``, what it took in all (this invocation's
    wall time since ``t0`` plus ``resumed_s``, the recorded seconds of the training epochs an
    earlier, interrupted invocation ran and this one loaded from their checkpoints), and
    ``seconds_resumed``, that earlier part."""
    return {"seconds": time.perf_counter() - t0 + resumed_s, "seconds_resumed": resumed_s}


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
        self.dir = Path(out)
        self.stages = self.dir / "stages"
        self.log = log
        self.fresh = fresh
        self.device = pick_device(cfg.runtime.device)
        if cfg.runtime.threads:
            torch.set_num_threads(cfg.runtime.threads)
        self._splits = None
        self.coverage: Coverage | None = None
        # the compute stages the last :meth:`run` recomputed or resumed (the others were up to
        # date on disk): what a bench counts as this invocation's compute
        self.recomputed: tuple[str, ...] = ()
        if self.dir.exists() and not self.dir.is_dir():
            raise ConfigError(f"--out {self.dir} exists and is not a directory")

    # ------------------------------------------------------------------ helpers
    @classmethod
    def open(cls, run_dir: str | Path, log: Callable[[str], None] = print) -> Run:
        from xbarprune.experiment.config import load_config

        p = Path(run_dir)
        if not (p / "config.yaml").is_file():
            raise ConfigError(f"{p} is not a run directory (no config.yaml)")
        return cls(load_config(p / "config.yaml"), p, log=log)

    # ------------------------------------------------------------------ validation
    def map(self, model: nn.Module) -> CrossbarLayout:
        """The dense layout of ``model`` on the configured crossbar, without the layers the
        config leaves digital (``model.digital``)."""
        return map_model(model, self.cfg.crossbar, digital=self.cfg.model.digital)

    def preflight(self) -> None:
        """Validate everything a run needs before anything is trained or written.

        Checks, each failing with one :class:`~xbarprune.errors.XbarpruneError` that names the
        config key: the data (name, root, files), the model (name, options, one forward pass on
        two training images), the mapping of every layer (unsupported layers, the memory of each
        layer's tile tensor against ``runtime.max_tile_memory_gb``, layers left digital, refused
        under ``runtime.strict``), the method (name, parameters, layer names in ``exclude`` /
        ``include`` / ``layers``), the non-ideality model, ``cost.tech``, and one analog forward
        pass of the crossbar periphery (DAC/ADC tile path) on two images.
        """
        cfg = self.cfg
        try:
            s = self.splits
        except XbarpruneError as exc:
            key = (
                "data.root" if cfg.data.root and "unknown data set" not in str(exc) else "data.name"
            )
            raise ConfigError(f"{key}: {exc}") from exc
        model = self.build_model()
        x = torch.stack([s.train[i][0] for i in range(min(2, len(s.train)))])
        model.eval()
        try:
            with torch.no_grad():
                out = model(x)
        except Exception as exc:  # a model that does not fit the data
            raise ConfigError(
                f"model.name: {cfg.model.name!r} cannot process the data's images "
                f"{tuple(x.shape[1:])}: {type(exc).__name__}: {exc}"
            ) from exc
        if not (isinstance(out, torch.Tensor) and out.dim() == 2):
            raise ConfigError(
                f"model.name: {cfg.model.name!r} must return (batch, classes) logits, got "
                f"{type(out).__name__} {tuple(getattr(out, 'shape', ()))}"
            )
        if out.shape[1] < s.num_classes:
            raise ConfigError(
                f"model.name: {cfg.model.name!r} has {out.shape[1]} outputs but the data has "
                f"{s.num_classes} classes"
            )
        check_tile_memory(model, cfg.crossbar, cfg.runtime.max_tile_memory_gb, cfg.model.digital)
        layout = self.map(model)
        self.coverage = coverage(model, layout, cfg.model.digital)
        if cfg.runtime.strict and self.coverage.digital:
            names = ", ".join(f"{d['name']} ({d['type']})" for d in self.coverage.digital)
            raise ConfigError(
                f"runtime.strict: layers stay digital: {names}; map them, or list them in "
                "model.digital to leave them digital explicitly"
            )
        method = self._method()
        check_layer_names(method.params, list(layout.layers))
        for follow in self._follow_ups():
            check_layer_names(follow.params, list(layout.layers))
        if cfg.method.name != "none" and self._val() is None:
            raise ConfigError(
                f"data.val_size = {cfg.data.val_size}: method {cfg.method.name!r} selects on a "
                "validation split carved from the training data (the test split is read by the "
                "final measurement only); allowed: a fraction in (0, 1) or a number of images"
            )
        ni = cfg.nonideal_model()
        if cfg.cost.tech:
            from xbarprune.cost import TechnologyTable

            try:
                TechnologyTable.from_yaml(cfg.cost.tech)
            except XbarpruneError as exc:
                raise ConfigError(f"cost.tech: {exc}") from exc
        # the analog periphery (DAC, per-tile ADC) once, on the dense model, without effects
        from xbarprune.analog.simulate import convert, trial_generator

        ncfg = ni.config
        assert ncfg is not None  # NonIdealityModel.__post_init__ always sets config
        probe = NonIdealityConfig(dac_bits=ncfg.dac_bits, adc_bits=ncfg.adc_bits)
        am = convert(model, layout, cfg.device, NonIdealityModel.from_config(probe))
        am.program(trial_generator(0, 0))
        with torch.no_grad():
            am(x)

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

    # ------------------------------------------------------------------ stage records
    def stage_inputs(self, stage: str) -> dict[str, Any]:
        """The config keys ``stage`` depends on, its own and its dependencies', flattened to
        dotted keys (``evaluate.trials``). ``runtime`` never enters: it does not change
        results."""
        d = self.cfg.to_dict()
        own: dict[str, Any]
        if stage == "train":
            data = dict(d["data"])
            data.pop("batch_size_eval", None)
            own = {"seed": d["seed"], "model": d["model"], "data": data, "train": d["train"]}
        elif stage == "compress":
            # finetune: the methods' own fine-tuning; without hwa, which compress never uses
            ft = {k: v for k, v in d["finetune"].items() if k != "hwa"}
            # method.then runs after the fine-tune (the finetune stage's input)
            meth = {k: v for k, v in d["method"].items() if k != "then"}
            own = {"method": meth, "crossbar": d["crossbar"], "device": d["device"],
                   "finetune": ft}  # fmt: skip
            if self._method().uses_nonideal():
                own["nonideal"] = d["nonideal"]
        elif stage == "finetune":
            own = {"finetune": d["finetune"]}
            if d["method"].get("then"):
                own["method.then"] = d["method"]["then"]
        elif stage == "map":
            own = {k: d[k] for k in ("cost", "crossbar", "device")}
        elif stage == "simulate":
            own = {k: d[k] for k in ("nonideal", "evaluate", "crossbar", "device")}
            own["data.batch_size_eval"] = d["data"]["batch_size_eval"]
        else:  # report: rebuilt every time
            own = {}
        flat = _flatten(own)
        for dep in STAGE_DEPS[stage]:
            flat.update(self.stage_inputs(dep))
        return dict(sorted(flat.items()))

    def _record_path(self, stage: str) -> Path:
        return self.stages / f"{stage}.inputs.json"

    def _read_record(self, stage: str, legacy: ExperimentConfig | None) -> dict | None:
        import json

        p = self._record_path(stage)
        if p.is_file():
            try:
                return json.loads(p.read_text())
            except (OSError, ValueError):
                return None
        if legacy is not None and self.done(stage):
            # a run made before stage records: its config.yaml is what made its stages
            old = Run(legacy, self.dir, log=self.log)
            return old.stage_inputs(stage)
        return None

    def _partial_checkpoints(self, stage: str) -> list[Path]:
        """A stage's resumable checkpoints: its own training's, and those its methods'
        trainings keep in ``stages/<stage>_parts/`` (:attr:`CompressContext.parts_dir`)."""
        parts = self.stages / f"{stage}_parts"
        return [self.stages / f"{stage}_ckpt.pt",
                *(sorted(parts.glob("*.pt")) if parts.is_dir() else [])]  # fmt: skip

    def calibration_images(self) -> torch.Tensor:
        """The images that fit the converters' full scales: the first ``batch_size_eval``
        training images (never test images: the test split is read by the measurement only)."""
        tr = self.splits.train
        n = min(self.cfg.data.batch_size_eval, len(tr))
        return torch.stack([tr[i][0] for i in range(n)])

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

    def _output(self, stage: str) -> Path:
        """The file whose presence says ``stage`` is done."""
        if stage in ("map", "simulate"):
            return self.stages / f"{stage}.json"
        if stage == "report":
            return self.dir / "report.json"
        return self._path(stage)

    def done(self, stage: str) -> bool:
        return self._output(stage).is_file()

    # ------------------------------------------------------------------ stages
    def run(self) -> dict:
        """Validate, then run every stage that is not up to date (see the module docstring)."""
        import json

        self.preflight()  # nothing is written before this passes
        legacy = None
        cfg_path = self.dir / "config.yaml"
        if self.fresh:
            shutil.rmtree(self.stages, ignore_errors=True)
        elif cfg_path.is_file() and not any(self.stages.glob("*.inputs.json")):
            from xbarprune.experiment.config import load_config

            try:
                legacy = load_config(cfg_path)
            except XbarpruneError:
                legacy = None  # an old config we can no longer read: every stage reruns
        ensure_dir(self.stages)
        atomic_write_text(cfg_path, yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
        recomputed: set[str] = set()
        for stage in STAGES:
            cur = self.stage_inputs(stage)
            old = self._read_record(stage, legacy)
            why = ""
            if stage == "report":
                why = "always rebuilt"
            elif not self.done(stage):
                why = "not done yet" if old is None or old == cur else "not done; config changed"
            elif old is None:  # done, but its record is missing or unreadable (and no legacy)
                why = "no record of the config that made it"
            elif old != cur:
                why = "config changed: " + _describe_change(old, cur)
            elif any(d in recomputed for d in STAGE_DEPS[stage]):
                why = "recomputed " + ", ".join(d for d in STAGE_DEPS[stage] if d in recomputed)
            if not why:
                self.log(f"[{stage}] up to date, skipped")
                continue
            resumable = old == cur and not self.done(stage)
            resumable &= not any(d in recomputed for d in STAGE_DEPS[stage])
            if not resumable:
                for ck in self._partial_checkpoints(stage):
                    ck.unlink(missing_ok=True)
            self.log(f"[{stage}] {why} ...")
            # the old output goes before the new record is written: a run interrupted in this
            # stage must not leave the old config's output under the new config's record
            # (the next run would take it as up to date)
            if stage != "report":
                self._output(stage).unlink(missing_ok=True)
            atomic_write_json(self._record_path(stage), cur)
            t0 = time.perf_counter()
            getattr(self, f"stage_{stage}")()
            recomputed.add(stage)
            self.log(f"[{stage}] {time.perf_counter() - t0:.1f} s")
        self.recomputed = tuple(s for s in STAGES if s in recomputed and s != "report")
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
                **_stage_seconds(t0, hist.resumed_s),
            },
        )

    def _method(self):
        mc = self.cfg.method
        cls = get_method(mc.name)
        params = from_dict(cls.Params, mc.params, "method.params")
        return cls(params)

    def _follow_ups(self) -> list:
        """The methods of ``method.then``, validated (errors name ``method.then[i]``)."""
        out = []
        for i, f in enumerate(self.cfg.method.then):
            try:
                cls = get_method(f.name)
            except ConfigError as exc:
                raise ConfigError(f"method.then[{i}].name: {exc}") from exc
            out.append(cls(from_dict(cls.Params, f.params, f"method.then[{i}].params")))
        return out

    def _compress_context(
        self, model: nn.Module, layout: CrossbarLayout, stage: str = "compress"
    ) -> CompressContext:
        """What the method sees: the model, its dense placement, training and validation data
        (never the test split), the fine-tune config without HWA, the non-idealities; its
        trainings checkpoint in ``stages/<stage>_parts/``."""
        return CompressContext(
            parts_dir=self.stages / f"{stage}_parts",
            model=model,
            layout=layout,
            device_spec=self.cfg.device,
            train_data=self.splits.train,
            val_data=self._val(),  # never the test split (preflight checks it exists)
            finetune_cfg=dataclasses.replace(self.cfg.finetune, hwa=None),  # HWA: finetune only
            device=self.device,
            seed=self.cfg.seed,
            run_dir=self.dir,
            nonideal=self.cfg.nonideal_model(),
            log=self.log,
        )

    def stage_compress(self) -> None:
        t0 = time.perf_counter()
        method = self._method()
        model, _ = self._load_model("train")
        layout = self.map(model)
        ctx = self._compress_context(model, layout)
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
                **_stage_seconds(t0, ctx.resumed_s),
                **(_architecture_entry(model, self.build_model) if res.model is not None else {}),
            },
        )

    def stage_finetune(self) -> None:
        t0 = time.perf_counter()
        model, ck = self._load_model("compress")
        masks = MaskSet(ck["masks"])
        hist: list[dict] = []
        resumed = 0.0  # seconds of its trainings that an interrupted invocation ran
        hwa = self.cfg.finetune.hwa  # hardware-aware fine-tuning (training/hwa.py)
        if hwa is not None:
            check_unmapped(hwa, {layer["name"] for layer in ck["layout"]["layers"]})
        # the method's own regulariser, if it keeps one through this last training (PRUNIX's
        # final_regularizer), built on the compressed model's dense placement
        reg = None
        if self.cfg.finetune.epochs > 0 and (len(masks) or hwa is not None):
            reg_ctx = self._compress_context(model, self.map(model), "finetune")
            reg = self._method().finetune_regularizer(reg_ctx)
            resumed += reg_ctx.resumed_s
        if hwa is not None and hwa.select_weight_noise and self.cfg.finetune.epochs > 0:
            hist, secs = self._finetune_select_noise(model, masks, ck, reg)
            resumed += secs
        elif (len(masks) or hwa is not None) and self.cfg.finetune.epochs > 0:
            h = train(
                model,
                self.splits.train,
                self.cfg.finetune,
                device=self.device,
                val_data=self._val(),
                regularizer=reg,
                masks=masks,
                checkpoint=self.stages / "finetune_ckpt.pt",
                seed=self.cfg.seed + 1,
                desc="finetune",
                log=self.log,
            )
            hist, resumed = h.epochs, resumed + h.resumed_s
        info, layout_dict = ck["info"], ck["layout"]
        if self.cfg.method.then:
            masks, info, layout_dict, secs = self._apply_follow_ups(model, masks, info, layout_dict)
            resumed += secs
        save_checkpoint(
            self._path("finetune"),
            {
                "model": model.state_dict(),
                "masks": masks.state_dict(),
                "layout": layout_dict,
                "info": info,
                "history": hist,
                **_stage_seconds(t0, resumed),
                **({"architecture": ck["architecture"]} if ck.get("architecture") else {}),
            },
        )

    def _apply_follow_ups(
        self, model: nn.Module, masks: MaskSet, info: dict, layout_dict: dict
    ) -> tuple[MaskSet, dict, dict, float]:
        """``method.then``: each method compresses the fine-tuned ``model`` in place, in order
        (its zeros stay zero: a follow-up derives its masks from the model, and the pruning
        masks are applied again after it). The placement stays the method's unless a follow-up
        gives one. ``info["then"]`` keeps each follow-up's record; a fixed mapping scale it
        asks for (``w_max``, e.g. WCT's) becomes the arm's (:func:`mapping_clip`). The last value
        is the seconds of their trainings that an interrupted invocation ran."""
        info = dict(info)
        records = []
        resumed = 0.0
        for i, follow in enumerate(self._follow_ups()):
            name = self.cfg.method.then[i].name
            self.log(f"  then {name}")
            ctx = self._compress_context(model, self.map(model), "finetune")
            res = follow.compress(ctx)
            resumed += ctx.resumed_s
            if res.model is not None:
                raise ConfigError(
                    f"method.then[{i}].name: {name!r} changes the architecture; allowed after "
                    "the fine-tune are methods that keep it (e.g. wct)"
                )
            if len(masks):
                masks = masks.combine(res.masks)
            else:
                masks = res.masks
            masks.apply(model)
            if res.layout is not None:
                layout_dict = res.layout.to_dict()
            records.append({"name": name, "info": res.info})
            if isinstance(res.info.get("w_max"), dict):
                info["w_max"] = res.info["w_max"]
        info["then"] = records
        return masks, info, layout_dict, resumed

    def _finetune_select_noise(
        self, model: nn.Module, masks: MaskSet, ck: dict, regularizer=None
    ) -> tuple[list, float]:
        """Hardware-aware fine-tuning with the weight noise chosen on the validation split
        (``finetune.hwa.select_weight_noise``, training/hwa.py): one fine-tune per candidate
        from the same model and seed (each resumable from its own checkpoint), each measured
        under ``hwa.preset`` at ``hwa.select_time`` on the validation images with
        ``select_trials`` chips whose seeds (``evaluate.seed + 10007``) are disjoint from the
        final measurement's; ``model`` ends as the best candidate's. Writes
        ``stages/hwa_selection.json``. Returns the chosen candidate's training history and the
        seconds of the candidates' trainings that an interrupted invocation ran."""
        from xbarprune.hardware.nonideal.model import preset
        from xbarprune.units import parse_time

        hwa = self.cfg.finetune.hwa
        assert hwa is not None and hwa.preset is not None  # HWAConfig checks it
        val = self._val()
        if val is None:
            raise ConfigError(
                "finetune.hwa.select_weight_noise needs a validation split; set data.val_size > 0"
            )
        layout = CrossbarLayout.from_dict(ck["layout"])
        ni = NonIdealityModel.from_config(preset(hwa.preset))
        t = parse_time(hwa.select_time)
        loader = DataLoader(val, batch_size=self.cfg.data.batch_size_eval)
        calib = self.calibration_images()
        clip = mapping_clip(ck.get("info") or {}, layout)
        start = {k: v.detach().clone() for k, v in model.state_dict().items()}
        accs: list[float] = []
        resumed = 0.0
        best: tuple[float, dict, list] | None = None
        for i, c in enumerate(hwa.select_weight_noise):
            model.load_state_dict(start)
            one = dataclasses.replace(hwa, weight_noise=c, select_weight_noise=())
            h = train(
                model,
                self.splits.train,
                dataclasses.replace(self.cfg.finetune, hwa=one),
                device=self.device,
                val_data=val,
                regularizer=regularizer,
                masks=masks,
                checkpoint=self.stages / f"finetune_ckpt_{i}.pt",
                seed=self.cfg.seed + 1,
                desc=f"finetune hwa {c:g}",
                log=self.log,
            )
            resumed += h.resumed_s
            acc = evaluate(
                model,
                loader,
                layout,
                self.cfg.device,
                ni,
                trials=hwa.select_trials,
                seed=self.cfg.evaluate.seed + 10007,
                times=[t],
                device=self.device,
                weight_clip=clip,
                calibration=calib,
            )[0].mean
            accs.append(acc)
            self.log(f"  hwa weight_noise {c:g}: validation {hwa.preset} @ {hwa.select_time} "
                     f"{acc:.4f}")  # fmt: skip
            if best is None or acc > best[0]:
                best = (acc, {k: v.detach().clone() for k, v in model.state_dict().items()},
                        h.epochs)  # fmt: skip
        assert best is not None  # >= 2 candidates
        model.load_state_dict(best[1])
        chosen = hwa.select_weight_noise[accs.index(best[0])]
        atomic_write_json(
            self.stages / "hwa_selection.json",
            {
                "split": "val",
                "preset": hwa.preset,
                "time": hwa.select_time,
                "trials": hwa.select_trials,
                "chip_seed": self.cfg.evaluate.seed + 10007,
                "candidates": list(hwa.select_weight_noise),
                "val_acc": accs,
                "chosen": chosen,
            },
        )
        self.log(f"  hwa weight_noise chosen on validation: {chosen:g}")
        return best[2], resumed

    def models(self) -> tuple[nn.Module, nn.Module, CrossbarLayout, CrossbarLayout, dict]:
        dense, _ = self._load_model("train")
        comp, ck = self._load_model("finetune")
        dense_layout = self.map(dense)
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
                    "occupancy": c.occupancy_grids(cmats[name]),
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
                "coverage": coverage(comp, cl, self.cfg.model.digital).to_dict(),
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
        calib = self.calibration_images()
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
                calibration=calib,
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
        out["nonideal_config"] = describe_nonideal(self.cfg)
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


def mapping_clip(info: dict, layout: CrossbarLayout) -> dict[str, float] | None:
    """The fixed mapping scale a method asks for (``info["w_max"]``: layer -> weight mapped to
    g_max, e.g. weight-constrained training), restricted to the layout's layers; None if none."""
    w_max = info.get("w_max")
    if not isinstance(w_max, dict):
        return None
    clip = {n: float(v) for n, v in w_max.items() if n in layout.layers}
    return clip or None


def check_layer_names(params: Any, layers: list[str]) -> None:
    """Every layer a method's parameters name (``exclude``, ``include``, ``layers``, ``keep``)
    must be a mapped layer of the model: a typo would otherwise prune the wrong layers.
    ``exclude`` may hold fnmatch patterns (:mod:`xbarprune.compress.selection`), each of which
    must match a mapped layer."""
    import dataclasses

    from xbarprune.compress.selection import unknown_names

    if not dataclasses.is_dataclass(params):
        return
    for f in dataclasses.fields(params):
        if f.name not in ("exclude", "include", "layers", "keep", "skip"):
            continue
        v = getattr(params, f.name)
        if isinstance(v, str) or not isinstance(v, list | tuple):
            continue
        strs = [n for n in v if isinstance(n, str)]
        unknown = (
            unknown_names(strs, layers)
            if f.name == "exclude"
            else [n for n in strs if n not in layers]
        )
        if unknown:
            raise ConfigError(
                f"method.params.{f.name} names unknown layer(s): {', '.join(unknown)}; the "
                f"mapped layers are: {', '.join(layers)}"
            )


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dict -> dotted keys with canonical JSON leaves (so key order never matters)."""
    import json

    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        elif v is not None:  # an unset optional key: a new optional field never invalidates
            out[key] = json.loads(json.dumps(v, sort_keys=True, default=str))
    return out


def _describe_change(old: dict[str, Any], new: dict[str, Any], most: int = 4) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k, "<unset>") != new.get(k, "<unset>"))
    parts = [f"{k}: {old.get(k, '<unset>')!r} -> {new.get(k, '<unset>')!r}" for k in keys[:most]]
    if len(keys) > most:
        parts.append(f"and {len(keys) - most} more")
    return "; ".join(parts)
