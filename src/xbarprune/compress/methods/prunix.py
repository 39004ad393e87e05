"""PRUNIX (Alshaarawy, Amirsoleimani & Genov, "PRUNIX: Non-Ideality Aware Convolutional Neural
Network Pruning for Memristive Accelerators", ISCAS 2022, arXiv 2202.01758).

The method, as reconstructed in shared/papers/prunix.md (only the abstract is public; see
docs/methods/prunix.md for every choice):

1. regularised training from the dense model for ``reg_epochs`` epochs with the Group Sawtooth
   regulariser (:mod:`.sawtooth`) on crossbar groups (tile columns by default);
2. structured pruning of those groups to ``sparsity`` of the weights with the Adaptive Pruning
   Algorithm (:mod:`.apa`): ``rounds`` rounds of sensitivity analysis (through the analog
   simulator with the configured non-idealities), allocation and pruning, each followed by
   ``ft_epochs`` of fine-tuning with masks fixed and the regulariser still active.

Every baseline of the paper's comparison is the same method with other settings: regulariser
``none | l1 | l2 | group_lasso | group_sawtooth`` and pruner ``apa | uniform | global``, on the
same groups and schedule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch.utils.data import DataLoader, Subset

from xbarprune.analog.simulate import evaluate
from xbarprune.compress.base import CompressContext, CompressResult, Method, plain_info, register
from xbarprune.compress.methods.magnitude import cubic_schedule
from xbarprune.compress.parts.apa import (
    DEFAULT_GRID,
    allocate,
    layer_sparsity,
    measure_sensitivity,
    prune_to,
)
from xbarprune.compress.parts.pruning import magnitude_masks, weight_sparsity
from xbarprune.compress.parts.regularizers import make_regularizer
from xbarprune.compress.parts.sawtooth import GroupSawtooth, on_level_fraction, simulator_grid
from xbarprune.compress.selection import LayerSelection
from xbarprune.errors import SpecError, check_range
from xbarprune.io import atomic_write_json
from xbarprune.mapping.layout import GROUP_KINDS
from xbarprune.mapping.permute import pack_layout
from xbarprune.training.masks import MaskSet

Regularizer = Literal["none", "l1", "l2", "group_lasso", "group_sawtooth"]
Pruner = Literal["apa", "uniform", "global"]


@dataclass(frozen=True)
class PrunixParams:
    """Config of ``method: {name: prunix, params: ...}`` (defaults = the PRUNIX arm)."""

    regularizer: Regularizer = "group_sawtooth"
    lam: float = 0.05
    warmup: float = 0.3
    reg_epochs: int = 3
    kind: str = "tile_column"
    pruner: Pruner = "apa"
    sparsity: float = 0.85
    rounds: int = 3
    ft_epochs: int = 1
    grid: tuple[float, ...] = DEFAULT_GRID
    s_max: float = 0.97
    step: float = 0.01
    sensitivity: Literal["ideal", "nonideal"] = "nonideal"
    sens_trials: int = 3
    sens_samples: int = 1000
    sens_time: float = 86400.0
    keep_regularizer: bool = True
    #: keep the regulariser through the pipeline's final fine-tune too (the ``finetune`` stage
    #: after the rounds), so the sawtooth's weights stay on the programmed levels up to
    #: programming (issue #21 item 8); false: that fine-tune is plain task loss (the published
    #: comparison's design)
    final_regularizer: bool = False
    pack: bool = True
    exclude: tuple[str, ...] = field(default_factory=tuple)

    @property
    def layer_selection(self) -> LayerSelection:
        """The layers this method prunes (:mod:`xbarprune.compress.selection`)."""
        return LayerSelection(exclude=tuple(self.exclude))

    def __post_init__(self) -> None:
        check_range("method.params.lam", self.lam, low=0.0)
        check_range("method.params.warmup", self.warmup, low=0.0, high=1.0)
        check_range("method.params.reg_epochs", self.reg_epochs, low=0)
        check_range("method.params.sparsity", self.sparsity, low=0.0, high=1.0, high_open=True)
        check_range("method.params.rounds", self.rounds, low=1)
        check_range("method.params.ft_epochs", self.ft_epochs, low=0)
        check_range("method.params.s_max", self.s_max, low=0.0, high=1.0, high_open=True)
        check_range("method.params.sens_trials", self.sens_trials, low=1)
        check_range("method.params.sens_samples", self.sens_samples, low=1)
        check_range("method.params.sens_time", self.sens_time, low=0.0)
        if self.kind not in GROUP_KINDS:
            raise SpecError(f"method.params.kind = {self.kind!r}; allowed: {GROUP_KINDS}")
        if self.regularizer not in ("none", "l1", "l2", "group_lasso", "group_sawtooth"):
            raise SpecError(
                f"method.params.regularizer = {self.regularizer!r}; allowed: none, l1, l2, "
                "group_lasso, group_sawtooth"
            )
        if self.pruner not in ("apa", "uniform", "global"):
            raise SpecError(
                f"method.params.pruner = {self.pruner!r}; allowed: apa, uniform, global"
            )
        for s in self.grid:
            check_range("method.params.grid[]", s, low=0.0, high=1.0, high_open=True)


def quant_levels(nonideal) -> int | None:
    """Levels of the non-ideality model's :class:`Quantization` (None: absent, or it uses the
    device's levels)."""
    from xbarprune.hardware.nonideal.quantization import Quantization

    for e in getattr(nonideal, "effects", ()) or ():
        if isinstance(e, Quantization):
            return e.levels
    return None


