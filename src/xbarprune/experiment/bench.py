"""The benchmark engine: every method under one protocol (issue #21; DESIGN.md `experiment/`).

``xbarprune bench CONFIG`` answers the user's question *which compression method, on my
network, crossbar and device, at what accuracy cost?* One config names a base experiment (the
model, data, training, crossbar, device and evaluation shared by every arm), the methods with
the budgets of their own knob, the non-ideality presets and the seeds.

An **arm** is data: (method, params with the knob at one budget, seed) on top of the base. It
runs through exactly the code path of ``xbarprune run`` -- an arm is a
:class:`~xbarprune.experiment.pipeline.Run` in ``<out>/work/<method>/<budget>/s<seed>/``, so the
registered ``Method.compress``, fine-tune, map and simulate are the same, and the pipeline's
per-stage records are the arm cache: a finished arm is reused, a changed setting recomputes
exactly the stages it affects. The dense model of each seed is trained once (the ``none`` arm)
and handed to every arm of that seed whose training inputs are identical. Presets after the
first are simulated on the finished arm and cached with the record of their inputs.

**Held-out selection by construction.** Every arm has train / validation / test splits; the
validation split is carved from the training data (``data.val_size``, at least 10 % here).
Methods select on ``ctx.val_data`` (the validation split; the pipeline never hands them the
test split), the knob values are fixed in the config (or picked on validation by the user), and
matched-saving comparisons interpolate along budgets without looking at accuracy. The test split
is read only by the final measurement (``Run.simulate``); rows say so in ``selection_split``.

**Statistics.** Each seed retrains the dense model and reruns the arm; its value is the mean
over its Monte Carlo trials (nested per seed). Rows give the mean over seeds and the half-width
of the 95 % confidence interval of that mean (Student's t with n - 1 degrees of freedom; ``None``
with one seed), and keep the per-seed values they come from. Methods are compared at matched
crossbar saving: per seed, accuracy is linearly interpolated along the method's budgets at the
target saving (no extrapolation), and differences to the best method are paired by seed.

Executors: ``local`` (in this process, or ``runtime.workers`` processes) and ``ray`` (each
(arm, seed) a Ray task on ``ray.init()`` or the cluster in ``RAY_ADDRESS``); both call
:func:`run_arm`, share the cache, and give identical rows.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xbarprune.config import from_dict, load_yaml, to_dict
from xbarprune.errors import CompressionError, ConfigError, TrainingError, XbarpruneError
from xbarprune.io import atomic_write_json, atomic_write_text, ensure_dir
from xbarprune.units import format_time, parse_time

MIN_VAL_FRACTION = 0.1


# ---------------------------------------------------------------------------- config
def _refuse_bench_keys(mapping: dict[str, Any], where: str) -> None:
    """An experiment-config mapping merged into ``base`` may not set what the bench sets per
    arm (seed, method, run name, the preset under measurement)."""
    for k in ("seed", "method", "name", "nonideal"):
        if k in mapping:
            raise ConfigError(
                f"{where}.{k}: set by the bench itself; allowed are experiment-config "
                "sections such as model, data, crossbar, train, finetune, evaluate"
            )


@dataclass(frozen=True)
class MethodSpec:
    """One method of a bench: its registered ``name``, the ``params`` shared by its arms,
    the ``knob`` (a key of ``params``, dotted for nested keys) and its ``budgets`` (knob
    values). ``label`` names the method in rows (default: ``name``). A method without a knob
    has one arm (``budget`` None). ``overrides`` is an experiment-config mapping merged into
    ``base`` for this method's arms only: it makes a variant axis, e.g. the same method with
    and without hardware-aware fine-tuning (``{finetune: {hwa: {...}}}``, label ``cf+hwa``)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    knob: str | None = None
    budgets: tuple[float, ...] = ()
    label: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    #: methods applied after the fine-tune, in order (``method.then`` of the arms' configs,
    #: e.g. ``[{name: wct, params: {kappa: 0.5}}]``: WCT on the pruned, fine-tuned model)
    then: tuple[dict[str, Any], ...] = ()

    def __post_init__(self) -> None:
        if self.knob is not None and not self.budgets:
            raise ConfigError(f"methods[{self.name}].budgets: a knob needs at least one budget")
        if self.knob is None and self.budgets:
            raise ConfigError(f"methods[{self.name}].knob: budgets need the knob they set")
        _refuse_bench_keys(self.overrides, f"methods[{self.tag}].overrides")

    @property
    def tag(self) -> str:
        return self.label or self.name


