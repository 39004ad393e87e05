"""Evaluation plug-ins of the benchmark engine: a paper's own measurement of a finished arm.

The engine measures every arm the same way (ideal accuracy, crossbars, Monte Carlo accuracy
under each preset). A paper often adds a measurement of its own, e.g. the weight-robustness
sweep of Liang et al. 2018 (Fig. 12). Such a measurement is an :class:`Evaluation`: a
registered object with a strict ``params`` dataclass and a :meth:`Evaluation.measure` that
takes an :class:`EvalContext` (the arm's compressed model, its layout and the measurement
data) and returns *points*, each a mapping of its coordinates plus ``per_trial`` accuracies.

A bench lists them under ``evaluations:``::

    evaluations:
      - name: weight-robustness        # Liang et al. 2018 Fig. 12
        methods: [none, lgd-rpp]       # labels; default every method
        params: {bits: [3, 4, 5, 8], sigma: [0.0, 0.1, 0.2]}
        trials: 10                     # default: base.evaluate.trials

The engine caches each result with the arm (``<arm>/bench_eval/<label>.json``, recomputed when
its inputs change), aggregates every point over seeds (mean ± 95 % CI, Monte Carlo trials nested
per seed) and writes the table into summary.json / .md / report.html. Like the final
measurement, an evaluation reads the test split and never selects: its numbers are reported,
not used to choose anything.

Adding one: subclass :class:`Evaluation`, give it ``name``, ``params_cls`` and ``measure``, and
decorate it with :func:`register_evaluation`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from xbarprune.analog.simulate import evaluate
from xbarprune.config import from_dict
from xbarprune.errors import ConfigError
from xbarprune.hardware.nonideal.model import NonIdealityConfig, NonIdealityModel
from xbarprune.hardware.spec import DeviceSpec
from xbarprune.mapping.layout import CrossbarLayout, layer_matrices

__all__ = [
    "EVALUATIONS",
    "EvalContext",
    "Evaluation",
    "ADMMSteps",
    "CrossbarNF",
    "PrunixLevels",
    "WeightRobustness",
    "WeightRobustnessParams",
    "get_evaluation",
    "point_coordinates",
    "point_key",
    "register_evaluation",
    "robustness_model",
]


@dataclass(frozen=True)
class EvalContext:
    """What an evaluation may read of a finished arm: the compressed model and its layout, the
    device the arm was mapped with, the test data of the final measurement, training images
    for converter calibration, and the Monte Carlo settings (``trials`` chips, seeds from
    ``seed``, at ``times_s``)."""

    model: nn.Module
    layout: CrossbarLayout
    device_spec: DeviceSpec
    data: Iterable
    trials: int
    seed: int
    times_s: tuple[float, ...] = (1.0,)
    torch_device: torch.device | None = None
    calibration: torch.Tensor | None = None
    #: the arm's run directory (what its method kept there, e.g. ADMM's per-step models)
    run_dir: Path | None = None
    #: a fresh model of the arm's architecture (before any physical pruning)
    build_model: Callable[[], nn.Module] | None = None
    #: the dense model's layout: the reference of crossbar savings
    reference_layout: CrossbarLayout | None = None
    #: the registered name of the arm's compression method
    method_name: str | None = None
    #: the arm's method parameters (as in its config)
    method_params: dict[str, Any] | None = None
    #: what the method recorded of its run (the compressed checkpoint's ``info``)
    method_info: dict[str, Any] | None = None
    #: the non-idealities the arm was compressed under (its config's ``nonideal``: the
    #: bench's first preset), e.g. for the simulator's weight-level grid
    nonideal: NonIdealityModel | None = None
    #: the fixed mapping scale the arm is simulated with (layer -> w_max, e.g. WCT's), or None
    weight_clip: dict[str, float] | None = None

    def model_before_finetune(self) -> nn.Module | None:
        """The arm's compressed model as its method left it, before the pipeline's final
        fine-tune (``<run>/stages/compress.pt``), or None when the run keeps none."""
        from xbarprune.io import load_checkpoint, load_state_into

        comp = self.run_dir / "stages" / "compress.pt" if self.run_dir else None
        if comp is None or not comp.is_file() or self.build_model is None:
            return None
        model = self.build_model()
        load_state_into(model, load_checkpoint(comp)["model"], str(comp))
        return model


class Evaluation(ABC):
    """A registered measurement of a finished arm (see the module docstring)."""

    name: ClassVar[str]
    #: the strict dataclass of its parameters (unknown keys and out-of-range values refused)
    params_cls: ClassVar[type]
    #: what a point measures, for the summary's heading
    description: ClassVar[str] = ""
    #: whether :meth:`measure` reads ``ctx.nonideal`` (then a change of it measures again)
    reads_nonideal: ClassVar[bool] = False

    def params(self, raw: dict[str, Any] | None, where: str) -> Any:
        """``raw`` validated into :attr:`params_cls` (errors name ``where``)."""
        return from_dict(self.params_cls, dict(raw or {}), where)

    @abstractmethod
    def measure(self, ctx: EvalContext, params: Any) -> list[dict[str, Any]]:
        """Points: each ``{<coordinate>: value, ..., "per_trial": [accuracy, ...]}``, and
        optionally ``"metrics": {name: number}`` (per-seed figures averaged beside it)."""


EVALUATIONS: dict[str, type[Evaluation]] = {}


def register_evaluation(cls: type[Evaluation]) -> type[Evaluation]:
    """Class decorator: make ``cls`` available to ``evaluations: [{name: cls.name}]``."""
    if cls.name in EVALUATIONS and EVALUATIONS[cls.name] is not cls:
        raise ValueError(f"evaluation {cls.name!r} is registered twice")
    EVALUATIONS[cls.name] = cls
    return cls


def get_evaluation(name: str, where: str = "evaluations") -> Evaluation:
    """The registered evaluation ``name``; a clear error naming the known ones otherwise."""
    if name not in EVALUATIONS:
        raise ConfigError(
            f"{where}.name = {name!r}; allowed: {', '.join(sorted(EVALUATIONS)) or '(none)'}"
        )
    return EVALUATIONS[name]()


# ---------------------------------------------------------------------------- Liang Fig. 12
def robustness_model(bits: int, sigma: float) -> tuple[DeviceSpec, NonIdealityModel]:
    """Fig. 12 of Liang et al. 2018 through the simulator: b-bit weights, then ``w * exp(θ)``,
    θ ~ N(0, σ²).

    A differential pair with ``g_min = 0`` stores ``|w|`` on one device and 0 on the other, so
    per-device quantisation to ``2**(b-1)`` levels gives ``2**b - 1`` signed weight levels
    (symmetric, per layer, full scale = max |w|), and log-normal programming variation of the
    used devices is exactly ``w * exp(θ)`` (zeros stay zero).
    """
    levels = max(2 ** (bits - 1), 2)
    dev = DeviceSpec(g_min=0.0, g_max=1e-4, levels=levels)
    cfg: dict[str, Any] = {"quantization": {"levels": levels}}
    if sigma > 0:
        cfg["variation"] = {"sigma": sigma, "mode": "lognormal"}
    return dev, NonIdealityModel.from_config(from_dict(NonIdealityConfig, cfg, "robustness"))


@dataclass(frozen=True)
class WeightRobustnessParams:
    """The grid of Liang et al. 2018 Fig. 12: weight bits × variation σ (paper: 3–8 bits,
    σ up to 0.3)."""

    bits: tuple[int, ...] = (3, 4, 5, 8)
    sigma: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.3)

    def __post_init__(self) -> None:
        if not self.bits or not self.sigma:
            raise ConfigError("params.bits / params.sigma: at least one value each")
        for b in self.bits:
            if isinstance(b, bool) or not isinstance(b, int) or not 2 <= b <= 16:
                raise ConfigError(f"params.bits = {b!r}; allowed: integers in [2, 16]")
        for s in self.sigma:
            if isinstance(s, bool) or not isinstance(s, int | float) or not 0 <= s <= 2:
                raise ConfigError(f"params.sigma = {s!r}; allowed: numbers in [0, 2]")


@register_evaluation
class WeightRobustness(Evaluation):
    """Liang et al. 2018, Fig. 12: accuracy of the pruned model with b-bit weights under
    log-normal weight variation ``w * exp(θ)``, on every (bits, σ) of the grid.

    All points use the same chip seeds (``ctx.seed``), so they are paired across the grid. A
    point without variation (σ = 0) is deterministic and measured once.
    """

    name = "weight-robustness"
    params_cls = WeightRobustnessParams
    description = "Liang et al. 2018 Fig. 12: b-bit weights, then w·exp(θ), θ ~ N(0, σ²)"

    def measure(self, ctx: EvalContext, params: WeightRobustnessParams) -> list[dict[str, Any]]:
        out = []
        for bits in params.bits:
            for sigma in params.sigma:
                dev, ni = robustness_model(int(bits), float(sigma))
                res = evaluate(
                    ctx.model,
                    ctx.data,
                    ctx.layout,
                    dev,
                    ni,
                    trials=ctx.trials if sigma > 0 else 1,
                    seed=ctx.seed,
                    times=(ctx.times_s[0],),
                    device=ctx.torch_device,
                    calibration=ctx.calibration,
                )[0]
                out.append({"bits": int(bits), "sigma": float(sigma),
                            "per_trial": list(res.per_trial)})  # fmt: skip
        return out


# ---------------------------------------------------------------------------- Ma et al. Table 1
@dataclass(frozen=True)
class ADMMStepsParams:
    """No parameters: the steps are those the arm's ``admm`` run kept."""