def sawtooth_grid(ctx: CompressContext) -> tuple[int, tuple[float, ...] | None]:
    """The sawtooth's grid of a compression context (:func:`level_grid`)."""
    return level_grid(ctx.layout.crossbar, ctx.device_spec, ctx.nonideal)


def level_grid(xbar, dev, nonideal) -> tuple[int, tuple[float, ...] | None]:
    """The sawtooth's grid: ``(n_levels, units)``, the simulator's programmable weights for
    crossbar ``xbar``, device ``dev`` and non-ideality model ``nonideal``.

    ``n_levels = L**k`` (device levels ** cells per weight) names the uniform differential
    grid; ``units`` (in units of w_max, :func:`simulator_grid`) is given only where the
    simulator's grid differs from it: offset encoding, or a :class:`Quantization` whose
    levels differ from the device's (issue #21). None keeps the uniform grid exactly.
    """
    n_levels = dev.levels**xbar.cells_per_weight
    q = quant_levels(nonideal)
    units = simulator_grid(xbar.cells_per_weight, dev.levels, xbar.encoding, q)
    uniform = simulator_grid(xbar.cells_per_weight, dev.levels, "differential", None)
    same = len(units) == len(uniform) and all(
        abs(a - b) < 1e-9 for a, b in zip(units, uniform, strict=True)
    )
    if same:
        return n_levels, None
    return n_levels, units


def build_regularizer(p: PrunixParams, ctx: CompressContext):
    if p.regularizer == "group_sawtooth":
        n_levels, units = sawtooth_grid(ctx)
        return GroupSawtooth(
            ctx.layout, n_levels=n_levels, kind=p.kind, lam=p.lam, warmup=p.warmup, units=units
        )
    return make_regularizer(p.regularizer, ctx.layout, lam=p.lam, warmup=p.warmup, kind=p.kind)


def sensitivity_score(p: PrunixParams, ctx: CompressContext):
    """Validation accuracy used by APA: ideal, or analog non-ideal mean over K trials.

    Reads the validation split only (``ctx.selection_data``: never the test split).
    """
    val = ctx.selection_data("PRUNIX APA sensitivities")
    n = min(p.sens_samples, len(val))
    g = torch.Generator().manual_seed(ctx.seed + 17)
    idx = torch.randperm(len(val), generator=g)[:n].tolist()
    loader = DataLoader(Subset(val, idx), batch_size=500, shuffle=False)
    if p.sensitivity == "ideal" or ctx.nonideal is None or ctx.nonideal.is_ideal:
        from xbarprune.training.loop import evaluate_accuracy

        return lambda model: evaluate_accuracy(model, loader, ctx.device)

    def score(model):
        r = evaluate(
            model,
            loader,
            ctx.layout,
            ctx.device_spec,
            ctx.nonideal,
            trials=p.sens_trials,
            seed=ctx.seed + 1,
            times=(p.sens_time,),
            device=ctx.device,
        )
        return r[0].mean

    return score


def prunable_layers(p: PrunixParams, ctx: CompressContext) -> list[str]:
    return p.layer_selection.select(ctx.layout)