@dataclass(frozen=True)
class EvaluationSpec:
    """One evaluation plug-in of a bench (:mod:`xbarprune.experiment.evaluations`): the
    registered ``name``, its ``params``, the method ``labels`` it measures (``methods``; empty:
    every method, the dense arm included), ``trials`` chips per point (default
    ``base.evaluate.trials``) and the ``label`` that names it in the summary (default ``name``;
    give one when a plug-in is listed twice)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    methods: tuple[str, ...] = ()
    trials: int | None = None
    label: str | None = None

    def __post_init__(self) -> None:
        from xbarprune.experiment.evaluations import get_evaluation

        where = f"evaluations[{self.tag}]"
        get_evaluation(self.name, where).params(self.params, f"{where}.params")
        if self.trials is not None and (isinstance(self.trials, bool) or self.trials < 1):
            raise ConfigError(f"{where}.trials = {self.trials!r}; allowed: an integer >= 1")

    @property
    def tag(self) -> str:
        return self.label or self.name

    @property
    def description(self) -> str:
        from xbarprune.experiment.evaluations import EVALUATIONS

        return EVALUATIONS[self.name].description


@dataclass(frozen=True)
class ExperimentSpec:
    """One (model, data, crossbar, ...) setting of a multi-experiment bench: ``base`` is an
    experiment-config mapping merged into the bench's ``base``; ``presets`` (default: the
    bench's) may differ per experiment, e.g. a preset too slow for a larger model. Its arms,
    summary and report go to ``<out>/<label>/``."""

    label: str
    base: dict[str, Any] = field(default_factory=dict)
    presets: tuple[str, ...] = ()
    #: the method labels this experiment runs (default: all; the dense arm always runs), e.g.
    #: a variant too slow for a larger model; pairs, evaluations and targets naming the others
    #: drop them
    methods: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        import re

        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.label or ""):
            raise ConfigError(
                f"experiments[].label = {self.label!r}; allowed: letters, digits, '_', '.', "
                "'-' (it names the experiment's folder)"
            )
        _refuse_bench_keys(self.base, f"experiments[{self.label}].base")


@dataclass(frozen=True)
class TargetSpec:
    """A study's "best arm that meets the target", chosen per seed on the **validation**
    split (issue #21): among the arms of ``methods`` (default: every method but the dense arm)
    whose ``metric`` is at least ``min_metric`` and whose compressed model's validation
    accuracy is at least ``min_val_accuracy`` and at most ``max_val_drop`` below the same
    seed's ``reference`` arm (default the dense arm ``none``; fractions, 0.01 = 1 pp), the one
    with the largest ``metric`` (ties: the higher validation accuracy). ``metric`` is
    ``crossbar_saving``, ``area_saving``, ``energy_saving``, ``acc_val`` (the validation
    accuracy itself: "the most accurate arm on validation") or a key of the methods' own
    metrics (e.g. ADMM's ``compression_conv``). The chosen arm's test accuracies are then
    reported, never compared against the target's thresholds to choose
    (:func:`select_targets`)."""

    label: str
    methods: tuple[str, ...] = ()
    metric: str = "crossbar_saving"
    min_metric: float | None = None
    min_val_accuracy: float | None = None
    max_val_drop: float | None = None
    reference: str = "none"

    def __post_init__(self) -> None:
        where = f"targets[{self.label}]"
        if not self.label:
            raise ConfigError("targets[].label: give each target a name")
        if self.min_val_accuracy is not None and not 0 <= self.min_val_accuracy <= 1:
            raise ConfigError(
                f"{where}.min_val_accuracy = {self.min_val_accuracy}; allowed: [0, 1]"
            )
        if self.max_val_drop is not None and not 0 <= self.max_val_drop <= 1:
            raise ConfigError(f"{where}.max_val_drop = {self.max_val_drop}; allowed: [0, 1]")
        if self.min_val_accuracy is None and self.max_val_drop is None:
            raise ConfigError(
                f"{where}: set min_val_accuracy or max_val_drop (the accuracy the target asks "
                "for, read on the validation split)"
            )


@dataclass(frozen=True)
class BenchConfig:
    """The ``xbarprune bench`` config (``kind: bench`` for ``xbarprune compare``)."""

    name: str = "bench"
    out: str | None = None
    base: dict[str, Any] = field(default_factory=dict)
    methods: tuple[MethodSpec, ...] = ()
    presets: tuple[str, ...] = ("pcm", "reram")
    #: named non-idealities that ``presets`` may list besides the built-in presets: name ->
    #: a ``nonideal`` effect mapping (as in an experiment config), e.g. a paper's own device
    nonideal: dict[str, dict[str, Any]] = field(default_factory=dict)
    seeds: tuple[int, ...] = (0, 1, 2)
    match_savings: tuple[float, ...] = (0.5, 0.7, 0.85)
    rank_at: float = 0.7
    quick: dict[str, Any] = field(default_factory=dict)
    workers: int = 1
    #: (a, b) method labels compared directly, paired by budget and seed (a - b), e.g. a
    #: paper's method against its baseline at the same budget (:func:`paired_comparisons`)
    pairs: tuple[tuple[str, str], ...] = ()
    #: a paper's own measurements of finished arms (evaluation plug-ins), e.g. the
    #: weight-robustness sweep of Liang et al. 2018 Fig. 12
    evaluations: tuple[EvaluationSpec, ...] = ()
    #: the arm cache (default ``<out>/work``). Point two benches at one cache to share their
    #: common arms (same method label, budget and seed): every stage is still rerun when its
    #: recorded inputs differ, so sharing never mixes settings
    work: str | None = None
    #: several (model, data, crossbar, ...) settings under one protocol, e.g. a paper's two
    #: networks; each is a bench of its own in ``<out>/<label>/``, all validated first
    experiments: tuple[ExperimentSpec, ...] = ()
    #: the best arm that meets an accuracy target, chosen per seed on the validation split
    targets: tuple[TargetSpec, ...] = ()
    #: the paper's own numbers (markdown), printed in summary.md beside ours
    paper: str = ""

    def __post_init__(self) -> None:
        if not self.methods:
            raise ConfigError("methods: a bench needs at least one method")
        if not self.seeds:
            raise ConfigError("seeds: a bench needs at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"seeds: {list(self.seeds)} repeats a seed")
        if not self.presets:
            raise ConfigError("presets: a bench needs at least one non-ideality preset")
        if len(set(self.presets)) != len(self.presets):
            raise ConfigError(f"presets: {list(self.presets)} repeats a name")
        self._check_nonideal()
        tags = [m.tag for m in self.methods]
        if len(set(tags)) != len(tags):
            raise ConfigError(f"methods: labels {tags} repeat; give each a distinct 'label'")
        for s in (*self.match_savings, self.rank_at):
            if not 0 < s < 1:
                raise ConfigError(f"match_savings / rank_at = {s}; allowed: (0, 1)")
        if self.workers < 1:
            raise ConfigError(f"workers = {self.workers}; allowed: an integer >= 1")
        labels = {m.tag for m in self.methods} | {"none"}
        for i, pair in enumerate(self.pairs):
            if len(pair) != 2 or pair[0] == pair[1]:
                raise ConfigError(f"pairs[{i}] = {list(pair)}; allowed: two different labels")
            for t in pair:
                if t not in labels:
                    raise ConfigError(f"pairs[{i}]: {t!r} is not a method label ({sorted(labels)})")
        xlabels = [e.label for e in self.experiments]
        if len(set(xlabels)) != len(xlabels):
            raise ConfigError(f"experiments: labels {xlabels} repeat")
        for x in self.experiments:
            bad = sorted(set(x.methods) - labels)
            if bad:
                raise ConfigError(f"experiments[{x.label}].methods: {bad} not method labels "
                                  f"({sorted(labels)})")  # fmt: skip
        ttags = [t.label for t in self.targets]
        if len(set(ttags)) != len(ttags):
            raise ConfigError(f"targets: labels {ttags} repeat")
        for tg in self.targets:
            if tg.reference not in labels:
                raise ConfigError(
                    f"targets[{tg.label}].reference: {tg.reference!r} is not a method label "
                    f"({sorted(labels)})"
                )
            for m in tg.methods:
                if m not in labels:
                    raise ConfigError(
                        f"targets[{tg.label}].methods: {m!r} is not a method label "
                        f"({sorted(labels)})"
                    )
        etags = [e.tag for e in self.evaluations]
        if len(set(etags)) != len(etags):
            raise ConfigError(f"evaluations: labels {etags} repeat; give each a distinct 'label'")
        for e in self.evaluations:
            for t in e.methods:
                if t not in labels:
                    raise ConfigError(
                        f"evaluations[{e.tag}].methods: {t!r} is not a method label "
                        f"({sorted(labels)})"
                    )

    def _check_nonideal(self) -> None:
        from xbarprune.hardware.nonideal.model import PRESETS, NonIdealityConfig

        for name, spec in self.nonideal.items():
            if name in PRESETS:
                raise ConfigError(
                    f"nonideal.{name}: shadows the built-in preset {name!r}; give it another name"
                )
            if not isinstance(spec, dict):
                raise ConfigError(
                    f"nonideal.{name}: expected a mapping of effects (quantization, variation, "
                    f"...); got {type(spec).__name__}"
                )
            try:
                from_dict(NonIdealityConfig, spec)
            except XbarpruneError as exc:
                raise ConfigError(f"nonideal.{name}: {exc}") from exc
        listed = [*self.presets, *(p for e in self.experiments for p in e.presets)]
        for p in listed:
            if p not in PRESETS and p not in self.nonideal:
                raise ConfigError(
                    f"presets: {p!r} is neither a built-in preset ({', '.join(sorted(PRESETS))}) "
                    "nor a name defined under `nonideal:`"
                )
        unused = set(self.nonideal) - set(listed)
        if unused:
            raise ConfigError(f"nonideal: {sorted(unused)} defined but not listed in presets")

    def restricted(self, labels: Sequence[str], where: str) -> BenchConfig:
        """This bench with only the methods ``labels`` (their tags) and the dense arm; pairs,
        evaluations and targets keep what concerns those methods. ``where`` names the field in
        the error for an unknown label."""
        from dataclasses import replace

        tags = [m.tag for m in self.methods]
        unknown = sorted(set(labels) - set(tags) - {"none"})
        if unknown:
            raise ConfigError(f"{where}: unknown label(s) {unknown}; "
                              f"allowed: {', '.join(tags)}")  # fmt: skip
        dense = next((m.tag for m in self.methods if m.name == "none" and not m.overrides
                      and not m.then), "none")  # fmt: skip
        keep = set(labels) | {dense}

        def kept(ms: tuple[str, ...]) -> tuple[str, ...]:
            return tuple(m for m in ms if m in keep)

        return replace(
            self,
            methods=tuple(m for m in self.methods if m.tag in keep),
            pairs=tuple(p for p in self.pairs if set(p) <= keep),
            evaluations=tuple(replace(v, methods=kept(v.methods)) for v in self.evaluations
                              if not v.methods or kept(v.methods)),
            targets=tuple(replace(t, methods=kept(t.methods)) for t in self.targets
                          if not t.methods or kept(t.methods)),
        )  # fmt: skip

    def experiment(self, e: ExperimentSpec) -> BenchConfig:
        """The bench of one experiment: ``base`` merged with ``e.base``, its presets, its own
        arm cache (``<work>/<label>`` when ``work`` is given)."""
        from dataclasses import replace

        cfg = self.restricted(e.methods, f"experiments[{e.label}].methods") if e.methods else self
        return replace(
            cfg,
            name=f"{self.name}-{e.label}",
            out=None,
            base=_merge(self.base, e.base),
            presets=e.presets or self.presets,
            experiments=(),
            work=str(Path(self.work) / e.label) if self.work else None,
        )

    def definition(self, name: str) -> str | dict[str, Any]:
        """What the experiment config's ``nonideal`` takes for the preset ``name``: the
        built-in preset's name, or the bench's own effect mapping."""
        return copy.deepcopy(self.nonideal[name]) if name in self.nonideal else name


def _merge(a: dict, b: dict) -> dict:
    """Recursive dict merge, ``b`` winning."""
    out = copy.deepcopy(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_bench(data: dict[str, Any], *, quick: bool = False) -> BenchConfig:
    """Validate a bench mapping (``--quick`` merges its ``quick:`` section first)."""
    data = dict(data)
    data.pop("kind", None)
    if quick:
        q = dict(data.get("quick") or {})
        if not isinstance(q, dict):
            raise ConfigError("quick: expected a mapping of overrides")
        mp = q.pop("method_params", {}) or {}
        only = q.pop("methods_only", None)
        data = _merge({k: v for k, v in data.items() if k != "quick"}, q)
        if mp:  # quick: {method_params: {<label or name>: {param: value}}}
            methods = []
            for m in data.get("methods") or []:
                tag = m.get("label") or m.get("name") if isinstance(m, dict) else None
                if isinstance(m, dict) and tag in mp:
                    m = _merge(m, {"params": mp[tag]})
                methods.append(m)
            unknown = set(mp) - {m.get("label") or m.get("name") for m in methods
                                 if isinstance(m, dict)}  # fmt: skip
            if unknown:
                raise ConfigError(f"quick.method_params names unknown method(s): {sorted(unknown)}")
            data["methods"] = methods
        if only is not None:
            data = _keep_methods(data, only)
    cfg = from_dict(BenchConfig, data)
    return cfg


def _keep_methods(data: dict[str, Any], only: Any) -> dict[str, Any]:
    """``quick.methods_only``: keep the methods with these labels (the dense arm always runs)
    and drop what names the others: pairs, evaluations' and targets' method lists (an entry
    left with no method goes)."""
    labels = {m.get("label") or m.get("name") for m in data.get("methods") or []
              if isinstance(m, dict)}  # fmt: skip
    if not isinstance(only, list) or not all(isinstance(x, str) for x in only):
        raise ConfigError("quick.methods_only: expected a list of method labels")
    unknown = sorted(set(only) - labels)
    if unknown:
        raise ConfigError(f"quick.methods_only names unknown method(s): {unknown}")
    keep = set(only) | {"none"}
    data = dict(data)
    data["methods"] = [
        m
        for m in data.get("methods") or []
        if not isinstance(m, dict) or (m.get("label") or m.get("name")) in keep
    ]
    data["pairs"] = [p for p in data.get("pairs") or [] if set(p) <= keep]
    for key in ("evaluations", "targets"):
        entries = []
        for e in data.get(key) or []:
            if isinstance(e, dict) and e.get("methods"):
                ms = [m for m in e["methods"] if m in keep]
                if not ms:
                    continue
                e = {**e, "methods": ms}
            entries.append(e)
        data[key] = entries
    return data


# ---------------------------------------------------------------------------- arms
def _set_dotted(d: dict, key: str, value: Any) -> dict:
    out = copy.deepcopy(d)
    node = out
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def _budget_name(b: float | None) -> str:
    return "default" if b is None else f"{b:g}"


@dataclass(frozen=True)
class Arm:
    """One (method, budget, seed): a plain, picklable description of a pipeline run."""

    method: str  # the method's tag (label)
    budget: float | None
    seed: int
    config: dict[str, Any]  # the full experiment config of this run
    dir: str
    presets: tuple[str, ...]
    dense_dir: str | None  # the seed's dense run, whose training this arm reuses
    # a variant's plain partner (same method, budget and seed, no overrides), whose
    # compression this arm reuses when the compress inputs are equal
    partner_dir: str | None = None
    #: preset name -> what ``Run.simulate(nonideal=...)`` takes (a built-in preset's name or
    #: the bench's own effect mapping); a name missing here is a built-in preset
    definitions: dict[str, Any] = field(default_factory=dict)
    #: the evaluation plug-ins that measure this arm: ``{"name", "label", "params", "trials"}``
    evaluations: tuple[dict[str, Any], ...] = ()

    @property
    def key(self) -> str:
        return f"{self.method}/{_budget_name(self.budget)}/s{self.seed}"


def plan_arms(cfg: BenchConfig, out: Path) -> list[Arm]:
    """Every arm of the bench, the dense (``none``) arm of each seed first."""
    base = copy.deepcopy(cfg.base)
    base.pop("method", None)
    base.pop("seed", None)
    base["nonideal"] = cfg.definition(cfg.presets[0])
    base = _merge(base, {"evaluate": {"dense": False}})
    work = Path(cfg.work) if cfg.work else out / "work"
    arms: list[Arm] = []
    specs = list(cfg.methods)
    # the seed's dense model: the first plain `none` (no overrides); the others reuse its training
    dense_spec = next((m for m in specs if m.name == "none" and not m.overrides
                       and not m.then), None)  # fmt: skip
    if dense_spec is None:
        dense_spec = MethodSpec(name="none")
        specs.insert(0, dense_spec)
    specs.sort(key=lambda m: (m is not dense_spec, m.name != "none"))  # dense arms first
    for seed in cfg.seeds:
        for m in specs:
            for b in m.budgets or (None,):
                params = dict(m.params)
                if m.knob is not None:
                    params = _set_dotted(params, m.knob, b)
                arm_base = _merge(base, m.overrides)
                method: dict[str, Any] = {"name": m.name, "params": params}
                if m.then:
                    method["then"] = [copy.deepcopy(dict(t)) for t in m.then]
                conf = _merge(arm_base, {"seed": seed, "method": method})
                conf["name"] = f"{cfg.name}-{m.tag}-{_budget_name(b)}-s{seed}".replace("/", "_")
                d = work / m.tag / _budget_name(b) / f"s{seed}"
                dense = (None if m is dense_spec
                         else str(work / dense_spec.tag / "default" / f"s{seed}"))  # fmt: skip
                plain = None
                if (m.overrides or m.then) and m.name != "none":
                    p = next((x for x in specs if x.name == m.name and not x.overrides
                              and not x.then and x.params == m.params
                              and b in (x.budgets or (None,))), None)  # fmt: skip
                    if p is not None:
                        plain = str(work / p.tag / _budget_name(b) / f"s{seed}")
                arms.append(
                    Arm(
                        m.tag,
                        b,
                        seed,
                        conf,
                        str(d),
                        tuple(cfg.presets),
                        dense,
                        plain,
                        {p: cfg.definition(p) for p in cfg.presets},
                        tuple(
                            {
                                "name": e.name,
                                "label": e.tag,
                                "params": copy.deepcopy(e.params),
                                "trials": e.trials,
                            }
                            for e in cfg.evaluations
                            if not e.methods or m.tag in e.methods
                        ),  # fmt: skip
                    )
                )
    return arms


def validate_arms(arms: Sequence[Arm]) -> None:
    """Every arm's config loads (strict keys, ranges) and carves a validation split of at
    least 10 %, before any arm runs: a typo in the last method fails in seconds."""
    from xbarprune.experiment.config import load_config
    from xbarprune.experiment.pipeline import Run

    shared: dict[str, Any] = {}
    seen: set[tuple] = set()
    for arm in arms:
        try:
            cfg = load_config(arm.config)
        except XbarpruneError as exc:
            raise ConfigError(f"arm {arm.key}: {exc}") from exc
        v = cfg.data.val_size
        if v < 1 and v < MIN_VAL_FRACTION:
            raise ConfigError(
                f"base.data.val_size = {v}; a bench selects on a validation split carved "
                f"from the training data: allowed >= {MIN_VAL_FRACTION} (or a number of images)"
            )
        if (arm.method, arm.budget) in seen:
            continue
        seen.add((arm.method, arm.budget))
        run = Run(cfg, arm.dir, log=lambda s: None)
        key = json.dumps([to_dict(cfg.data), cfg.seed], sort_keys=True, default=str)
        if key in shared:
            run._splits = shared[key]
        try:
            run.preflight()
        except XbarpruneError as exc:
            raise ConfigError(f"arm {arm.key}: {exc}") from exc
        shared[key] = run._splits


def _reuse_stage(arm: Arm, source: str | None, stage: str) -> None:
    """Copy ``stage`` (its checkpoint and input record) from the run at ``source`` when its
    recorded inputs equal this arm's: the seed's dense training for every arm, the plain
    partner's compression for a variant (hardware-aware fine-tuning does not enter
    compression). Nothing is copied when this arm has the stage or the inputs differ."""
    import shutil

    if source is None:
        return
    src = Path(source) / "stages"
    dst = Path(arm.dir) / "stages"
    if (dst / f"{stage}.pt").is_file() or not (src / f"{stage}.pt").is_file():
        return
    try:
        rec = json.loads((src / f"{stage}.inputs.json").read_text())
    except (OSError, ValueError):
        return
    from xbarprune.experiment.config import load_config
    from xbarprune.experiment.pipeline import Run

    mine = Run(load_config(arm.config), arm.dir, log=lambda s: None).stage_inputs(stage)
    if mine != rec:
        return
    ensure_dir(dst)
    for name in (f"{stage}.pt", f"{stage}.inputs.json"):
        tmp = dst / f".{name}.tmp"
        shutil.copy2(src / name, tmp)
        tmp.replace(dst / name)  # atomic: a killed copy leaves no half stage


def _reuse_stages(arm: Arm) -> None:
    """Give the arm the seed's dense model, and a variant its plain partner's compression
    and fine-tuning, each where its recorded inputs are equal (an evaluation override such as
    BatchNorm re-calibration changes neither; hardware-aware fine-tuning changes the second)."""
    _reuse_stage(arm, arm.dense_dir, "train")
    _reuse_stage(arm, arm.partner_dir, "compress")
    _reuse_stage(arm, arm.partner_dir, "finetune")


def arm_log(arm_dir: str | Path, echo: bool = False) -> Callable[[str], None]:
    """The log of one arm: every pipeline line (stage started, skipped, resumed, each epoch)
    appended, time-stamped, to ``<arm>/run.log``, so a bench whose workers run quietly in a
    pool can be followed arm by arm (``tail -f``). Each line is written and closed at once: a
    killed worker loses nothing it had logged. ``echo`` also prints the line."""
    path = Path(arm_dir) / "run.log"

    def log(line: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
        if echo:
            print(line)

    return log


def run_arm(arm: Arm, threads: int | None = None, quiet: bool = True) -> dict[str, Any]:
    """Run (or reuse) one arm through the pipeline and measure it under every preset.

    Returns the arm's per-seed record: ideal test accuracy, crossbars, saving, compute time
    and, per preset and time, the per-trial non-ideal accuracies. Pure in its inputs: the
    local and the Ray executor both call it.
    """
    import torch

    from xbarprune.experiment.config import load_config
    from xbarprune.experiment.pipeline import Run

    if threads:
        torch.set_num_threads(threads)
    log = arm_log(arm.dir, echo=not quiet)
    log(f"arm {arm.key}: pid {os.getpid()}, {torch.get_num_threads()} torch thread(s)")
    cfg = load_config(arm.config)
    _reuse_stages(arm)
    run = Run(cfg, arm.dir, log=log)
    t0 = time.perf_counter()
    try:
        rep = run.run()
    except (CompressionError, TrainingError) as exc:
        # the method or the training failed on its own numbers (e.g. a diverging loss): a
        # result of this arm and seed, reported as such; the other arms go on
        log(f"arm {arm.key} FAILED: {type(exc).__name__}: {exc}")
        return {
            "key": arm.key,
            "method": arm.method,
            "method_name": cfg.method.name,
            "budget": arm.budget,
            "seed": arm.seed,
            "failed": f"{type(exc).__name__}: {exc}",
            "compute_s": 0.0,
            "compute_new_s": 0.0,
            "wall_s": time.perf_counter() - t0,
            "torch_threads": torch.get_num_threads(),
        }
    sims: dict[str, Any] = {arm.presets[0]: json.loads((run.stages / "simulate.json").read_text())}
    # the arm's own compute, piece by piece: (seconds as recorded when it ran, whether this
    # invocation ran it: a stage recomputed or resumed here, a cache miss); a cached arm keeps
    # its numbers, and the dense training is counted once, in the seed's dense arm
    timing, resumed = rep.get("timing", {}), rep.get("timing_resumed", {})
    own = ("compress", "finetune", "simulate") + (("train",) if arm.dense_dir is None else ())
    spent = []
    for k in (k for k in own if isinstance(timing.get(k), int | float)):
        # a stage resumed here: its epochs an interrupted invocation ran were not run here
        earlier = float(resumed.get(k, 0.0)) if k in run.recomputed else 0.0
        spent += [(float(timing[k]) - earlier, k in run.recomputed), (earlier, False)]
    for p in arm.presets[1:]:
        sims[p], secs, hit = _cached_simulation(run, p, arm.definitions.get(p, p))
        spent.append((secs, not hit))
    dense_x, comp_x = rep["crossbars"]["dense"], rep["crossbars"]["compressed"]
    record = {
        "key": arm.key,
        "method": arm.method,
        "method_name": cfg.method.name,
        "budget": arm.budget,
        "seed": arm.seed,
        "acc_ideal": rep["accuracy"]["compressed_ideal"],
        "crossbars_dense": dense_x,
        "crossbars_compressed": comp_x,
        "crossbar_saving": 1.0 - comp_x / dense_x if dense_x else 0.0,
        "weight_sparsity": rep["sparsity"]["weight"],
        "hwa": cfg.finetune.hwa is not None,
        "nonideal": {
            p: {format_time(r["time_s"]): r["per_trial"] for r in s["compressed"]["nonideal"]}
            for p, s in sims.items()
        },
        "wall_s": time.perf_counter() - t0,
        "torch_threads": torch.get_num_threads(),  # this arm's own, in its worker
    }
    saving = (rep.get("cost") or {}).get("saving") or {}
    for k in ("area_saving", "energy_saving"):  # the core cost model, dense vs compressed
        if isinstance(saving.get(k), int | float):
            record[k] = float(saving[k])
    metrics = _method_metrics(rep)
    if metrics:
        record["method_metrics"] = metrics
    acc_val, secs, hit = _cached_val_accuracy(run)
    if acc_val is not None:  # what `targets` choose on (never the test split)
        record["acc_val"] = acc_val
        spent.append((secs, not hit))
    if arm.evaluations:
        record["evaluations"] = {}
        for spec in arm.evaluations:
            points, secs, hit = _cached_evaluation(run, spec)
            record["evaluations"][spec["label"]] = points
            spent.append((secs, not hit))
    record["compute_s"] = sum(secs for secs, _ in spent)
    record["compute_new_s"] = sum(secs for secs, ran in spent if ran)
    sel = run.stages / "hwa_selection.json"
    if sel.exists():  # finetune.hwa.select_weight_noise: the choice made on validation
        record["hwa_selection"] = json.loads(sel.read_text())
    log(
        f"arm {arm.key} done: {record['compute_new_s']:.1f} s computed here, "
        f"{record['compute_s']:.1f} s in all, {record['wall_s']:.1f} s wall"
    )
    return record


def _method_metrics(rep: dict) -> dict[str, float]:
    """The numeric figures a method reports in its own terms, averaged over seeds beside the
    bench's crossbar saving: ``info["compression"]`` (e.g. ADMM's conv / total weight
    compression of Ma et al. 2020, Table 1; per stage: the final one) and the per-layer ratios
    of a search, ``info["search"]["ratios"]``, as ``ratio:<layer>`` (Liang et al.)."""
    info = (rep.get("method") or {}).get("info") or {}
    comp = info.get("compression")
    if isinstance(comp, dict) and comp and all(isinstance(v, dict) for v in comp.values()):
        comp = list(comp.values())[-1]  # per stage (dense, admm, ..., final): the final model
    out: dict[str, float] = {}
    if isinstance(comp, dict):
        out.update({k: float(v) for k, v in comp.items() if isinstance(v, int | float)
                    and not isinstance(v, bool)})  # fmt: skip
    # a per-layer search's outcome (Liang et al. 2018 Sec. III-E: the ratio each layer ends at)
    ratios = (info.get("search") or {}).get("ratios")
    if isinstance(ratios, dict):
        out.update({f"ratio:{k}": float(v) for k, v in ratios.items()
                    if isinstance(v, int | float)})  # fmt: skip
    return out


def _cached_simulation(
    run: Any, preset_name: str, definition: str | dict[str, Any] | None = None
) -> tuple[dict, float, bool]:
    """``run.simulate(nonideal=definition)`` (default: the built-in preset ``preset_name``),
    its compute seconds (as recorded when it was computed) and whether it came from the cache,
    ``<arm>/bench_sim/<preset>.json``, kept with the record of its inputs (recomputed when they
    change, a bench-defined effect mapping included)."""
    definition = preset_name if definition is None else definition
    rec = dict(run.stage_inputs("simulate"))
    rec = {k: v for k, v in rec.items() if not k.startswith("nonideal")}
    rec["nonideal"] = definition
    rec["model_sha256"] = _model_digest(run)
    path = run.dir / "bench_sim" / f"{preset_name}.json"
    hit = _cache_hit(path, rec, "result")
    if hit is not None:
        return (*hit, True)
    t0 = time.perf_counter()
    if isinstance(definition, dict):
        from xbarprune.hardware.nonideal.model import NonIdealityConfig

        res = run.simulate(nonideal=from_dict(NonIdealityConfig, copy.deepcopy(definition)))
    else:
        res = run.simulate(nonideal=definition)
    secs = time.perf_counter() - t0
    atomic_write_json(path, {"record": rec, "result": res, "seconds": secs})
    return res, secs, False


def _model_digest(run: Any) -> str:
    """The sha256 of the arm's measured model (its fine-tune checkpoint): part of every cache
    record, so an arm whose stages were recomputed (e.g. after a stage file was removed by
    hand) is measured again even when its config is unchanged."""
    return hashlib.sha256((run.stages / "finetune.pt").read_bytes()).hexdigest()


def _cache_hit(path: Path, record: dict, key: str) -> tuple[Any, float] | None:
    """``(cached[key], seconds)`` when ``path`` holds a result made with ``record``; None
    when it is missing, unreadable or made with other inputs (then it is recomputed)."""
    if not path.is_file():
        return None
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if old.get("record") != record:
        return None
    return old[key], float(old.get("seconds", 0.0))


def _cached_val_accuracy(run: Any) -> tuple[float | None, float, bool]:
    """The compressed model's digital accuracy on the arm's **validation** split (what
    :func:`select_targets` chooses on), its compute seconds and whether it came from the
    cache, ``<arm>/bench_val.json``, kept with the data inputs and the digest of the model's
    checkpoint; ``(None, 0, False)`` without a validation split."""
    from torch.utils.data import DataLoader

    from xbarprune.training.loop import evaluate_accuracy

    val = run._val()
    if val is None:
        return None, 0.0, False
    rec = dict(run.stage_inputs("finetune"))
    rec["model_sha256"] = _model_digest(run)
    path = run.dir / "bench_val.json"
    hit = _cache_hit(path, rec, "acc_val")
    if hit is not None:
        return (*hit, True)
    t0 = time.perf_counter()
    _dense, comp, _dl, _cl, _ck = run.models()
    loader = DataLoader(val, batch_size=run.cfg.data.batch_size_eval)
    acc = float(evaluate_accuracy(comp, loader, run.device))
    secs = time.perf_counter() - t0
    atomic_write_json(path, {"record": rec, "acc_val": acc, "seconds": secs})
    return acc, secs, False


def _cached_evaluation(run: Any, spec: dict[str, Any]) -> tuple[list[dict], float, bool]:
    """The evaluation plug-in ``spec`` on the finished arm ``run`` (its compressed model and
    layout, the test split, training images for calibration), its compute seconds and whether
    it came from the cache, ``<arm>/bench_eval/<label>.json``, kept with the record of its
    inputs (config and the digest of the measured model's checkpoint)."""
    from xbarprune.experiment.evaluations import EvalContext, get_evaluation
    from xbarprune.experiment.pipeline import mapping_clip

    ev = get_evaluation(spec["name"], f"evaluations[{spec['label']}]")
    params = ev.params(spec["params"], f"evaluations[{spec['label']}].params")
    trials = int(spec["trials"] or run.cfg.evaluate.trials)
    rec = dict(run.stage_inputs("simulate"))
    rec = {k: v for k, v in rec.items() if not k.startswith("nonideal")}
    rec["evaluation"] = {"name": spec["name"], "params": spec["params"], "trials": trials}
    if ev.reads_nonideal:  # e.g. the simulator's level grid under the arm's preset
        rec["evaluation"]["nonideal"] = to_dict(run.cfg.nonideal_config())
    rec["model_sha256"] = _model_digest(run)
    path = run.dir / "bench_eval" / f"{spec['label']}.json"
    hit = _cache_hit(path, rec, "points")
    if hit is not None:
        return (*hit, True)
    t0 = time.perf_counter()
    _dense, comp, dl, cl, ck = run.models()
    ctx = EvalContext(
        model=comp,
        layout=cl,
        device_spec=run.cfg.device,
        data=run.test_loader(),
        trials=trials,
        seed=run.cfg.evaluate.seed,
        times_s=tuple(run.cfg.evaluate.times_s),
        torch_device=run.device,
        calibration=run.calibration_images(),
        run_dir=run.dir,
        build_model=run.build_model,
        reference_layout=dl,
        method_name=run.cfg.method.name,
        method_params=copy.deepcopy(run.cfg.method.params),
        method_info=ck.get("info"),
        nonideal=run.cfg.nonideal_model(),
        weight_clip=mapping_clip(ck.get("info") or {}, cl),
    )
    points = ev.measure(ctx, params)
    secs = time.perf_counter() - t0
    atomic_write_json(path, {"record": rec, "points": points, "seconds": secs})
    return points, secs, False


# ---------------------------------------------------------------------------- executors
def execute(
    arms: Sequence[Arm],
    executor: str = "local",
    workers: int = 1,
    log: Callable[[str], None] = print,
) -> list[dict]:
    """Run every arm and return their records in the order of ``arms``: dense arms first,
    then the plain arms, then the variants that reuse a plain partner's compression."""
    dense = [a for a in arms if a.dense_dir is None]
    plain = [a for a in arms if a.dense_dir is not None and a.partner_dir is None]
    variants = [a for a in arms if a.dense_dir is not None and a.partner_dir is not None]
    groups = [g for g in (dense, plain, variants) if g]
    if executor == "ray":
        return _execute_ray(groups, arms, log)
    if executor != "local":
        raise ConfigError(f"--executor = {executor!r}; allowed: local, ray")
    import torch

    out: dict[str, dict] = {}
    # every arm of a bench with workers runs with the same torch thread count, in the pool or
    # alone in this process (a group of one arm), so a resumed bench computes an arm exactly
    # as a fresh one: float reductions depend on the thread count
    threads = max(1, torch.get_num_threads() // workers) if workers > 1 else None
    for group in groups:
        if workers > 1 and len(group) > 1:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(workers) as pool:
                futs = {a.key: pool.submit(run_arm, a, threads) for a in group}
                for k, f in futs.items():
                    out[k] = f.result()
                    log(f"  arm {k} done")
        else:
            before = torch.get_num_threads()
            try:
                for a in group:
                    t0 = time.perf_counter()
                    out[a.key] = run_arm(a, threads)
                    log(f"  arm {a.key}: {time.perf_counter() - t0:.1f} s")
            finally:
                torch.set_num_threads(before)
    return [out[a.key] for a in arms]


def _execute_ray(groups, arms, log) -> list[dict]:
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(
            "--executor ray needs Ray: pip install -e '.[ray]' (or pip install 'ray>=2.9')"
        ) from exc
    started = False
    if not ray.is_initialized():
        ray.init(log_to_driver=False, include_dashboard=False)  # RAY_ADDRESS is honoured
        started = True
    try:
        remote = ray.remote(num_cpus=1)(run_arm)
        out: dict[str, dict] = {}
        for group in groups:
            refs = {a.key: remote.remote(a, 1) for a in group}
            for k, r in refs.items():
                out[k] = ray.get(r)
                log(f"  arm {k} done (ray)")
        return [out[a.key] for a in arms]
    finally:
        if started:
            ray.shutdown()


# ---------------------------------------------------------------------------- statistics
def mean_ci95(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and the half-width of its 95 % confidence interval (Student's t, n - 1 degrees of
    freedom); the half-width is None for a single value."""
    n = len(values)
    if n == 0:
        return float("nan"), None
    m = statistics.fmean(values)
    if n < 2:
        return m, None
    from scipy.stats import t

    return m, float(t.ppf(0.975, n - 1) * statistics.stdev(values) / math.sqrt(n))


def mean_ci95_by_key(values: Sequence[dict[str, float]]) -> dict[str, dict]:
    """``{key: {"mean", "ci95"}}`` over the per-seed mappings ``values``, for the keys every
    seed has (a figure some seeds lack is not reported)."""
    if not values:
        return {}
    keys = set.intersection(*(set(v) for v in values))
    out = {}
    for k in sorted(keys):
        m, ci = mean_ci95([float(v[k]) for v in values])
        out[k] = {"mean": m, "ci95": ci}
    return out


def format_mean_ci(m: dict | None) -> str:
    """A ``{"mean", "ci95"}`` figure as text (4 significant digits; "–" when absent)."""
    if m is None:
        return "–"
    return f"{m['mean']:.4g}" + (f" ± {m['ci95']:.3g}" if m["ci95"] is not None else "")


def interpolate(points: Sequence[tuple[float, float]], x: float) -> float | None:
    """Linear interpolation of (saving, accuracy) points at ``x``; None outside their range
    (never extrapolated). Points with equal savings are averaged."""
    by: dict[float, list[float]] = {}
    for s, a in points:
        by.setdefault(s, []).append(a)
    pts = sorted((s, statistics.fmean(a)) for s, a in by.items())
    if not pts or x < pts[0][0] - 1e-12 or x > pts[-1][0] + 1e-12:
        return None
    for (s0, a0), (s1, a1) in zip(pts, pts[1:], strict=False):
        if s0 - 1e-12 <= x <= s1 + 1e-12:
            return a0 if s1 == s0 else a0 + (a1 - a0) * (x - s0) / (s1 - s0)
    return pts[0][1]


def build_rows(records: Sequence[dict], model: str, dataset: str) -> list[dict]:
    """One row per (method, budget, preset, time): means over seeds with 95 % CIs, and the
    per-seed values they come from."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["method"], r["budget"]), []).append(r)
    rows = []
    for (method, budget), recs in groups.items():
        recs = sorted(recs, key=lambda r: r["seed"])
        ideal = [r["acc_ideal"] for r in recs]
        saving = [r["crossbar_saving"] for r in recs]
        im, ici = mean_ci95(ideal)
        sm, sci = mean_ci95(saving)
        # a method's own metrics (every seed has them, or none is reported)
        metrics = mean_ci95_by_key([r.get("method_metrics") or {} for r in recs])
        # the cost model's savings and the validation accuracy, when every seed has them
        extra = mean_ci95_by_key(
            [{k: r[k] for k in ("area_saving", "energy_saving", "acc_val") if k in r}
             for r in recs]
        )  # fmt: skip
        for preset in recs[0]["nonideal"]:
            for tlabel in recs[0]["nonideal"][preset]:
                per_seed = [statistics.fmean(r["nonideal"][preset][tlabel]) for r in recs]
                nm, nci = mean_ci95(per_seed)
                rows.append(
                    {
                        "model": model,
                        "dataset": dataset,
                        "method": method,
                        "method_name": recs[0]["method_name"],
                        "hwa": bool(recs[0].get("hwa", False)),
                        "budget": budget,
                        "seeds": [r["seed"] for r in recs],
                        "crossbar_saving": sm,
                        "crossbar_saving_ci95": sci,
                        "crossbar_saving_per_seed": saving,
                        "crossbars_dense": [r["crossbars_dense"] for r in recs],
                        "crossbars_compressed": [r["crossbars_compressed"] for r in recs],
                        "weight_sparsity": statistics.fmean(r["weight_sparsity"] for r in recs),
                        "acc_ideal_mean": im,
                        "acc_ideal_ci95": ici,
                        "acc_ideal_per_seed": ideal,
                        "nonideal": preset,
                        "time": tlabel,
                        "acc_nonideal_mean": nm,
                        "acc_nonideal_ci95": nci,
                        "acc_nonideal_per_seed": per_seed,
                        "trials_per_seed": len(recs[0]["nonideal"][preset][tlabel]),
                        "time_s": parse_time(tlabel),  # after programming
                        "compute_s": statistics.fmean(r["compute_s"] for r in recs),
                        "selection_split": "val",
                        **{k: extra[k] for k in sorted(extra)},
                        **({"method_metrics": metrics} if metrics else {}),
                    }
                )
    return rows


def evaluation_rows(records: Sequence[dict]) -> list[dict]:
    """One row per (evaluation, method, budget, point) of the evaluation plug-ins: the mean
    over seeds of each seed's mean over its chips, with the 95 % CI and the per-seed values.
    A point is aggregated over the seeds that measured it."""
    from xbarprune.experiment.evaluations import point_coordinates, point_key

    groups: dict[tuple, list[tuple[dict, dict]]] = {}
    coords: dict[str, list[str]] = {}
    for r in sorted(records, key=lambda r: r["seed"]):
        for label, points in (r.get("evaluations") or {}).items():
            coords.setdefault(label, point_coordinates(points))
            for p in points:
                at = point_key(p)
                groups.setdefault((label, r["method"], r["budget"], at), []).append((r, p))
    rows = []
    for (label, method, budget, at), pairs in groups.items():
        per_seed = [statistics.fmean(p["per_trial"]) for _, p in pairs]
        m, ci = mean_ci95(per_seed)
        point = json.loads(at)
        # a point's own figures (e.g. compression), over the seeds that all have them
        metrics = mean_ci95_by_key([p.get("metrics") or {} for _, p in pairs])
        rows.append(
            {
                "evaluation": label,
                "method": method,
                "budget": budget,
                **{k: point[k] for k in coords[label] if k in point},
                "seeds": [r["seed"] for r, _ in pairs],
                "crossbar_saving": statistics.fmean(r["crossbar_saving"] for r, _ in pairs),
                "acc_mean": m,
                "acc_ci95": ci,
                "acc_per_seed": per_seed,
                "trials_per_seed": len(pairs[0][1]["per_trial"]),
                "selection_split": "none (reported, never selects)",
                **({"metrics": metrics} if metrics else {}),
            }
        )
    return rows


def evaluations_markdown(
    rows: Sequence[dict], descriptions: dict[str, str] | None = None
) -> list[str]:
    """A table per evaluation plug-in (``descriptions``: label -> what it measures): one line
    per (method, budget, point)."""
    lines: list[str] = []
    fixed = {"evaluation", "method", "budget", "seeds", "crossbar_saving", "acc_mean",
             "acc_ci95", "acc_per_seed", "trials_per_seed", "selection_split",
             "metrics"}  # fmt: skip
    for label in dict.fromkeys(r["evaluation"] for r in rows):
        mine = [r for r in rows if r["evaluation"] == label]
        keys = [k for k in mine[0] if k not in fixed]
        mkeys = list(dict.fromkeys(k for r in mine for k in r.get("metrics") or {}))
        desc = (descriptions or {}).get(label, "")
        lines += [
            "",
            f"## Evaluation `{label}`" + (f": {desc}" if desc else ""),
            "",
            "Test-split measurements of the finished arms (mean ± 95 % CI over seeds, chips "
            "nested per seed); nothing is selected on them.",
            "",
            "| method | budget | arm's crossbar saving (%) | "
            + " | ".join([*keys, *mkeys])
            + " | accuracy (%) | seeds | trials/seed |",
            "|---|---|---|" + "---|" * (len(keys) + len(mkeys)) + "---|---|---|",
        ]
        for r in mine:
            b = r["budget"] if r["budget"] is not None else "–"
            lines.append(
                f"| {r['method']} | {b} | {_pct(r['crossbar_saving'])} | "
                + " | ".join(
                    f"{r[k]:g}" if isinstance(r[k], int | float) else str(r[k]) for k in keys
                )  # fmt: skip
                + "".join(f" | {format_mean_ci((r.get('metrics') or {}).get(k))}" for k in mkeys)
                + f" | {_pct(r['acc_mean'], r['acc_ci95'])} | {len(r['seeds'])} | "
                f"{r['trials_per_seed']} |"
            )
    return lines


def matched(rows: Sequence[dict], savings: Sequence[float]) -> list[dict]:
    """Accuracy of each method at matched crossbar saving: per seed, interpolated along the
    method's budgets; mean and 95 % CI over the seeds where the saving is inside its range."""
    out = []
    keys = sorted({(r["nonideal"], r["time"]) for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for preset, tl in keys:
        for m in methods:
            mr = [
                r for r in rows if r["method"] == m and (r["nonideal"], r["time"]) == (preset, tl)
            ]
            seeds = sorted({s for r in mr for s in r["seeds"]})
            for target in savings:
                per_seed: dict[int, float] = {}
                ideal_seed: dict[int, float] = {}
                for s in seeds:
                    pts, ipts = [], []
                    for r in mr:
                        if s in r["seeds"]:
                            i = r["seeds"].index(s)
                            pts.append((r["crossbar_saving_per_seed"][i],
                                        r["acc_nonideal_per_seed"][i]))  # fmt: skip
                            ipts.append((r["crossbar_saving_per_seed"][i],
                                         r["acc_ideal_per_seed"][i]))  # fmt: skip
                    v, vi = interpolate(pts, target), interpolate(ipts, target)
                    if v is not None and vi is not None:
                        per_seed[s], ideal_seed[s] = v, vi
                mean, ci = mean_ci95(list(per_seed.values()))
                imean, ici = mean_ci95(list(ideal_seed.values()))
                out.append(
                    {
                        "method": m,
                        "nonideal": preset,
                        "time": tl,
                        "saving": target,
                        "seeds": sorted(per_seed),
                        "acc_nonideal_mean": mean if per_seed else None,
                        "acc_nonideal_ci95": ci,
                        "acc_nonideal_per_seed": [per_seed[s] for s in sorted(per_seed)],
                        "acc_ideal_mean": imean if ideal_seed else None,
                        "acc_ideal_ci95": ici,
                    }
                )
    return out


def ranking(match_rows: Sequence[dict], at: float) -> list[dict]:
    """Methods ranked by mean non-ideal accuracy at saving ``at`` per (preset, time), with the
    paired (same seed) difference to the best method and its 95 % CI."""
    out = []
    keys = sorted({(r["nonideal"], r["time"]) for r in match_rows})
    for preset, tl in keys:
        cand = [
            r
            for r in match_rows
            if (r["nonideal"], r["time"]) == (preset, tl)
            and abs(r["saving"] - at) < 1e-9
            and r["acc_nonideal_mean"] is not None
        ]
        cand.sort(key=lambda r: -r["acc_nonideal_mean"])
        if not cand:
            continue
        best = cand[0]
        bs = dict(zip(best["seeds"], best["acc_nonideal_per_seed"], strict=True))
        for rank, r in enumerate(cand, 1):
            mine = dict(zip(r["seeds"], r["acc_nonideal_per_seed"], strict=True))
            common = sorted(set(bs) & set(mine))
            d_mean, d_ci = mean_ci95([mine[s] - bs[s] for s in common])
            out.append(
                {
                    "nonideal": preset,
                    "time": tl,
                    "saving": at,
                    "rank": rank,
                    "method": r["method"],
                    "acc_nonideal_mean": r["acc_nonideal_mean"],
                    "acc_nonideal_ci95": r["acc_nonideal_ci95"],
                    "seeds": r["seeds"],
                    "diff_to_best_mean": d_mean if common else None,
                    "diff_to_best_ci95": d_ci,
                    "paired_seeds": common,
                }
            )
    return out


_TOP_METRICS = ("crossbar_saving", "area_saving", "energy_saving", "acc_val")


def _metric(record: dict, name: str) -> float | None:
    """A record's ``name``: the bench's savings, else the method's own metric of that name."""
    if name in _TOP_METRICS:
        v = record.get(name)
    else:
        v = (record.get("method_metrics") or {}).get(name)
    return None if v is None else float(v)


def select_targets(records: Sequence[dict], targets: Sequence[TargetSpec]) -> list[dict]:
    """Per target and seed, the arm :class:`TargetSpec` chooses on the **validation** split
    (``acc_val``; the dense arm's for ``max_val_drop``), then what the chosen arms measure on
    the test split, averaged over the seeds that met the target (mean ± 95 % CI): the
    accuracy a user gets by following the rule, with the rule's own selection noise in it.
    Test accuracies are read after the choice and never by it."""
    out = []
    seeds = sorted({int(r["seed"]) for r in records})
    for t in targets:
        per_seed: list[dict] = []
        missing_metric = True
        for seed in seeds:
            recs = sorted((r for r in records if int(r["seed"]) == seed),
                          key=lambda r: (r["method"], str(r["budget"])))  # fmt: skip
            dense = next((r for r in recs if r["method"] == t.reference), None)
            dense_val = dense.get("acc_val") if dense else None
            entry: dict[str, Any] = {"seed": seed, "met": False, "reference_acc_val": dense_val}
            if t.max_val_drop is not None and dense_val is None:
                entry["why"] = f"no {t.reference} arm with a validation accuracy in this seed"
                per_seed.append(entry)
                continue
            best: tuple[float, float] | None = None
            chosen = None
            n = 0
            for r in recs:
                if (t.methods and r["method"] not in t.methods) or (
                    not t.methods and (r["method_name"] == "none" or r["method"] == t.reference)
                ):
                    continue
                v, a = _metric(r, t.metric), r.get("acc_val")
                if v is not None:
                    missing_metric = False
                if v is None or a is None:
                    continue
                if t.min_metric is not None and v < t.min_metric:
                    continue
                if t.min_val_accuracy is not None and a < t.min_val_accuracy:
                    continue
                if t.max_val_drop is not None and dense_val - a > t.max_val_drop + 1e-12:
                    continue
                n += 1
                if best is None or (v, a) > best:
                    best, chosen = (v, a), r
            entry["feasible_arms"] = n
            if chosen is not None and best is not None:
                entry.update(
                    met=True,
                    method=chosen["method"],
                    budget=chosen["budget"],
                    metric=best[0],
                    acc_val=best[1],
                    # measured on the test split after the choice
                    acc_ideal=chosen["acc_ideal"],
                    crossbar_saving=chosen["crossbar_saving"],
                    nonideal={
                        p: {tl: statistics.fmean(v) for tl, v in ts.items()}
                        for p, ts in chosen["nonideal"].items()
                    },
                )
            per_seed.append(entry)
        met = [e for e in per_seed if e["met"]]
        agg: dict[str, Any] = {}
        if met:
            for k in ("metric", "acc_val", "acc_ideal", "crossbar_saving"):
                m, ci = mean_ci95([e[k] for e in met])
                agg[k] = {"mean": m, "ci95": ci}
            agg["nonideal"] = {
                p: {
                    tl: dict(zip(("mean", "ci95"),
                                 mean_ci95([e["nonideal"][p][tl] for e in met]), strict=True))
                    for tl in met[0]["nonideal"][p]
                }
                for p in met[0]["nonideal"]
                if all(p in e["nonideal"] for e in met)
            }  # fmt: skip
        choices: dict[str, int] = {}
        for e in met:
            c = f"{e['method']}@{_budget_name(e['budget'])}"
            choices[c] = choices.get(c, 0) + 1
        out.append(
            {
                "label": t.label,
                "rule": {
                    "methods": list(t.methods),
                    "metric": t.metric,
                    "min_metric": t.min_metric,
                    "min_val_accuracy": t.min_val_accuracy,
                    "max_val_drop": t.max_val_drop,
                    "reference": t.reference,
                },
                "selection_split": "val",
                "seeds": seeds,
                "seeds_met": len(met),
                "choices": choices,
                "per_seed": per_seed,
                **(
                    {"error": f"no arm of this target reports the metric {t.metric!r}"}
                    if missing_metric and records
                    else {}
                ),  # fmt: skip
                **agg,
            }
        )
    return out


def targets_markdown(targets: Sequence[dict]) -> list[str]:
    """The targets' choices (made on validation) and what the chosen arms measure on test."""
    if not targets:
        return []
    lines = [
        "",
        "## Targets: the best arm that meets each, chosen per seed on the validation split",
        "",
        "The test figures are those of the arm each seed chose, averaged over the seeds that met "
        "the target: what following the rule gives, its selection noise included.",
        "",
        "| target | rule | seeds met | chosen (seeds) | metric | validation (%) | ideal test (%) "
        "| crossbar saving (%) | non-ideal test (%) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for t in targets:
        r = t["rule"]
        rule = [f"max {r['metric']}"]
        if r["min_metric"] is not None:
            rule.append(f"{r['metric']} ≥ {r['min_metric']:g}")
        if r["min_val_accuracy"] is not None:
            rule.append(f"val ≥ {100 * r['min_val_accuracy']:.2f} %")
        if r["max_val_drop"] is not None:
            rule.append(f"val drop to {r['reference']} ≤ {100 * r['max_val_drop']:.2f} pp")
        if r["methods"]:
            rule.append("among " + ", ".join(r["methods"]))
        ch = ", ".join(f"{k} ({v})" for k, v in t["choices"].items()) or "–"
        ni = (
            "; ".join(
                f"{p} {tl}: {_pct(v['mean'], v['ci95'])}"
                for p, ts in (t.get("nonideal") or {}).items()
                for tl, v in ts.items()
            )
            or "–"
        )
        m = t.get("metric")
        mtxt = (f"{m['mean']:.4g}" + (f" ± {m['ci95']:.2g}" if m["ci95"] is not None else "")
                if m else "–")  # fmt: skip
        cells = [_pct((t.get(k) or {}).get("mean"), (t.get(k) or {}).get("ci95"))
                 for k in ("acc_val", "acc_ideal", "crossbar_saving")]  # fmt: skip
        lines.append(
            f"| {t['label']} | {'; '.join(rule)} | {t['seeds_met']} of {len(t['seeds'])} | "
            f"{ch} | {mtxt} | " + " | ".join(cells) + f" | {ni} |"
        )
        if t.get("error"):
            lines.append(f"| {t['label']} | **{t['error']}** | | | | | | | |")
    return lines


def hwa_effects(records: Sequence[dict]) -> list[dict]:
    """The paired effect of hardware-aware fine-tuning: each arm fine-tuned with ``hwa``
    against the arm of the same registered method, budget and seed without it.

    Per (method, budget, preset, time) and seed, the accuracy loss is the arm's own ideal
    accuracy minus its non-ideal accuracy (mean over trials). ``loss_removed`` is
    ``1 - mean(loss_hwa) / mean(loss_plain)`` over the paired seeds (Joshi et al. 2020 and
    Rasch et al. 2023 report HWA as the share of the non-ideal loss it recovers);
    ``loss_removed_per_seed`` and its CI are the per-seed ratios; ``ideal_delta`` is the paired
    change of ideal accuracy (HWA minus plain).
    """
    plain = {(r["method_name"], r["budget"], r["seed"]): r for r in records if not r.get("hwa")}
    groups: dict[tuple, list[tuple[dict, dict]]] = {}
    for r in records:
        if not r.get("hwa"):
            continue
        p = plain.get((r["method_name"], r["budget"], r["seed"]))
        if p is not None:
            groups.setdefault((r["method"], p["method"], r["budget"]), []).append((p, r))
    out = []
    for (tag, plain_tag, budget), pairs in groups.items():
        pairs.sort(key=lambda pr: pr[0]["seed"])
        first = pairs[0][1]
        for preset in first["nonideal"]:
            for tlabel in first["nonideal"][preset]:
                lp, lh, ratio = [], [], []
                for p, h in pairs:
                    a = p["acc_ideal"] - statistics.fmean(p["nonideal"][preset][tlabel])
                    b = h["acc_ideal"] - statistics.fmean(h["nonideal"][preset][tlabel])
                    lp.append(a)
                    lh.append(b)
                    ratio.append(1.0 - b / a if a > 0 else float("nan"))
                dideal = [h["acc_ideal"] - p["acc_ideal"] for p, h in pairs]
                gain = [
                    statistics.fmean(h["nonideal"][preset][tlabel])
                    - statistics.fmean(p["nonideal"][preset][tlabel])
                    for p, h in pairs
                ]
                mp, cp = mean_ci95(lp)
                mh, ch = mean_ci95(lh)
                rm, rc = mean_ci95([x for x in ratio if not math.isnan(x)])
                dm, dc = mean_ci95(dideal)
                gm, gc = mean_ci95(gain)
                out.append(
                    {
                        "method": plain_tag,
                        "method_name": first["method_name"],
                        "hwa_method": tag,
                        "budget": budget,
                        "crossbar_saving": statistics.fmean(h["crossbar_saving"] for _, h in pairs),
                        "nonideal": preset,
                        "time": tlabel,
                        "time_s": parse_time(tlabel),
                        "seeds": [p["seed"] for p, _ in pairs],
                        "loss_plain_mean": mp,
                        "loss_plain_ci95": cp,
                        "loss_hwa_mean": mh,
                        "loss_hwa_ci95": ch,
                        "loss_removed": (1.0 - mh / mp) if mp > 0 else None,
                        "loss_removed_per_seed": ratio,
                        "loss_removed_seed_mean": rm,
                        "loss_removed_seed_ci95": rc,
                        "ideal_delta_mean": dm,
                        "ideal_delta_ci95": dc,
                        "nonideal_gain_mean": gm,
                        "nonideal_gain_ci95": gc,
                    }
                )
    return out


def _pairings(records: Sequence[dict], pairs: Sequence[Sequence[str]]) -> list[tuple]:
    """``(a, b, budget, budget of b, seeds, a's records, b's records)`` per pair and budget:
    budgets matched by value (None with None); where ``b`` has no arm at a's budget but has a
    budget-less one (the dense model), every budget of ``a`` pairs with that one; seeds are
    those both have, in order."""
    by = {(r["method"], r["budget"], r["seed"]): r for r in records}
    out = []
    for a, b in pairs:
        b_budgets = {bud for (m, bud, _) in by if m == b}

        def partner(bud: float | None, b_budgets: set = b_budgets) -> float | None:
            return bud if bud in b_budgets or None not in b_budgets else None

        keys = sorted(
            {(bud, seed) for (m, bud, seed) in by if m == a and (b, partner(bud), seed) in by},
            key=lambda k: (k[0] is not None, k[0] or 0.0, k[1]),
        )
        for bud in dict.fromkeys(k[0] for k in keys):
            seeds = [sd for (bb, sd) in keys if bb == bud]
            ra = [by[(a, bud, sd)] for sd in seeds]
            rb = [by[(b, partner(bud), sd)] for sd in seeds]
            out.append((a, b, bud, partner(bud), seeds, ra, rb))
    return out


def evaluation_pairs(records: Sequence[dict], pairs: Sequence[Sequence[str]]) -> list[dict]:
    """The ``pairs`` on the evaluation plug-ins' points: per (pair, budget, evaluation,
    point) the per-seed differences a - b of the seed means (the same chip seeds in both
    arms), their mean and 95 % CI."""
    from xbarprune.experiment.evaluations import point_key

    out = []
    for a, b, bud, bud_b, seeds, ra, rb in _pairings(records, pairs):
        labels = [k for k in (ra[0].get("evaluations") or {})
                  if all(k in (r.get("evaluations") or {}) for r in [*ra, *rb])]  # fmt: skip
        for label in labels:
            pa = [{point_key(p): p for p in r["evaluations"][label]} for r in ra]
            pb = [{point_key(p): p for p in r["evaluations"][label]} for r in rb]
            for at in pa[0]:
                if not all(at in x for x in [*pa, *pb]):
                    continue
                d = [
                    statistics.fmean(x[at]["per_trial"]) - statistics.fmean(y[at]["per_trial"])
                    for x, y in zip(pa, pb, strict=True)
                ]
                m, ci = mean_ci95(d)
                out.append({"a": a, "b": b, "budget": bud, "budget_b": bud_b,
                            "evaluation": label, **json.loads(at), "seeds": seeds,
                            "diff_mean": m, "diff_ci95": ci, "diff_per_seed": d})  # fmt: skip
    return out


def evaluation_pairs_markdown(comparisons: Sequence[dict]) -> list[str]:
    if not comparisons:
        return []
    fixed = {"a", "b", "budget", "budget_b", "evaluation", "seeds", "diff_mean", "diff_ci95",
             "diff_per_seed"}  # fmt: skip
    keys = list(dict.fromkeys(k for c in comparisons for k in c if k not in fixed))
    lines = [
        "",
        "## Paired comparisons on the evaluations (a − b, same budget and seed; pp)",
        "",
        "| evaluation | a | b | budget | " + " | ".join(keys) + " | Δ accuracy (pp) | seeds |",
        "|---|---|---|---|" + "---|" * len(keys) + "---|---|",
    ]
    for c in comparisons:
        bud = "–" if c["budget"] is None else f"{c['budget']:g}"
        if c["budget_b"] != c["budget"]:
            bud += " / –"
        ci = f" ± {100 * c['diff_ci95']:.2f}" if c["diff_ci95"] is not None else ""
        lines.append(
            f"| {c['evaluation']} | {c['a']} | {c['b']} | {bud} | "
            + " | ".join(f"{c.get(k, '–')}" for k in keys)
            + f" | {100 * c['diff_mean']:+.2f}{ci} | {len(c['seeds'])} |"
        )
    return lines


def paired_comparisons(records: Sequence[dict], pairs: Sequence[Sequence[str]]) -> list[dict]:
    """Method ``a`` against method ``b`` (labels), paired by budget and seed: per (budget,
    preset, time) the per-seed differences a - b of ideal accuracy and of non-ideal accuracy
    (each seed's mean over its trials; trial i of both arms sees the same chip seed), their mean
    and 95 % CI over the seeds both have. Budgets are matched by value (None with None); where
    ``b`` has no arm at a's budget but has a budget-less one (the dense model, ``none``), every
    budget of ``a`` is paired with that one."""
    out = []
    for a, b, bud, bud_b, seeds, ra, rb in _pairings(records, pairs):
        dideal = [x["acc_ideal"] - y["acc_ideal"] for x, y in zip(ra, rb, strict=True)]
        im, ici = mean_ci95(dideal)
        for preset in ra[0]["nonideal"]:
            for tlabel in ra[0]["nonideal"][preset]:
                d = [
                    statistics.fmean(x["nonideal"][preset][tlabel])
                    - statistics.fmean(y["nonideal"][preset][tlabel])
                    for x, y in zip(ra, rb, strict=True)
                ]
                m, ci = mean_ci95(d)
                # the accuracy each loses to the non-idealities, a's minus b's (Bhattacharjee
                # et al. 2022 compare sparse and dense models by this drop)
                dl = [di - dn for di, dn in zip(dideal, d, strict=True)]
                lm, lci = mean_ci95(dl)
                out.append(
                    {
                        "a": a,
                        "b": b,
                        "budget": bud,
                        "budget_b": bud_b,
                        "nonideal": preset,
                        "time": tlabel,
                        "seeds": seeds,
                        "saving_a": statistics.fmean(x["crossbar_saving"] for x in ra),
                        "saving_b": statistics.fmean(y["crossbar_saving"] for y in rb),
                        "ideal_diff_mean": im,
                        "ideal_diff_ci95": ici,
                        "ideal_diff_per_seed": dideal,
                        "nonideal_diff_mean": m,
                        "nonideal_diff_ci95": ci,
                        "nonideal_diff_per_seed": d,
                        "loss_diff_mean": lm,
                        "loss_diff_ci95": lci,
                        "loss_diff_per_seed": dl,
                    }
                )
    return out


def pairs_markdown(comparisons: Sequence[dict]) -> list[str]:
    if not comparisons:
        return []
    lines = [
        "",
        "## Paired comparisons (a − b, same budget, or b dense, and same seed; mean ± 95 % CI over "
        "seeds, pp)",
        "",
        "| a | b | budget | saving a / b (%) | non-ideality | time | Δ ideal | Δ non-ideal | "
        "Δ loss to the non-idealities | seeds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def pp(m: float, ci: float | None) -> str:
        return f"{100 * m:+.2f}" + (f" ± {100 * ci:.2f}" if ci is not None else "")

    for c in comparisons:
        b = c["budget"] if c["budget"] is not None else "–"
        if c.get("budget_b", c["budget"]) != c["budget"]:
            b = f"{b} / –"  # against b's budget-less (dense) arm
        lines.append(
            f"| {c['a']} | {c['b']} | {b} | {100 * c['saving_a']:.1f} / "
            f"{100 * c['saving_b']:.1f} | {c['nonideal']} | {c['time']} | "
            f"{pp(c['ideal_diff_mean'], c['ideal_diff_ci95'])} | "
            f"{pp(c['nonideal_diff_mean'], c['nonideal_diff_ci95'])} | "
            f"{pp(c['loss_diff_mean'], c['loss_diff_ci95'])} | {len(c['seeds'])} |"
        )
    return lines


def hwa_markdown(effects: Sequence[dict], with_model: bool = False) -> list[str]:
    """The Markdown table of :func:`hwa_effects` (a ``model`` column first if asked)."""
    if not effects:
        return []
    lines = [
        "",
        "## Hardware-aware fine-tuning (paired with the same method, budget and seed)",
        "",
        "Loss = the arm's ideal accuracy minus its non-ideal accuracy; removed = 1 − "
        "mean(loss with HWA) / mean(loss without); Δ ideal and the non-ideal gain are paired "
        "differences (HWA − plain), mean ± 95 % CI over seeds.",
        "",
        ("| model " if with_model else "")
        + "| method | budget | saving (%) | non-ideality | time | loss plain (pp) | "
        "loss HWA (pp) | removed (%) | Δ ideal (pp) | non-ideal gain (pp) | seeds |",
        ("|---" if with_model else "") + "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in effects:
        rem = "–" if e["loss_removed"] is None else f"{100 * e['loss_removed']:.0f}"
        lines.append(
            (f"| {e['model']} " if with_model else "")
            + f"| {e['method']} | {e['budget'] if e['budget'] is not None else '–'} | "
            f"{100 * e['crossbar_saving']:.1f} | {e['nonideal']} | {e['time']} | "
            f"{_pct(e['loss_plain_mean'], e['loss_plain_ci95'])} | "
            f"{_pct(e['loss_hwa_mean'], e['loss_hwa_ci95'])} | {rem} | "
            f"{_pct(e['ideal_delta_mean'], e['ideal_delta_ci95'])} | "
            f"{_pct(e['nonideal_gain_mean'], e['nonideal_gain_ci95'])} | {len(e['seeds'])} |"
        )
    return lines


# ---------------------------------------------------------------------------- output
def selection_markdown(records: Sequence[dict]) -> list[str]:
    """The HWA weight noise each arm chose on the validation split
    (``finetune.hwa.select_weight_noise``), with every candidate's validation accuracy."""
    sel = [r for r in records if r.get("hwa_selection")]
    if not sel:
        return []
    s0 = sel[0]["hwa_selection"]
    lines = [
        "",
        "## HWA weight noise chosen on the validation split",
        "",
        f"Each candidate fine-tuned from the same model and seed, measured under "
        f"{s0['preset']} at {s0['time']} on the validation images with {s0['trials']} chips "
        "(chip seeds disjoint from the final measurement's); the test split was not read.",
        "",
        "| method | budget | seed | validation accuracy per candidate (%) | chosen |",
        "|---|---|---|---|---|",
    ]
    for r in sorted(sel, key=lambda r: (r["method"], str(r["budget"]), r["seed"])):
        h = r["hwa_selection"]
        cands = ", ".join(
            f"{c:g}: {100 * a:.2f}" for c, a in zip(h["candidates"], h["val_acc"], strict=True)
        )
        b = r["budget"] if r["budget"] is not None else "–"
        lines.append(f"| {r['method']} | {b} | {r['seed']} | {cands} | {h['chosen']:g} |")
    return lines


def failed_markdown(failed: Sequence[dict]) -> list[str]:
    """Arms whose method or training failed on its own numbers: not in any row, so those rows
    average over fewer seeds (their ``seeds`` column says which)."""
    if not failed:
        return []
    lines = [
        "",
        "## Failed arms (not in any row: those rows have fewer seeds)",
        "",
        "| arm | error |",
        "|---|---|",
    ]
    for r in failed:
        lines.append(f"| {r['key']} | {str(r['failed']).replace('|', '/')} |")
    return lines


def metrics_markdown(rows: Sequence[dict]) -> list[str]:
    """The methods' own metrics (:func:`_method_metrics`), one line per (method, budget)."""
    seen: dict[tuple, dict] = {}
    for r in rows:
        if r.get("method_metrics"):
            seen.setdefault((r["method"], r["budget"]), r)
    if not seen:
        return []
    keys = sorted({k for r in seen.values() for k in r["method_metrics"]})
    lines = [
        "",
        "## The methods' own metrics (mean ± 95 % CI over seeds)",
        "",
        "| method | budget | " + " | ".join(keys) + " | ideal (%) | seeds |",
        "|---|---|" + "---|" * len(keys) + "---|---|",
    ]
    for (method, budget), r in seen.items():
        cells = [format_mean_ci(r["method_metrics"].get(k)) for k in keys]
        b = budget if budget is not None else "–"
        lines.append(
            f"| {method} | {b} | "
            + " | ".join(cells)
            + f" | {_pct(r['acc_ideal_mean'], r['acc_ideal_ci95'])} | {len(r['seeds'])} |"
        )
    return lines


def _pct(x: float | None, ci: float | None = None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{100 * x:.2f}" + (f" ± {100 * ci:.2f}" if ci is not None else "")


def ranking_markdown(summary: dict, level: str = "##") -> list[str]:
    """The ranking at ``rank_at`` saving (interpolated per seed, Δ to the best paired)."""
    rank = summary["ranking"]
    lines = [
        f"{level} Ranking at {100 * summary['rank_at']:.0f} % crossbar saving "
        "(interpolated per seed)",
        "",
    ]
    if rank:
        lines += [
            "| non-ideality | time | rank | method | accuracy (%) | Δ to best (pp, paired) "
            "| seeds |",
            "|---|---|---|---|---|---|---|",
        ]
    else:  # interpolation never extrapolates: a method ranks only where its curve spans `at`
        lines.append(
            "Nothing is ranked: no method's achieved savings span this saving (the curves are "
            "interpolated, never extrapolated)."
        )
    for r in rank:
        d = r["diff_to_best_mean"]
        dtxt = (
            "–"
            if d is None
            else f"{100 * d:+.2f}"
            + (
                f" ± {100 * r['diff_to_best_ci95']:.2f}"
                if r["diff_to_best_ci95"] is not None
                else ""
            )
        )
        lines.append(
            f"| {r['nonideal']} | {r['time']} | {r['rank']} | {r['method']} | "
            f"{_pct(r['acc_nonideal_mean'], r['acc_nonideal_ci95'])} | {dtxt} | "
            f"{len(r['seeds'])} |"
        )
    return lines


def _merged_lines(merged: Sequence[dict], depth: int = 0) -> list[str]:
    """summary.md's provenance lines: each merged summary, then (indented by "via") the
    summaries it had merged itself, down the whole chain of a bench built in parts."""
    out = []
    for m in merged:
        compute, new = m.get("compute_s"), m.get("compute_new_s")
        out.append(
            ("  " * depth + "↳ via that: " if depth else "")
            + f"Merged: {m['records']} record(s) of `{m['command']}` ({m['from']}; wall time "
            f"{m['wall_time_s']} s, compute "
            + (f"{compute:.0f} s" if compute is not None else "unknown")
            + (f", {new:.0f} s of it new)" if new is not None else ")")
            + (
                f"; **this run's {', '.join(m['replaced_differing'])} differ(s) from the merged "
                "record: its arms were built on another dense model**"
                if m.get("replaced_differing")
                else ""
            )
            + "  "
        )
        out += _merged_lines(m.get("merged") or [], depth + 1)
    return out


def _new_compute(header: dict) -> str:
    """summary.md's note on how much of the arms' compute this invocation did (an arm found
    complete in the cache keeps the compute recorded when it ran, counted again in the total);
    empty for a summary written before this was recorded."""
    new = header.get("compute_new_s")
    if new is None or abs(new - header["compute_s"]) < 0.5:
        return ""
    return f" ({new:.0f} s of it computed by this invocation, the rest read from the arm cache)"


def to_markdown(summary: dict) -> str:
    h = summary["header"]
    rows = summary["rows"]
    nseeds = sorted({len(r["seeds"]) for r in rows})
    lines = [
        f"# Benchmark: {summary['model']} on {summary['dataset']}",
        "",
        f"Command: `{h['command']}`  ",
        f"Wall time: {h['wall_time_s']} s; compute of all arms: {h['compute_s']:.0f} s"
        + _new_compute(h)
        + f"; machine: {h['machine']}"
        + (
            f"  \nAll {len(h['invocations'])} invocations on this arm cache: "
            f"{h['wall_time_all_invocations_s']} s wall"
            + (
                f" ({h['interrupted_invocations']} of them interrupted before its end, wall "
                "time not recorded: the total is a lower bound)"
                if h.get("interrupted_invocations")
                else ""
            )
            if len(h.get("invocations") or []) > 1
            else ""
        ),
        *_merged_lines(h.get("merged", [])),
        "",
        f"Seeds per figure: {', '.join(map(str, nseeds))} "
        f"({'single-seed numbers: no confidence interval' if nseeds == [1] else 'mean ± 95 % CI over seeds (Student t), Monte Carlo trials nested per seed'}). "  # noqa: E501
        "Every selection read the validation split (carved from the training data); the test "
        "split was read by the final measurement only.",
        "",
    ]
    lines += ranking_markdown(summary)
    lines += [
        "",
        "## Every arm",
        "",
        "| method | budget | crossbar saving (%) | area saving (%) | ideal (%) | non-ideality | "
        "time | non-ideal (%) | seeds | trials/seed | compute (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        area = r.get("area_saving") or {}
        lines.append(
            f"| {r['method']} | {r['budget'] if r['budget'] is not None else '–'} | "
            f"{_pct(r['crossbar_saving'], r['crossbar_saving_ci95'])} | "
            f"{_pct(area.get('mean'), area.get('ci95'))} | "
            f"{_pct(r['acc_ideal_mean'], r['acc_ideal_ci95'])} | {r['nonideal']} | {r['time']} | "
            f"{_pct(r['acc_nonideal_mean'], r['acc_nonideal_ci95'])} | {len(r['seeds'])} | "
            f"{r['trials_per_seed']} | {r['compute_s']:.0f} |"
        )
    lines += failed_markdown(summary.get("failed", []))
    lines += targets_markdown(summary.get("targets", []))
    lines += metrics_markdown(rows)
    lines += evaluations_markdown(
        summary.get("evaluations", []), summary.get("evaluation_descriptions")
    )
    lines += pairs_markdown(summary.get("pairs", []))
    lines += evaluation_pairs_markdown(summary.get("evaluation_pairs", []))
    lines += hwa_markdown(summary.get("hwa", []))
    lines += selection_markdown(summary.get("records", []))
    if summary.get("paper"):
        lines += ["", "## The paper's numbers", "", summary["paper"].rstrip()]
    lines += ["", "![Pareto](pareto.png)", ""]
    return "\n".join(lines)


def pareto_plot(rows: Sequence[dict], path: Path) -> None:
    """Non-ideal accuracy against crossbars saved, one line per method, one panel per
    (non-ideality, time); error bars are the 95 % CIs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from xbarprune.io import atomic_write_bytes

    keys = sorted({(r["nonideal"], r["time"]) for r in rows})
    n = len(keys)
    cols = min(2, n)
    nrow = math.ceil(n / cols)
    fig, axes = plt.subplots(nrow, cols, figsize=(6 * cols, 4 * nrow), squeeze=False)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for ax, (preset, tl) in zip(axes.flat, keys, strict=False):
        for m in methods:
            mr = sorted(
                (
                    r
                    for r in rows
                    if r["method"] == m and (r["nonideal"], r["time"]) == (preset, tl)
                ),
                key=lambda r: r["crossbar_saving"],
            )
            if not mr:
                continue
            xs = [100 * r["crossbar_saving"] for r in mr]
            ys = [100 * r["acc_nonideal_mean"] for r in mr]
            es = [100 * (r["acc_nonideal_ci95"] or 0.0) for r in mr]
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=m)
        ax.set_title(f"{preset}, {tl} after programming")
        ax.set_xlabel("crossbars saved (%)")
        ax.set_ylabel("non-ideal test accuracy (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def _r(x: float | None, scale: float = 100.0, digits: int = 2) -> float | None:
    return (
        None if x is None or (isinstance(x, float) and math.isnan(x)) else round(scale * x, digits)
    )


def write_bench_html(summary: dict, path: Path) -> Path:
    """``report.html``: the ranking, every arm (percentages, 95 % CIs, seed counts) and the
    Pareto plot with one panel per (preset, time) and a toggle per method, offline."""
    from xbarprune.report.html import LinePlot, Series, Table, write_html

    rank = [
        {
            "non-ideality": r["nonideal"],
            "time": r["time"],
            "rank": r["rank"],
            "method": r["method"],
            "accuracy %": _r(r["acc_nonideal_mean"]),
            "± CI95 (pp)": _r(r["acc_nonideal_ci95"]),
            "Δ to best (pp)": _r(r["diff_to_best_mean"]),
            "± CI95 of Δ": _r(r["diff_to_best_ci95"]),
            "seeds": len(r["seeds"]),
        }
        for r in summary["ranking"]
    ]
    arms = [
        {
            "method": r["method"],
            "budget": r["budget"],
            "crossbar saving %": _r(r["crossbar_saving"]),
            "area saving %": _r((r.get("area_saving") or {}).get("mean")),
            "ideal %": _r(r["acc_ideal_mean"]),
            "ideal ± CI95": _r(r["acc_ideal_ci95"]),
            "non-ideality": r["nonideal"],
            "time": r["time"],
            "non-ideal %": _r(r["acc_nonideal_mean"]),
            "non-ideal ± CI95": _r(r["acc_nonideal_ci95"]),
            "seeds": len(r["seeds"]),
            "trials/seed": r["trials_per_seed"],
            "compute s": round(r["compute_s"], 1),
            "selection": r["selection_split"],
        }
        for r in summary["rows"]
    ]
    series = []
    for preset, tl in sorted({(r["nonideal"], r["time"]) for r in summary["rows"]}):
        for m in dict.fromkeys(r["method"] for r in summary["rows"]):
            mr = sorted(
                (r for r in summary["rows"]
                 if r["method"] == m and (r["nonideal"], r["time"]) == (preset, tl)),
                key=lambda r: r["crossbar_saving"],
            )  # fmt: skip
            if mr:
                series.append(
                    Series(
                        x=[100 * r["crossbar_saving"] for r in mr],
                        y=[100 * r["acc_nonideal_mean"] for r in mr],
                        yerr=[100 * (r["acc_nonideal_ci95"] or 0.0) for r in mr],
                        label=m,
                        tags={"method": m},
                        facet=f"{preset}, {tl}",
                        style={"marker": "o"},
                    )
                )
    h = summary["header"]
    n_seeds = sorted({len(r["seeds"]) for r in summary["rows"]})
    meta = {
        "command": h["command"],
        "wall time (s)": h["wall_time_s"],
        "compute of all arms (s)": round(h["compute_s"], 1),
        **(
            {"of it computed by this invocation (s)": round(h["compute_new_s"], 1)}
            if h.get("compute_new_s") is not None
            else {}
        ),
        "model / data": f"{summary['model']} / {summary['dataset']}",
        "seeds per figure": n_seeds,
        "selection": "validation split only; the test split is read by the final measurement",
    }
    at = f"{100 * summary['rank_at']:.0f} %"
    extra = []
    if summary.get("pairs"):
        extra.append(
            Table(
                "Paired comparisons (a − b, same budget, or b dense, and same seed; pp, CI95 "
                "over seeds)",
                [
                    {
                        "a": c["a"],
                        "b": c["b"],
                        "budget": c["budget"],
                        "budget b": c.get("budget_b", c["budget"]),
                        "non-ideality": c["nonideal"],
                        "time": c["time"],
                        "Δ ideal (pp)": _r(c["ideal_diff_mean"]),
                        "Δ ideal ± CI95": _r(c["ideal_diff_ci95"]),
                        "Δ non-ideal (pp)": _r(c["nonideal_diff_mean"]),
                        "Δ non-ideal ± CI95": _r(c["nonideal_diff_ci95"]),
                        "Δ loss (pp)": _r(c["loss_diff_mean"]),
                        "Δ loss ± CI95": _r(c["loss_diff_ci95"]),
                        "seeds": len(c["seeds"]),
                    }
                    for c in summary["pairs"]
                ],
            )
        )
    for label in dict.fromkeys(r["evaluation"] for r in summary.get("evaluations", [])):
        erows = [r for r in summary["evaluations"] if r["evaluation"] == label]
        skip = {"evaluation", "seeds", "acc_mean", "acc_ci95", "acc_per_seed",
                "trials_per_seed", "selection_split", "crossbar_saving", "metrics"}  # fmt: skip
        extra.append(
            Table(
                f"Evaluation {label} (test split, reported only; CI95 over seeds)",
                [
                    {
                        **{k: v for k, v in r.items() if k not in skip},
                        **{k: round(m["mean"], 4) for k, m in (r.get("metrics") or {}).items()},
                        "crossbar saving %": _r(r["crossbar_saving"]),
                        "accuracy %": _r(r["acc_mean"]),
                        "± CI95": _r(r["acc_ci95"]),
                        "seeds": len(r["seeds"]),
                        "trials/seed": r["trials_per_seed"],
                    }
                    for r in erows
                ],
            )
        )
    if summary.get("evaluation_pairs"):
        drop = {"diff_mean", "diff_ci95", "diff_per_seed", "seeds"}
        extra.append(
            Table(
                "Paired comparisons on the evaluations (a − b, same budget and seed; pp, CI95)",
                [
                    {
                        **{k: v for k, v in c.items() if k not in drop},
                        "Δ accuracy (pp)": _r(c["diff_mean"]),
                        "± CI95": _r(c["diff_ci95"]),
                        "seeds": len(c["seeds"]),
                    }
                    for c in summary["evaluation_pairs"]
                ],
            )
        )
    if summary.get("targets"):
        extra.append(
            Table(
                "Targets: the best arm meeting each, chosen per seed on the validation split "
                "(test figures of the chosen arms, CI95 over the seeds that met it)",
                [
                    {
                        "target": t["label"],
                        "metric": t["rule"]["metric"],
                        "seeds met": f"{t['seeds_met']} of {len(t['seeds'])}",
                        "chosen (seeds)": ", ".join(f"{k} ({v})" for k, v in t["choices"].items()),
                        "metric value": (t.get("metric") or {}).get("mean"),
                        "validation %": _r((t.get("acc_val") or {}).get("mean")),
                        "ideal test %": _r((t.get("acc_ideal") or {}).get("mean")),
                        "ideal ± CI95": _r((t.get("acc_ideal") or {}).get("ci95")),
                        "crossbar saving %": _r((t.get("crossbar_saving") or {}).get("mean")),
                    }
                    for t in summary["targets"]
                ],
            )
        )
    if summary.get("failed"):
        extra.append(
            Table(
                "Failed arms (in no row: those rows have fewer seeds)",
                [{"arm": r["key"], "error": r["failed"]} for r in summary["failed"]],
            )
        )
    return write_html(
        path,
        f"xbarprune bench: {summary['model']} on {summary['dataset']}",
        meta=meta,
        tables=[
            Table(
                f"Ranking at {at} crossbar saving (interpolated per seed; Δ paired by seed)", rank
            ),  # fmt: skip
            Table("Every arm (mean over seeds; CI95 = half-width of the 95 % t-interval)", arms),
            *extra,
        ],
        plots=[
            LinePlot(
                "Non-ideal accuracy against crossbars saved",
                series,
                xlabel="crossbars saved (%)",
                ylabel="non-ideal test accuracy (%)",
            )
        ],
    )


def run_bench(
    data: dict[str, Any],
    *,
    out: str | None = None,
    quick: bool = False,
    executor: str = "local",
    command: str = "xbarprune bench",
    log: Callable[[str], None] = print,
    merge: Sequence[str | Path] = (),
    only: Sequence[str] = (),
    methods: Sequence[str] = (),
) -> dict:
    """Plan, validate, execute and summarise a bench; returns the summary (also written to
    ``<out>/summary.json``, ``summary.md``, ``pareto.png`` and ``report.html``). ``merge``:
    earlier summaries whose records of arms this run does not plan join the summary
    (:func:`merge_records`; the header says which).

    With ``experiments``, each experiment is a bench in ``<out>/<label>/`` (its own summary
    and report); every experiment's arms are validated before the first one runs, and
    ``<out>/summary.json`` / ``summary.md`` index them. ``only`` (experiment labels) runs those
    alone; the index then also lists the others whose summaries an earlier invocation left in
    ``<out>/<label>/`` (a study spread over sessions, one experiment at a time)."""
    t0 = time.perf_counter()
    cfg = load_bench(data, quick=quick)
    outdir = Path(out or cfg.out or f"results/bench/{cfg.name}")
    if cfg.experiments and merge:
        raise ConfigError("--merge: not with `experiments` (merge each experiment's summary)")
    labels = [e.label for e in cfg.experiments]
    unknown = sorted(set(only) - set(labels))
    if unknown:
        allowed = ", ".join(labels) or "(none: the config has no experiments)"
        raise ConfigError(f"--experiment {', '.join(unknown)}: not an experiment label of this "
                          f"config; allowed: {allowed}")  # fmt: skip
    running = [e for e in cfg.experiments if not only or e.label in only]
    parts = (
        [(cfg.experiment(e), outdir / e.label) for e in running]
        if cfg.experiments
        else [(cfg, outdir)]
    )
    if methods:
        present = {m.tag for c, _o in parts for m in c.methods} | {"none"}
        unknown = sorted(set(methods) - present)
        if unknown:
            raise ConfigError(f"--method {', '.join(unknown)}: not a method label of this run; "
                              f"allowed: {', '.join(sorted(present))}")  # fmt: skip
        parts = [(c.restricted([t for t in methods if t in {m.tag for m in c.methods}],
                               "--method"), o) for c, o in parts]  # fmt: skip
    planned = [(c, o, plan_arms(c, o)) for c, o in parts]
    for _c, _o, arms in planned:  # a typo in the last experiment fails before any training
        validate_arms(arms)
    summaries = [
        _run_planned(
            c,
            o,
            arms,
            executor=executor,
            command=command,
            log=log,
            merge=merge,
            quick=quick,
            t0=None if cfg.experiments else t0,
        )  # fmt: skip
        for c, o, arms in planned
    ]
    if not cfg.experiments:
        return summaries[0]
    ran = dict(zip((e.label for e in running), summaries, strict=True))
    listed, earlier = [], []
    for e in cfg.experiments:
        if e.label in ran:
            listed.append((e, ran[e.label]))
            continue
        f = outdir / e.label / "summary.json"
        if f.is_file():  # left by an earlier invocation of this config
            listed.append((e, json.loads(f.read_text())))
            earlier.append(e.label)
    index = {
        "header": {
            "command": command,
            "wall_time_s": round(time.perf_counter() - t0, 1),
            "compute_s": sum(x["header"]["compute_s"] for x in summaries),
            "compute_new_s": sum(x["header"]["compute_new_s"] for x in summaries),
            "quick": quick,
            # experiments whose summaries earlier invocations wrote (not rerun by this one)
            **({"earlier_invocations": earlier} if earlier else {}),
        },
        "name": cfg.name,
        "selection_split": "val",
        "experiments": [
            {
                "label": e.label,
                "summary": f"{e.label}/summary.json",
                "model": x["model"],
                "dataset": x["dataset"],
                "presets": x["presets"],
                "seeds": x["seeds"],
                "arms": len(x["records"]),
                "failed": len(x["failed"]),
            }
            for e, x in listed
        ],
    }
    atomic_write_json(outdir / "summary.json", index)
    atomic_write_text(outdir / "summary.md", experiments_markdown(index, [x for _e, x in listed]))
    log(f"written {outdir / 'summary.json'} (index of {len(listed)} experiments)")
    return index


def experiments_markdown(index: dict, summaries: Sequence[dict]) -> str:
    """The index of a multi-experiment bench: one line per experiment, then each one's
    ranking (its full tables are in ``<label>/summary.md``)."""
    h = index["header"]
    lines = [
        f"# Benchmark: {index['name']} ({len(summaries)} experiments)",
        "",
        f"Command: `{h['command']}`  ",
        f"Wall time: {h['wall_time_s']} s; compute of all arms: {h['compute_s']:.0f} s"
        + _new_compute(h),
        *(
            [
                f"Not rerun by this invocation (summaries of earlier ones, each with its own "
                f"command and wall time): {', '.join(h['earlier_invocations'])}  "
            ]
            if h.get("earlier_invocations")
            else []
        ),  # fmt: skip
        "",
        "| experiment | model | data | presets | seeds | arms | failed | details |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in index["experiments"]:
        lines.append(
            f"| {e['label']} | {e['model']} | {e['dataset']} | {', '.join(e['presets'])} | "
            f"{len(e['seeds'])} | {e['arms']} | {e['failed']} | "
            f"[summary]({e['label']}/summary.md), [report]({e['label']}/report.html) |"
        )
    for e, x in zip(index["experiments"], summaries, strict=True):
        lines += ["", f"## {e['label']}: {e['model']} on {e['dataset']}", ""]
        lines += ranking_markdown(x, level="###")
    return "\n".join(lines) + "\n"


def _run_planned(
    cfg: BenchConfig,
    outdir: Path,
    arms: list[Arm],
    *,
    executor: str,
    command: str,
    log: Callable[[str], None],
    merge: Sequence[str | Path],
    quick: bool,
    t0: float | None = None,
) -> dict:
    """Execute the planned, validated ``arms`` of one bench and write its summary (its wall
    time counted from ``t0``, default now)."""
    import platform

    import torch

    t0 = time.perf_counter() if t0 is None else t0
    log(f"bench {cfg.name}: {len(arms)} arms ({len(cfg.seeds)} seed(s)) -> {outdir}")
    work = Path(arms[0].dir).parents[2]
    started = _start_invocation(work, command)
    records = execute(arms, executor=executor, workers=cfg.workers, log=log)
    from xbarprune.experiment.config import load_config

    base = load_config(arms[0].config)
    own_compute = sum(r["compute_s"] for r in records)
    new_compute = sum(r["compute_new_s"] for r in records)
    merged: list[dict] = []
    if merge:
        others = [(str(p), _load_summary(p)) for p in merge]
        records, merged = merge_records(records, base.model.name, base.data.name, others)
        log(f"merged {sum(m['records'] for m in merged)} record(s) from {len(merged)} summary")
    failed = [r for r in records if r.get("failed")]
    records = [r for r in records if not r.get("failed")]
    for r in failed:
        log(f"  arm {r['key']} FAILED: {r['failed']}")
    rows = build_rows(records, base.model.name, base.data.name)
    mrows = matched(rows, cfg.match_savings)
    wall = round(time.perf_counter() - t0, 1)
    history = _record_invocation(work, command, wall, started)
    pool = f"{cfg.workers} worker(s)" if executor == "local" else "Ray tasks of 1 thread"
    summary = {
        "header": {
            "command": command,
            "wall_time_s": wall,
            # every invocation on this arm cache, this one included (a resumed or refreshed
            # bench: the first invocation did the work, the last one wrote the summary)
            "invocations": history,
            "wall_time_all_invocations_s": round(
                sum(h["wall_time_s"] for h in history if h.get("wall_time_s") is not None), 1
            ),
            # invocations that started on this cache and never finished (killed, crashed):
            # their arms are in the cache, their wall time is not known
            "interrupted_invocations": sum(1 for h in history if h.get("interrupted")),
            # every arm's compute as recorded when it ran (a cached arm keeps its numbers), and
            # the part of it that this invocation computed (the rest was read from the cache)
            "compute_s": own_compute,
            "compute_new_s": new_compute,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {pool}, "
            f"{torch.get_num_threads()} torch threads here, "
            f"{'cuda' if torch.cuda.is_available() else 'cpu'}",
            "executor": executor,
            # how many arms shared the cores: an arm's compute is comparable with another's
            # only at the same workers per core (each record also keeps its torch threads)
            "workers": cfg.workers if executor == "local" else None,
            "cpu_count": os.cpu_count(),
            "quick": quick,
            "merged": merged,
        },
        "model": base.model.name,
        "dataset": base.data.name,
        "presets": list(cfg.presets),
        "nonideal_definitions": copy.deepcopy(cfg.nonideal),
        "seeds": sorted({int(r["seed"]) for r in records}),
        "rank_at": cfg.rank_at,
        "selection_split": "val",
        "rows": rows,
        "matched": mrows,
        "ranking": ranking(mrows, cfg.rank_at),
        "hwa": hwa_effects(records),
        "pairs": paired_comparisons(records, cfg.pairs),
        "evaluations": evaluation_rows(records),
        "evaluation_descriptions": {e.tag: e.description for e in cfg.evaluations},
        "evaluation_pairs": evaluation_pairs(records, cfg.pairs),
        "targets": select_targets(records, cfg.targets),
        "paper": cfg.paper,
        "records": records,
        "failed": failed,
    }
    ensure_dir(outdir)
    pareto_plot(rows, outdir / "pareto.png")
    atomic_write_json(outdir / "summary.json", summary)
    atomic_write_text(outdir / "summary.md", to_markdown(summary))
    write_bench_html(summary, outdir / "report.html")
    log(f"written {outdir / 'summary.json'}, summary.md, pareto.png")
    return summary


def _read_invocations(work: Path) -> list[dict]:
    path = work / "bench_invocations.json"
    if path.is_file():
        try:
            return [dict(h) for h in json.loads(path.read_text())]
        except (OSError, ValueError, TypeError):
            return []
    return []


def _now() -> str:
    import datetime

    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")


def _start_invocation(work: Path, command: str) -> str:
    """Note in ``<work>/bench_invocations.json`` that an invocation started (before any arm
    runs), so that one killed before its end is still on record; returns its start stamp."""
    started = _now()
    history = [*_read_invocations(work), {"command": command, "started": started,
                                          "wall_time_s": None}]  # fmt: skip
    ensure_dir(work)
    atomic_write_json(work / "bench_invocations.json", history)
    return started


def _record_invocation(work: Path, command: str, wall_s: float, started: str) -> list[dict]:
    """Finish this invocation's entry (command, wall time, when) in
    ``<work>/bench_invocations.json`` (atomic write) and return the whole list; an entry
    that started and never finished (another invocation, killed) is marked ``interrupted``.
    Lost with the arm cache, as it should be: a fresh cache starts a fresh account."""
    history, mine = [], False
    for h in _read_invocations(work):
        if h.get("started") == started:
            mine = True
            # a run still going when another one finished was marked interrupted by it
            h = {k: v for k, v in h.items() if k != "interrupted"}
            h |= {"wall_time_s": wall_s, "finished": _now()}
        elif "finished" not in h:
            h = {**h, "interrupted": True}
        history.append(h)
    if not mine:  # the file was removed or unreadable meanwhile: this run is still counted
        history.append({"command": command, "started": started, "wall_time_s": wall_s,
                        "finished": _now()})  # fmt: skip
    ensure_dir(work)
    atomic_write_json(work / "bench_invocations.json", history)
    return history


def merge_records(
    records: Sequence[dict], model: str, dataset: str, others: Sequence[tuple[str, dict]]
) -> tuple[list[dict], list[dict]]:
    """``records`` plus the records of earlier summaries (``(path, summary)``) that this
    run did not produce (by arm key: method, budget, seed): a bench spread over sessions
    whose arm cache is gone (e.g. seeds 0-1 one day, seed 2 another). Returns the records
    and one provenance entry per summary (path, its command, records taken, wall and
    compute time, and under ``merged`` that summary's own provenance entries, recursively).
    A summary of another model or dataset is an error; so is a record key produced by two
    merged summaries (which one would count?). Where this run's arm replaces
    a merged one (a part of a bench run by method recomputes the seed's dense arm), the entry
    lists under ``replaced_differing`` the keys whose accuracies differ: the merged arms were
    then built on another dense model than the one reported."""
    have = {r["key"]: r for r in records}
    out, prov = list(records), []
    taken: dict[str, str] = {}
    for path, other in others:
        if (other.get("model"), other.get("dataset")) != (model, dataset):
            raise ConfigError(
                f"--merge {path}: a bench of {other.get('model')} on {other.get('dataset')}, "
                f"this one is {model} on {dataset}"
            )
        n, differing = 0, []
        for r in [*other.get("records", []), *other.get("failed", [])]:
            if r["key"] in have:  # this run's own arm wins
                mine = have[r["key"]]
                if any(mine.get(k) != r.get(k) for k in ("acc_ideal", "acc_val", "nonideal")):
                    differing.append(r["key"])
                continue
            if r["key"] in taken:
                raise ConfigError(
                    f"--merge: arm {r['key']} is in both {taken[r['key']]} and {path}"
                )
            taken[r["key"]] = path
            out.append(r)
            n += 1
        h = other.get("header", {})
        prov.append(
            {
                "from": path,
                "command": h.get("command"),
                "records": n,
                "wall_time_s": h.get("wall_time_s"),
                "compute_s": h.get("compute_s"),
                "compute_new_s": h.get("compute_new_s"),
                "replaced_differing": differing,
                # what that summary had merged itself: the whole chain of a bench built in
                # parts over several sessions stays in the newest summary
                "merged": list(h.get("merged") or []),
            }
        )
    return out, prov


def _load_summary(path: str | Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"--merge {path}: not a readable summary.json ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("records"), list):
        raise ConfigError(f"--merge {path}: a bench summary.json has a 'records' list")
    return data


def load_bench_file(path: str | Path) -> dict:
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a bench config is a mapping")
    return data