@register_evaluation
class ADMMSteps(Evaluation):
    """Ma et al. 2020 (ASP-DAC), Table 1 step by step: the model after ADMM pruning, after
    Network Purification + unused path removal and after distillation quantisation, each with
    its ideal (digital) test accuracy, conv and total weight compression and the crossbars of
    its best packed layout against the dense layout. The ``admm`` method keeps these models in
    ``<run>/stages/admm_steps/`` (:func:`xbarprune.compress.methods.admm.stage_saver`); an arm
    of another method has no steps and gives no points."""

    name = "admm-steps"
    params_cls = ADMMStepsParams
    description = "Ma et al. 2020 Table 1: the model after each step of ADMM (ideal accuracy)"

    def measure(self, ctx: EvalContext, params: ADMMStepsParams) -> list[dict[str, Any]]:
        from xbarprune.compress.methods.admm import (
            STAGES_DIR,
            best_packed_layout,
            compression_stats,
        )
        from xbarprune.compress.parts.purification import remove_unused_paths
        from xbarprune.cost.model import estimate_model_cost
        from xbarprune.io import load_checkpoint, load_state_into
        from xbarprune.training.loop import evaluate_accuracy

        if ctx.run_dir is None or ctx.build_model is None or ctx.reference_layout is None:
            raise ConfigError("admm-steps needs the arm's run directory, model and dense layout")
        files = sorted((ctx.run_dir / "stages" / STAGES_DIR).glob("*.pt"),
                       key=lambda f: int(f.name.split("_", 1)[0]))  # fmt: skip
        if not files and ctx.method_name == "admm":
            raise ConfigError(
                f"evaluations admm-steps: the arm in {ctx.run_dir} has no saved ADMM steps (it "
                "was compressed before `admm` kept them); remove its stages/compress.pt to "
                "recompute it"
            )
        ref = ctx.reference_layout
        dense_tiles = ref.dense_tiles  # as the engine's rows count the dense model
        if ctx.calibration is None:
            raise ConfigError("admm-steps needs training images (the cost model's input shape)")
        shape = tuple(ctx.calibration.shape[1:])
        out: list[dict[str, Any]] = []
        model = None
        for f in files:
            ck = load_checkpoint(f)
            model = ctx.build_model()
            load_state_into(model, ck["model"], str(f))
            model.eval()
            layout = best_packed_layout(model, ref)
            tiles = layout.tiles_needed(model)  # tiles holding a non-zero weight
            comp = compression_stats(model, ref)
            acc = evaluate_accuracy(model, ctx.data, ctx.torch_device or "cpu")
            # ISLPED 2019 Table I counts crossbar area; the paper prunes CONV layers only, so
            # the conv columns count those (the core cost model, packed vs dense layout)
            cost = estimate_model_cost(model, layout, shape, device=ctx.device_spec)
            conv = [c for c in cost.layers if c.kind == "conv"]
            conv_dense = sum(ref[c.name].dense_tiles for c in conv)
            mats = layer_matrices(model, layout)
            conv_tiles = sum(layout[c.name].tiles_needed(mats[c.name]) for c in conv)
            area_d = sum(c.dense.area_mm2 for c in conv)
            area_c = sum(c.compressed.area_mm2 for c in conv)
            out.append(
                {
                    "step": str(ck["tag"]),
                    "per_trial": [acc],
                    "metrics": {
                        "compression_conv": float(comp["compression_conv"]),
                        "compression_total": float(comp["compression_total"]),
                        "crossbars": float(tiles),
                        "crossbar_saving": 1.0 - tiles / dense_tiles,
                        "crossbars_conv": float(conv_tiles),
                        "crossbars_conv_dense": float(conv_dense),
                        "crossbar_saving_conv": 1.0 - conv_tiles / conv_dense
                        if conv_dense
                        else 0.0,
                        "area_saving": float(cost.area_saving),
                        "area_saving_conv": 1.0 - area_c / area_d if area_d else 0.0,
                    },
                }
            )
        if model is not None:
            # Unused Path Removal made physical (Torch-Pruning) on the last step's model: the
            # smaller network must compute the masked one's outputs
            example = ctx.calibration[:16].to(ctx.torch_device or "cpu")
            small, upr = remove_unused_paths(model, example, crossbar=ref.crossbar)
            small.eval()
            with torch.no_grad():
                diff = (small(example) - model(example)).abs().max().item()
            out[-1]["metrics"].update(
                upr_max_output_difference=float(diff),
                upr_crossbars_physical=float(upr["tiles"]["removed_dense"]),
                upr_weights_after=float(upr["weights_after"]),
            )
        return out


