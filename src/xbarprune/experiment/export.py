"""Finished runs as Python objects (``xbarprune.load_run``), simulation of any model
(``xbarprune.simulate``) and ``xbarprune export`` (ONNX, aihwkit) (issue #19).

``load_run(path)`` reads a run directory whose ``finetune`` stage is done (the ``train`` and
``finetune`` checkpoints, physically shrunk architectures included) into a :class:`LoadedRun`.
``export_run(path, fmt, out)`` writes, atomically:

* ``onnx``: ``<out>`` (default ``<run>/export/<name>.onnx``): the compressed model with its
  masks folded in, shrunk first by Unused Path Removal (every filter/channel that is dead and
  unused goes; Torch-Pruning, :func:`~xbarprune.compress.parts.purification.remove_unused_paths`)
  unless ``shrink=False``; checked with ``onnx.checker`` and against PyTorch with onnxruntime
  (max |diff| <= 1e-5 on a test batch). Beside it ``<stem>.layout.json`` (the crossbar layout
  of the exported network, :mod:`xbarprune.interop.layout_json`) and ``<stem>.export.json``
  (checks, sizes and layer counts of the compressed vs the dense model).
* ``aihwkit``: ``<stem>.py`` (a script building the network as an aihwkit
  ``AnalogSequential`` with the translated ``InferenceRPUConfig``), ``<stem>.pt`` (its weights,
  ``weights_only``-safe), ``<stem>.rpu.yaml`` (the aihwkit settings, readable back with
  ``nonideal: {from_aihwkit: ...}``), ``<stem>.translation.json`` / ``.md`` (settings taken
  approximately and settings that do not translate), ``<stem>.export.json``.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml
from torch import Tensor, nn

from xbarprune.errors import ExportError
from xbarprune.experiment.config import ExperimentConfig
from xbarprune.hardware.nonideal.model import NonIdealityConfig, NonIdealityModel
from xbarprune.hardware.nonideal.model import preset as _preset
from xbarprune.hardware.spec import DeviceSpec
from xbarprune.io import atomic_write_json, atomic_write_text, save_checkpoint
from xbarprune.mapping.layout import CrossbarLayout, map_model

if TYPE_CHECKING:
    from torch.utils.data import DataLoader, Dataset

FORMATS: tuple[str, ...] = ("onnx", "aihwkit")


@dataclass
class LoadedRun:
    """A finished run: its configs, models, layouts and test data.

    Attributes:
        dir: the run directory.
        config: the resolved experiment config.
        dense, compressed: the trained and the compressed (fine-tuned) models, eval mode, on
            the run's device (physically shrunk when the method removed filters/channels).
        dense_layout, layout: their crossbar layouts.
        info: the method's info (``stages/compress.pt``).
        architecture: the shrunk architecture description, or None.
    """

    dir: Path
    config: ExperimentConfig
    dense: nn.Module
    compressed: nn.Module
    dense_layout: CrossbarLayout
    layout: CrossbarLayout
    info: dict = field(default_factory=dict)
    architecture: dict | None = None
    _run: Any = field(default=None, repr=False)

    @property
    def nonideal(self) -> NonIdealityConfig:
        return self.config.nonideal_config()

    @property
    def device_spec(self) -> DeviceSpec:
        return self.config.device

    @property
    def test_data(self):
        """The run's test split (a Dataset)."""
        return self._run.splits.test

    def test_batch(self, n: int = 64) -> Tensor:
        """The first ``n`` test inputs."""
        from torch.utils.data import DataLoader

        return next(iter(DataLoader(self.test_data, batch_size=n)))[0]

    @property
    def weight_clip(self) -> dict[str, float] | None:
        from xbarprune.experiment.pipeline import mapping_clip

        return mapping_clip(self.info, self.layout)


def load_run(path: str | Path) -> LoadedRun:
    """Load a finished run directory (stage ``finetune`` done) into a :class:`LoadedRun`.

    Raises :class:`ExportError` for a directory that is not a run or not finished.
    """
    from xbarprune.experiment.pipeline import Run

    p = Path(path)
    if not (p / "config.yaml").is_file():
        raise ExportError(f"{p} is not a run directory (no config.yaml)")
    run = Run.open(p, log=lambda s: None)
    for stage in ("train", "finetune"):
        if not run.done(stage):
            raise ExportError(
                f"run {p} is not finished: stage '{stage}' has no output; finish it with "
                "`xbarprune run` first"
            )
    dense, comp, dl, cl, ck = run.models()
    return LoadedRun(
        dir=p,
        config=run.cfg,
        dense=dense.eval(),
        compressed=comp.eval(),
        dense_layout=dl,
        layout=cl,
        info=ck.get("info") or {},
        architecture=ck.get("architecture"),
        _run=run,
    )


