"""The compression-method interface and registry (``xbarprune methods``).

A method is a class with a ``name``, a one-line ``summary``, a ``Params`` dataclass (its config
section, validated by :func:`xbarprune.config.from_dict`) and ``compress(ctx) -> CompressResult``.
It prunes (and may regularise-train, quantise or re-lay out) ``ctx.model`` in place, on the
crossbar groups of ``ctx.layout``; the pipeline then fine-tunes with the returned masks fixed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import torch
from torch import nn

from xbarprune.data.heldout import selection_data, split_role
from xbarprune.errors import ConfigError
from xbarprune.hardware.spec import DeviceSpec
from xbarprune.mapping.layout import CrossbarLayout
from xbarprune.training.loop import TrainConfig, evaluate_accuracy, train
from xbarprune.training.masks import MaskSet


@dataclass
class CompressContext:
    """Everything a method may use. ``finetune`` and ``val_accuracy`` are conveniences.

    ``val_data`` is the **validation** split, the only data a method may select on
    (thresholds, ratios, sensitivities): a context handed the test split is refused at
    construction (:func:`xbarprune.data.heldout.selection_data`, issue #21). ``val_data`` may
    be None for methods that select nothing; :meth:`selection_data` then raises a clear error
    for those that do.
    """

    model: nn.Module
    layout: CrossbarLayout
    device_spec: DeviceSpec
    train_data: Any
    val_data: Any
    finetune_cfg: TrainConfig
    device: torch.device | str = "cpu"
    seed: int = 0
    run_dir: Path | None = None
    nonideal: Any = None  # NonIdealityModel used by non-ideality-aware methods
    log: Callable[[str], None] = print
    #: where :meth:`finetune` keeps its resumable checkpoints (default ``run_dir/stages``). The
    #: pipeline gives each stage its own folder and empties it when the stage's inputs change,
    #: so a recomputed stage never resumes from a checkpoint of another config
    parts_dir: Path | None = None
    #: seconds of this context's trainings that an earlier, interrupted invocation ran (the
    #: epochs they loaded from their checkpoints); the pipeline adds them to the stage's time
    resumed_s: float = 0.0

    def __post_init__(self) -> None:
        if self.val_data is not None and split_role(self.val_data) == "test":
            selection_data(self.val_data, "CompressContext.val_data")

    def selection_data(self, what: str = "selection") -> Any:
        """The validation data for a selection step (never the test split; raises if none)."""
        return selection_data(self.val_data, what)

    @property
    def checkpoint_dir(self) -> Path | None:
        """Where the method's trainings keep their resumable checkpoints: ``parts_dir``, else
        ``run_dir/stages``, else nowhere (not resumable)."""
        if self.parts_dir is not None:
            return self.parts_dir
        return self.run_dir / "stages" if self.run_dir is not None else None

    def finetune(
        self, masks: MaskSet | None, epochs: int, regularizer=None, tag: str = "ft", post_step=None
    ) -> None:
        if epochs <= 0:
            if masks is not None:
                masks.apply(self.model)
            return
        ckdir = self.checkpoint_dir
        hist = train(
            self.model,
            self.train_data,
            self.finetune_cfg,
            device=self.device,
            regularizer=regularizer,
            masks=masks,
            post_step=post_step,
            checkpoint=ckdir / f"{tag}.pt" if ckdir is not None else None,
            seed=self.seed,
            desc=tag,
            epochs=epochs,
            log=self.log,
        )
        self.resumed_s += hist.resumed_s

    def val_accuracy(self, model: nn.Module | None = None) -> float:
        from torch.utils.data import DataLoader

        data = self.selection_data("val_accuracy")
        if not isinstance(data, DataLoader):
            data = DataLoader(data, batch_size=512, shuffle=False)
        return evaluate_accuracy(model or self.model, data, self.device)


@dataclass
class CompressResult:
    masks: MaskSet
    layout: CrossbarLayout | None = None  # a new placement (packing/permutation), if any
    info: dict = field(default_factory=dict)
    #: a physically smaller replacement of ``ctx.model`` (filters/channels removed, e.g. by
    #: unused path removal); ``masks`` and ``layout`` then refer to it. The pipeline stores
    #: its shapes (:mod:`xbarprune.interop.architecture`) so that the run reloads it.
    model: nn.Module | None = None


def plain_info(o: Any) -> Any:
    """Method info reduced to JSON- and ``weights_only``-safe types (tuples -> lists)."""
    if isinstance(o, dict):
        return {str(k): plain_info(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [plain_info(v) for v in o]
    if isinstance(o, torch.Tensor):
        return plain_info(o.tolist())
    if isinstance(o, float | int | str | bool) or o is None:
        return o
    return float(o)


P = TypeVar("P")


class Method(ABC, Generic[P]):
    """A registered compression method; ``P`` is its params dataclass (``Params``), so that
    ``self.params`` is typed (``class ADMM(Method[ADMMParams])``)."""

    name: ClassVar[str]
    summary: ClassVar[str]
    Params: ClassVar[type[Any]]

    def __init__(self, params: P):
        self.params: P = params

    def uses_nonideal(self) -> bool:
        """Whether :meth:`compress` reads ``ctx.nonideal`` (then a change of the non-ideality
        config recomputes the compress stage of a run; otherwise only its simulation)."""
        return False

    @abstractmethod
    def compress(self, ctx: CompressContext) -> CompressResult: ...

    def finetune_regularizer(self, ctx: CompressContext) -> Any:
        """The regulariser the pipeline's final fine-tune (the ``finetune`` stage, after
        :meth:`compress`) trains with, or None (the default: plain task loss). ``ctx`` holds the
        compressed model and the dense placement. A method whose weights must stay where its
        regulariser put them until programming (e.g. PRUNIX's group sawtooth on the conductance
        levels) returns its own here."""
        return None


_REGISTRY: dict[str, type[Method[Any]]] = {}

M = TypeVar("M", bound=type[Method[Any]])


def register(cls: M) -> M:
    _REGISTRY[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method[Any]]:
    _load_builtin()
    if name not in _REGISTRY:
        raise ConfigError(
            f"method.name: unknown method {name!r}; available: {', '.join(sorted(_REGISTRY))} "
            "(see `xbarprune methods`)"
        )
    return _REGISTRY[name]


def list_methods() -> dict[str, str]:
    _load_builtin()
    return {n: c.summary for n, c in sorted(_REGISTRY.items())}


def _load_builtin() -> None:
    """Import every module of :mod:`xbarprune.compress.methods` (found with :mod:`pkgutil`, so
    a new method is one new file there); importing a module registers its methods."""
    import importlib
    import pkgutil

    from xbarprune.compress import methods

    for info in sorted(pkgutil.iter_modules(methods.__path__), key=lambda i: i.name):
        importlib.import_module(f"{methods.__name__}.{info.name}")