# ---------------------------------------------------------------------------- Liang et al.
@dataclass(frozen=True)
class LiangLayersParams:
    """No parameters: the figures are those the arm's ``liang`` run recorded."""


@register_evaluation
class LiangLayers(Evaluation):
    """Liang et al. 2018 (Table III, Sec. III-E): the arm's *total* crossbars, i.e. compute
    crossbars plus the input-buffer and output-reduce crossbars pruning cannot remove (our
    model, :func:`~xbarprune.compress.methods.liang.peripheral_crossbars`), the accuracy
    before the fine-tune, and per pruned layer its ratio, the Sec. III-E search's initial ratio
    and validation drop at the final ratio (what the method read on the validation split), and
    its crossbars dense → pruned. Points: ``{"layer": "(network)"}`` with the arm's digital
    test accuracy after and ``before_finetune`` its accuracy before the fine-tune, then one
    per layer. Arms of other methods give the network point only."""

    name = "liang-layers"
    params_cls = LiangLayersParams
    description = "Liang et al. 2018: total crossbars (with buffers) and the per-layer search"

    def measure(self, ctx: EvalContext, params: LiangLayersParams) -> list[dict[str, Any]]:
        from xbarprune.compress.methods.liang import peripheral_crossbars
        from xbarprune.training.loop import evaluate_accuracy

        ref = ctx.reference_layout
        if ref is None:
            raise ConfigError("liang-layers needs the dense layout")
        dev = ctx.torch_device or "cpu"
        acc = evaluate_accuracy(ctx.model, ctx.data, dev)
        periph = peripheral_crossbars(ref)
        tiles = ctx.layout.tiles_needed(ctx.model)
        metrics: dict[str, float] = {
            "crossbars": float(tiles),
            "crossbars_total": float(tiles + periph),
            "crossbars_total_dense": float(ref.dense_tiles + periph),
            "total_crossbar_saving": 1.0 - (tiles + periph) / (ref.dense_tiles + periph),
        }
        points: list[dict[str, Any]] = [
            {"layer": "(network)", "stage": "fine-tuned", "per_trial": [acc], "metrics": metrics}
        ]
        before = ctx.model_before_finetune()
        if before is not None:
            points.append({"layer": "(network)", "stage": "before fine-tune",
                           "per_trial": [evaluate_accuracy(before, ctx.data, dev)]})  # fmt: skip
        if ctx.method_name != "liang":
            return points
        info = ctx.method_info or {}
        for name, rec in (info.get("layers") or {}).items():
            m: dict[str, float] = {
                "ratio": float(rec["ratio"]),
                "crossbars_dense": float(rec["tiles_dense"]),
                "crossbars": float(rec["tiles"]),
            }
            if "initial_ratio" in rec:  # searched (Sec. III-E), not a fixed ratio
                m["initial_ratio"] = float(rec["initial_ratio"])
                final = [c for c in rec.get("raise_path") or rec.get("sweep") or []
                         if c["ratio"] == rec["ratio"]]  # fmt: skip
                if final:
                    m["val_drop"] = float(final[-1]["drop"])
            points.append({"layer": name, "stage": "fine-tuned", "per_trial": [acc],
                           "metrics": m})  # fmt: skip
        return points