def run_prunix(ctx: CompressContext, p: PrunixParams) -> CompressResult:
    reg = build_regularizer(p, ctx)
    info: dict = {"regularizer": p.regularizer, "pruner": p.pruner, "kind": p.kind}
    if reg is not None and p.reg_epochs > 0:
        ctx.log(f"  regularised training: {p.regularizer}, lam={p.lam}, {p.reg_epochs} epochs")
        ctx.finetune(None, p.reg_epochs, regularizer=reg, tag="regularize")
    n_levels, units = sawtooth_grid(ctx)
    info["on_level_fraction_before_pruning"] = on_level_fraction(
        ctx.model, ctx.layout, n_levels, units=units
    )
    info["val_acc_after_regularization"] = ctx.val_accuracy()
    names = prunable_layers(p, ctx)
    n_params = {n: ctx.layout[n].matrix_shape[0] * ctx.layout[n].matrix_shape[1] for n in names}
    masks = MaskSet.from_model(ctx.model, names)
    ft_reg = reg if p.keep_regularizer else None
    rounds = []
    score = sensitivity_score(p, ctx) if p.pruner == "apa" else None
    for r, target in enumerate(cubic_schedule(p.sparsity, p.rounds), start=1):
        rec: dict = {"round": r, "target": target}
        if p.pruner == "apa":
            cur = layer_sparsity(ctx.model, names)
            assert score is not None  # made above for the apa pruner
            ref, curves = measure_sensitivity(
                ctx.model, ctx.layout, names, p.kind, p.grid, score, log=ctx.log
            )
            alloc = allocate(curves, n_params, target, current=cur, s_max=p.s_max, step=p.step)
            masks = prune_to(ctx.model, ctx.layout, alloc.sparsity, p.kind, masks)
            rec.update(
                reference=ref, curves={n: c for n, c in curves.items()}, allocation=alloc.to_dict()
            )
            if not alloc.reached:
                ctx.log(
                    f"  APA: target {target:.3f} unreachable under caps; "
                    f"reached {alloc.overall:.3f}"
                )
        else:
            new = magnitude_masks(
                ctx.model, ctx.layout, sparsity=target, kind=p.kind, scope=p.pruner, prunable=names
            )
            masks = masks.combine(new)
            masks.apply(ctx.model)
        rec["weight_sparsity"] = weight_sparsity(ctx.model, ctx.layout)
        rec["layer_sparsity"] = layer_sparsity(ctx.model, names)
        ctx.log(
            f"  round {r}/{p.rounds}: target {target:.3f}, weight sparsity "
            f"{rec['weight_sparsity']:.3f}"
        )
        # every round, the last included, is followed by its fine-tune (docs/methods/prunix.md)
        ctx.finetune(masks, p.ft_epochs, regularizer=ft_reg, tag=f"prunix_round{r}")
        rounds.append(rec)
    info["rounds"] = rounds
    if p.pruner == "apa":  # the per-layer sparsity APA chose on validation sensitivities
        info["search"] = {"ratios": rounds[-1]["allocation"]["sparsity"], "split": "val",
                          "what": "APA per-layer weight sparsity (last round)"}  # fmt: skip
    if ctx.run_dir is not None and p.pruner == "apa":
        atomic_write_json(ctx.run_dir / "prunix_sensitivity.json", rounds)
        _plot_sensitivity(rounds, ctx.run_dir / "plots" / "prunix_sensitivity.png")
    layout = pack_layout(ctx.layout, ctx.model, p.kind) if p.pack else None
    return CompressResult(masks=masks, layout=layout, info=plain_info(info))


def _plot_sensitivity(rounds: list[dict], path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from xbarprune.io import atomic_write_bytes

    fig, axes = plt.subplots(1, len(rounds), figsize=(4 * len(rounds), 3.2), squeeze=False)
    for ax, rec in zip(axes[0], rounds, strict=True):
        for name, pts in rec.get("curves", {}).items():
            xs, ys = zip(*sorted(pts), strict=True)
            s_l = rec["allocation"]["sparsity"][name]
            ax.plot(
                [100 * x for x in xs],
                [100 * y for y in ys],
                marker="o",
                ms=3,
                label=f"{name} → {100 * s_l:.0f}%",
            )
        ax.set_title(f"round {rec['round']} (target {100 * rec['target']:.0f} %)", fontsize=9)
        ax.set_xlabel("layer group sparsity (%)")
        ax.set_ylabel("accuracy drop (pp)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


@register
class Prunix(Method[PrunixParams]):
    name = "prunix"
    summary = (
        "PRUNIX: Group Sawtooth Regularization + Adaptive Pruning Algorithm on crossbar "
        "groups (baseline regularisers/pruners selectable)"
    )
    Params = PrunixParams

    def uses_nonideal(self) -> bool:
        return self.params.pruner == "apa" and self.params.sensitivity != "ideal"

    def compress(self, ctx: CompressContext) -> CompressResult:
        return run_prunix(ctx, self.params)

    def finetune_regularizer(self, ctx: CompressContext):
        """The arm's own regulariser in the final fine-tune when ``final_regularizer``."""
        return build_regularizer(self.params, ctx) if self.params.final_regularizer else None