def simulate(
    model: nn.Module,
    layout: CrossbarLayout,
    *,
    data: Dataset | DataLoader,
    preset: str | None = None,
    nonideal: NonIdealityConfig | None = None,
    device_spec: DeviceSpec | None = None,
    times: Sequence[str | float] = ("1s",),
    trials: int = 10,
    seed: int = 0,
    batch_size: int = 1000,
    weight_clip: dict[str, float] | None = None,
) -> list[dict]:
    """Monte Carlo accuracy of ``model`` on ``layout`` under a non-ideality preset or config.

    ``data``: a Dataset or DataLoader of (input, label); ``times``: seconds or strings such as
    ``"1d"``; ``device_spec`` defaults to :class:`DeviceSpec()`. Returns one dict per time:
    ``time_s``, ``mean``, ``std``, ``trials``, ``per_trial`` (see
    :func:`xbarprune.analog.evaluate`, whose seeding it shares).
    """
    from torch.utils.data import DataLoader

    from xbarprune.analog.simulate import evaluate
    from xbarprune.units import parse_time

    if preset is not None and nonideal is not None:
        raise ExportError("simulate: give preset= or nonideal=, not both")
    cfg = nonideal if nonideal is not None else _preset(preset or "ideal")
    loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=batch_size)
    res = evaluate(
        model,
        loader,
        layout,
        device_spec or DeviceSpec(),
        NonIdealityModel.from_config(cfg),
        trials=trials,
        seed=seed,
        times=[parse_time(t) for t in times],
        weight_clip=weight_clip,
    )
    return [r.to_dict() for r in res]


# ----------------------------------------------------------------------------- export
def _mapped(model: nn.Module) -> int:
    return sum(isinstance(m, nn.Conv2d | nn.Linear) for m in model.modules())


def _best_packing(model: nn.Module, layout: CrossbarLayout) -> CrossbarLayout:
    from xbarprune.compress.methods.admm import best_packed_layout

    return best_packed_layout(model, layout)


def _same_shapes(model: nn.Module, layout: CrossbarLayout) -> bool:
    mods = dict(model.named_modules())
    return all(tuple(mods[n].weight.shape) == lay.weight_shape for n, lay in layout.layers.items())


def _shrunk(lr: LoadedRun, example: Tensor) -> tuple[nn.Module, CrossbarLayout, dict | None]:
    """The compressed model with unused paths removed, its layout, the removal report."""
    from xbarprune.compress.parts.purification import remove_unused_paths
    from xbarprune.errors import CompressionError

    model = copy.deepcopy(lr.compressed).cpu().eval()
    try:
        small, rep = remove_unused_paths(model, example, crossbar=lr.layout.crossbar)
    except CompressionError as exc:  # Torch-Pruning cannot trace it: export unshrunk
        return model, lr.layout, {"skipped": str(exc)}
    if _same_shapes(small, lr.layout):
        return model, lr.layout, {"removed": {}}
    names = list(lr.layout.layers)
    lay = _best_packing(small, map_model(small, lr.layout.crossbar, include=names))
    rep.pop("removed_channels", None)
    return small.eval(), lay, rep


def _stem(lr: LoadedRun, out: str | Path | None, suffix: str) -> Path:
    if out is None:
        return lr.dir / "export" / f"{lr.config.name}{suffix}"
    return Path(out)