# ---------------------------------------------------------------------------- PRUNIX
@dataclass(frozen=True)
class PrunixLevelsParams:
    """``tol``: a weight is on a level within ``tol`` times the grid step (the diagnostic of
    :func:`~xbarprune.compress.parts.sawtooth.on_level_fraction`)."""

    tol: float = 0.05

    def __post_init__(self) -> None:
        if not 0 < self.tol <= 0.5:
            raise ConfigError(
                f"evaluations[prunix-levels].params.tol = {self.tol}; allowed: (0, 0.5]"
            )


@register_evaluation
class PrunixLevels(Evaluation):
    """PRUNIX (Alshaarawy et al. 2022, Sec. III-A): how well the weights sit on the
    simulator's programmable levels (the group sawtooth's grid: device levels ** cells per
    weight, the differential encoding and the preset's quantisation levels, each layer in units
    of its own w_max at that moment) before and after the pipeline's final fine-tune, i.e. what
    that last training does to what the regulariser built (issue #21 item 8;
    :func:`~xbarprune.compress.parts.sawtooth.grid_diagnostics`). The network point:
    ``per_trial`` the digital test accuracy; ``metrics`` the on-level fraction, the same among
    weights nearest a non-zero level and the relative quantisation error, each ``_before_final``
    (the compressed model) and ``_after_final`` (the measured model), the share of weights the
    preset's aged window clips, and for ``prunix`` arms what the method recorded
    (``on_level_before_pruning``, the validation accuracy after the regularised training, the
    final weight sparsity). One point per mapped layer: its sparsity (``prunix`` arms) and its
    w_max after / before the final fine-tune."""

    name = "prunix-levels"
    params_cls = PrunixLevelsParams
    description = "PRUNIX: share of weights on the programmed levels around the final fine-tune"
    reads_nonideal = True

    def measure(self, ctx: EvalContext, params: PrunixLevelsParams) -> list[dict[str, Any]]:
        from xbarprune.compress.methods.prunix import level_grid
        from xbarprune.compress.parts.sawtooth import grid_diagnostics
        from xbarprune.training.loop import evaluate_accuracy

        n_levels, units = level_grid(ctx.layout.crossbar, ctx.device_spec, ctx.nonideal)
        aged_top = None
        aging = ctx.nonideal.config.aging if ctx.nonideal and ctx.nonideal.config else None
        if aging is not None:  # the aged window's top weight / w_max (differential)
            g_lo, g_hi = aging.window(ctx.device_spec)
            aged_top = (g_hi - g_lo) / ctx.device_spec.g_range
        dev = ctx.torch_device or "cpu"

        def diag(model: nn.Module) -> dict[str, Any]:
            return grid_diagnostics(model, ctx.layout, n_levels, units, aged_top=aged_top,
                                    tol=params.tol)  # fmt: skip

        after = diag(ctx.model)
        metrics: dict[str, float] = {
            "on_level_after_final": after["on_level"],
            "on_nonzero_level_after_final": after["on_nonzero_level"],
            "quant_rel_err_after_final": after["quant_rel_err"],
        }
        if after["aging_clipped_share"] is not None:
            metrics["aging_clipped_share"] = after["aging_clipped_share"]
        before = None
        model = ctx.model_before_finetune()
        if model is not None:
            before = diag(model)
            metrics.update(on_level_before_final=before["on_level"],
                           on_nonzero_level_before_final=before["on_nonzero_level"],
                           quant_rel_err_before_final=before["quant_rel_err"])  # fmt: skip
        info = ctx.method_info or {}
        rounds = (info.get("rounds") or []) if ctx.method_name == "prunix" else []
        if ctx.method_name == "prunix":
            for key, name in (
                ("on_level_fraction_before_pruning", "on_level_before_pruning"),
                ("val_acc_after_regularization", "val_acc_after_regularization"),
            ):
                if info.get(key) is not None:
                    metrics[name] = float(info[key])  # fmt: skip
            if rounds:
                metrics["weight_sparsity"] = float(rounds[-1]["weight_sparsity"])
        acc = evaluate_accuracy(ctx.model, ctx.data, dev)
        points: list[dict[str, Any]] = [
            {"layer": "(network)", "per_trial": [acc], "metrics": metrics}
        ]
        sparsity = (rounds[-1].get("layer_sparsity") or {}) if rounds else {}
        for name in ctx.layout.layers:
            m: dict[str, float] = {}
            if name in sparsity:
                m["sparsity"] = float(sparsity[name])
            if before is not None and ctx.method_name != "none":  # the final fine-tune's effect
                m["w_max_after_over_before"] = after["w_max"][name] / before["w_max"][name]
            if m:
                points.append({"layer": name, "per_trial": [acc], "metrics": m})
        return points