def export_run(
    path: str | Path,
    fmt: str,
    out: str | Path | None = None,
    *,
    shrink: bool = True,
    batch: int = 64,
    tol: float = 1e-5,
) -> dict[str, Any]:
    """Export a finished run (see the module docstring). Returns the export report, whose
    ``files`` lists what was written."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; allowed: {', '.join(FORMATS)}")
    lr = load_run(path)
    x = lr.test_batch(batch).float()
    if fmt == "onnx":
        return _export_onnx(lr, _stem(lr, out, ".onnx"), x, shrink=shrink, tol=tol)
    return _export_aihwkit(lr, _stem(lr, out, "_aihwkit.py"), x, shrink=shrink, tol=tol)


def _sidecar(target: Path, suffix: str) -> Path:
    return target.with_name(target.stem + suffix)


def _export_onnx(lr: LoadedRun, target: Path, x: Tensor, *, shrink: bool, tol: float) -> dict:
    from xbarprune.interop.layout_json import layout_document
    from xbarprune.interop.onnx import check_onnx, export_onnx, to_onnx_bytes

    masked = copy.deepcopy(lr.compressed).cpu().eval()
    model, layout, upr = _shrunk(lr, x[:2]) if shrink else (masked, lr.layout, None)
    with torch.no_grad():
        shrink_diff = float((model(x) - masked(x)).abs().max())
    if shrink_diff > tol:
        raise ExportError(
            f"the shrunk model's outputs differ from the compressed model's by {shrink_diff:.3g} "
            f"(> {tol:g}); export with --no-shrink"
        )
    info = export_onnx(model, x, target, tol=tol)
    dense_bytes = to_onnx_bytes(lr.dense, x[:1])
    dense = check_onnx(dense_bytes, lr.dense, x[:2], tol=tol) | {"bytes": len(dense_bytes)}
    layout_path = _sidecar(target, ".layout.json")
    atomic_write_json(layout_path, layout_document(layout, model))
    report: dict[str, Any] = {
        "format": "onnx",
        "run": str(lr.dir),
        "files": {"onnx": str(target), "layout": str(layout_path)},
        "compressed": {
            **info,
            "mapped_layers": _mapped(model),
            "tiles": layout.tiles_needed(model),
        },
        "dense": {**dense, "mapped_layers": _mapped(lr.dense), "tiles": lr.dense_layout.n_tiles},
        "shrunk": upr is not None and bool(upr.get("removed")),
        "shrink_max_abs_diff": shrink_diff,
        "unused_path_removal": upr,
    }
    rep_path = _sidecar(target, ".export.json")
    report["files"]["report"] = str(rep_path)
    atomic_write_json(rep_path, report)
    return report


def _export_aihwkit(lr: LoadedRun, target: Path, x: Tensor, *, shrink: bool, tol: float) -> dict:
    from xbarprune.interop import aihwkit as ak
    from xbarprune.interop.architecture import describe_architecture

    masked = copy.deepcopy(lr.compressed).cpu().eval()
    model, layout, upr = _shrunk(lr, x[:2]) if shrink else (masked, lr.layout, None)
    cfg = lr.config
    tr = ak.translate_to_aihwkit(cfg.nonideal_config(), cfg.crossbar, cfg.device)
    if cfg.evaluate.bn_calibration is not None:
        tr.untranslated.append(
            {
                "setting": "evaluate.bn_calibration",
                "value": cfg.evaluate.bn_calibration.mode,
                "reason": "per-chip BatchNorm re-calibration is ours (aihwkit has none)",
            }
        )
    if lr.weight_clip:
        tr.untranslated.append(
            {
                "setting": "method w_max (weight_clip)",
                "value": lr.weight_clip,
                "reason": "a fixed weight-to-conductance scale per layer; aihwkit scales by "
                "max|W| per tile (its weight_scaling_omega is relative, not absolute)",
            }
        )
    build = {
        "name": cfg.model.name,
        "num_classes": lr._run.splits.num_classes,
        "in_channels": lr._run.splits.in_channels,
        "image_size": lr._run.splits.image_size,
        "width": cfg.model.width,
        "kwargs": dict(cfg.model.kwargs),
    }
    arch = describe_architecture(model, lr._run.build_model())
    names = list(layout.layers)
    ckpt = _sidecar(target, ".pt")
    notes_md = _sidecar(target, ".translation.md")
    files = {
        "script": str(target),
        "checkpoint": str(ckpt),
        "rpu_config": str(_sidecar(target, ".rpu.yaml")),
        "translation": str(_sidecar(target, ".translation.json")),
        "translation_md": str(notes_md),
    }
    check: dict[str, Any]
    try:  # the perfect-I/O, noise-free check (before anything is written), if aihwkit imports
        ak._import_aihwkit()
    except ExportError as exc:
        check = {"skipped": str(exc)}
    else:
        check = check_aihwkit(model, names, tr.spec, x, tol=tol)
    save_checkpoint(ckpt, ak.digital_checkpoint(model, build, arch, names))
    atomic_write_text(
        files["rpu_config"],
        "# aihwkit settings translated from the run's non-ideality config; read back with\n"
        "# nonideal: {from_aihwkit: <this file>}\n" + yaml.safe_dump(tr.spec, sort_keys=False),
    )
    atomic_write_json(files["translation"], tr.to_dict())
    atomic_write_text(notes_md, ak.translation_markdown(tr, f"{cfg.name}: aihwkit export"))
    script = ak.export_script(tr.spec, ckpt.name, f"Run '{cfg.name}'", notes_md.name)
    atomic_write_text(target, script)
    report: dict[str, Any] = {
        "format": "aihwkit",
        "run": str(lr.dir),
        "files": files,
        "shrunk": upr is not None and bool(upr.get("removed")),
        "untranslated": [r["setting"] for r in tr.untranslated],
        "approximate": [r["setting"] for r in tr.approximate],
        "check": check,
    }
    rep_path = _sidecar(target, ".export.json")
    report["files"]["report"] = str(rep_path)
    atomic_write_json(rep_path, report)
    return report


@torch.no_grad()
def check_aihwkit(
    model: nn.Module, layers: list[str], spec: dict, x: Tensor, *, tol: float = 1e-5
) -> dict:
    """aihwkit (perfect I/O, every noise scale 0, programmed and drifted to 1 day) against
    PyTorch on ``x``; :class:`ExportError` above ``tol``."""
    from xbarprune.interop import aihwkit as ak

    am = ak.to_analog_sequential(model, ak.build_rpu_config(ak.perfect_spec(spec)), layers)
    am.program_analog_weights()
    am.drift_analog_weights(86400.0)
    y = model.cpu().eval()(x)
    diff = float((am(x) - y).abs().max())
    if diff > tol:
        raise ExportError(
            f"aihwkit's noise-free, perfect-I/O output differs from PyTorch's by {diff:.3g} "
            f"(> {tol:g})"
        )
    return {"max_abs_diff": diff, "batch": int(x.shape[0]), "tolerance": tol}