# ---------------------------------------------------------------------------- Bhattacharjee
@dataclass(frozen=True)
class CrossbarNFParams:
    """``variants``: the column rearrangements to choose from per layer (empty: only the
    non-ideality factor of the placement as mapped); ``tau``: the low-conductance threshold;
    ``calib``: training images whose layer inputs drive the NF; ``max_vectors`` per layer."""

    variants: tuple[str, ...] = ()
    tau: float = 0.25
    calib: int = 32
    max_vectors: int = 128

    def __post_init__(self) -> None:
        from xbarprune.mapping.rearrange import VARIANTS

        where = "evaluations[crossbar-nf].params"
        for v in self.variants:
            if v not in VARIANTS or v == "none":
                raise ConfigError(f"{where}.variants: {v!r}; allowed: "
                                  f"{', '.join(x for x in VARIANTS if x != 'none')}")  # fmt: skip
        if not 0 < self.tau < 1:
            raise ConfigError(f"{where}.tau = {self.tau}; allowed: (0, 1)")
        if self.calib < 1 or self.max_vectors < 1:
            raise ConfigError(f"{where}.calib / max_vectors: allowed: >= 1")


@register_evaluation
class CrossbarNF(Evaluation):
    """Bhattacharjee, Bhatnagar, Panda (DATE 2022): the non-ideality factor of the arm's
    crossbars, NF = (I_ideal - I_nonideal) / I_ideal per used column (Eq. 1) on the layer
    inputs of ``calib`` training images under the arm's preset (``ctx.nonideal``), and the
    share of low-conductance cells (< tau of the range), as mapped; with ``variants``, also
    the paper's column rearrangement, chosen per layer by the lowest mean NF on those
    training images (never test data), measured like the arm (same chips: ``trials`` at each
    time, the arm's weight clip). Points: ``placement`` "as mapped" (``per_trial``: the digital
    test accuracy) and, with variants, "rearranged" per ``time`` (``per_trial``: the chips'
    accuracies); ``metrics`` the NF figures and, rearranged, how many layers chose each
    variant."""

    name = "crossbar-nf"
    params_cls = CrossbarNFParams
    description = "Bhattacharjee et al. 2022: non-ideality factor, and column rearrangement"
    reads_nonideal = True

    def measure(self, ctx: EvalContext, params: CrossbarNFParams) -> list[dict[str, Any]]:
        from xbarprune.analog.parasitics import choose_rearrangement, nonideality_factor, summarize
        from xbarprune.training.loop import evaluate_accuracy
        from xbarprune.units import format_time

        if ctx.nonideal is None or ctx.calibration is None:
            raise ConfigError("crossbar-nf needs the arm's non-idealities and training images")
        ni = ctx.nonideal
        dev = ctx.torch_device or "cpu"
        batch = ctx.calibration[: params.calib].to(dev)
        ctx.model.eval()

        def nf(layout: CrossbarLayout) -> dict[str, float]:
            per = nonideality_factor(ctx.model, layout, ctx.device_spec, ni, batch,
                                     weight_clip=ctx.weight_clip, tau=params.tau,
                                     max_vectors=params.max_vectors, seed=ctx.seed)  # fmt: skip
            return {k: float(v) for k, v in summarize(per).items() if k != "columns"}

        acc = evaluate_accuracy(ctx.model, ctx.data, dev)
        points: list[dict[str, Any]] = [
            {
                "placement": "as mapped",
                "time": "-",
                "per_trial": [acc],
                "metrics": nf(ctx.layout),
            }  # fmt: skip
        ]
        if not params.variants:
            return points
        layout, report = choose_rearrangement(
            ctx.model, ctx.layout, ctx.device_spec, ctx.nonideal, batch,
            variants=tuple(params.variants), weight_clip=ctx.weight_clip,
            max_vectors=params.max_vectors, seed=ctx.seed,
        )  # fmt: skip
        metrics = nf(layout)
        for rec in report.values():
            key = f"layers:{rec['chosen']}"
            metrics[key] = metrics.get(key, 0.0) + 1.0
        res = evaluate(ctx.model, ctx.data, layout, ctx.device_spec, ctx.nonideal,
                       trials=ctx.trials, seed=ctx.seed, times=ctx.times_s, device=dev,
                       weight_clip=ctx.weight_clip, calibration=ctx.calibration)  # fmt: skip
        for t, r in zip(ctx.times_s, res, strict=True):
            points.append({"placement": "rearranged", "time": format_time(t),
                           "per_trial": list(r.per_trial), "metrics": metrics})  # fmt: skip
        return points


# ---------------------------------------------------------------------------- TraNNsformer
@dataclass(frozen=True)
class TraNNsformerCountingParams:
    """Peripheral energy shares φ of the dense design at which energy savings are given (the
    study's sensitivity: 0.25 / 0.37 / 0.5)."""

    phis: tuple[float, ...] = (0.25, 0.37, 0.5)

    def __post_init__(self) -> None:
        if not self.phis:
            raise ConfigError("params.phis: at least one peripheral share")
        for v in self.phis:
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < 1:
                raise ConfigError(f"params.phis = {v!r}; allowed: numbers in (0, 1)")


@register_evaluation
class TraNNsformerCounting(Evaluation):
    """Ankit et al. 2017 (ICCAD): the arm's TraNNsformer clusters counted two ways, with area
    and energy from the core cost model against the dense layout of the same size and
    counting:

    - ``crossbar``: the arm's own X x X layout (the hardware it is mapped on);
    - ``code-4x4``: the same clusters counted in the 4 x 4 tiles of the authors'
      ``get_hardware_params.m`` (every cluster alone, unclustered weights in greedy windows).

    Energy savings are given at each peripheral share φ of the dense design
    (:func:`~xbarprune.cost.energy_with_peripheral_share`) and by the paper's parametric model
    ``1 − ((1 − φ)·nnz/N + φ·crossbars/crossbars_dense)``. The accuracy of a point is the
    arm's digital test accuracy (counting does not change the weights). Arms of other methods
    give no points; ``mode: dense`` / ``prune_only`` arms are counted compacted, as the code
    counts them."""

    name = "trannsformer-counting"
    params_cls = TraNNsformerCountingParams
    description = "Ankit et al. 2017: crossbars, area and energy under X x X and the code's 4 x 4"

    def measure(self, ctx: EvalContext, params: TraNNsformerCountingParams) -> list[dict[str, Any]]:
        from xbarprune.compress.methods.trannsformer import (
            TraNNsformerParams,
            TraNNsformerRun,
            trannsformer_layout,
        )
        from xbarprune.cost import count_mvms, energy_with_peripheral_share, estimate_cost
        from xbarprune.hardware.spec import CrossbarSpec
        from xbarprune.training.loop import evaluate_accuracy

        if ctx.method_name != "trannsformer":
            return []
        info = ctx.method_info or {}
        if "clusters" not in info or ctx.calibration is None:
            raise ConfigError(
                "trannsformer-counting needs the arm's TraNNsformer clusters (its compressed "
                "checkpoint's info) and training images"
            )
        p = from_dict(TraNNsformerParams, dict(ctx.method_params or {}), "method.params")
        run = TraNNsformerRun.from_info(ctx.model, info, p)
        acc = evaluate_accuracy(ctx.model, ctx.data, ctx.torch_device or "cpu")
        shape = (1, *tuple(ctx.calibration.shape[1:]))
        x = ctx.layout.crossbar
        out = []
        for counting in ("crossbar", "code-4x4"):
            if counting == "crossbar":
                layout = ctx.layout
            else:  # the code's count: every cluster alone, greedy windows, 4 x 4 weights
                per_weight = x.cols // x.weights_per_row  # columns of one weight
                spec = CrossbarSpec(rows=4, cols=4 * per_weight, encoding=x.encoding,
                                    cells_per_weight=x.cells_per_weight)  # fmt: skip
                um = p.unclustered
                layout, _ = trannsformer_layout(
                    ctx.model, run, spec, pack=False,
                    unclustered="greedy" if um == "pack" else um,
                )  # fmt: skip
            mats = layer_matrices(ctx.model, layout)
            mvms = count_mvms(ctx.model, shape, layers=list(layout.layers))
            cost = estimate_cost(layout, mvms, matrices=mats, device=ctx.device_spec)
            nnz = sum(int((w != 0).sum()) for w in mats.values())
            tot = sum(w.numel() for w in mats.values())
            ratio = cost.compressed.tiles_needed / cost.dense.tiles_needed
            metrics: dict[str, float] = {
                "crossbars": float(cost.compressed.tiles_needed),
                "crossbars_dense": float(cost.dense.tiles_needed),
                "crossbar_saving": 1.0 - ratio,
                "area_saving": float(cost.area_saving),
                "weight_sparsity": 1.0 - nnz / tot,
            }
            for phi in params.phis:
                metrics[f"energy_saving@phi={phi:g}"] = float(
                    energy_with_peripheral_share(cost, float(phi)).energy_saving
                )
                metrics[f"energy_saving_paper_model@phi={phi:g}"] = 1.0 - (
                    (1 - phi) * nnz / tot + phi * ratio
                )
            out.append({"counting": counting, "per_trial": [acc], "metrics": metrics})
        return out


def point_key(point: dict[str, Any]) -> str:
    """The identity of a point across seeds and arms: its coordinates as sorted JSON (what it
    measured, ``per_trial`` and ``metrics``, left out)."""
    import json

    return json.dumps(
        {k: v for k, v in point.items() if k not in ("per_trial", "metrics")}, sort_keys=True
    )


def point_coordinates(points: Sequence[dict[str, Any]]) -> list[str]:
    """The coordinate names of an evaluation's points (every key but ``per_trial`` and
    ``metrics``), in order."""
    keys: dict[str, None] = {}
    for p in points:
        for k in p:
            if k not in ("per_trial", "metrics"):
                keys.setdefault(k, None)
    return list(keys)
