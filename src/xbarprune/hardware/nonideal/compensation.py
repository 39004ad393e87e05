"""Drift compensation and gain calibration: digital gains fitted to each programmed trial.

After a trial is programmed, the analog layer reads its effective weight matrix back (one-hot
reads, exact for every linear effect) and fits digital gains that are applied to the layer's
outputs (and, for row gains, to its inputs). Every scheme is a small frozen dataclass with one
method, ``fit(reference, measured, row_keys) -> Gains``; :meth:`Gains.apply` multiplies a
weight matrix by the gains. :class:`~xbarprune.analog.layers.AnalogLayer` calls two of them:

* the **drift compensation** (``NonIdealityConfig.drift_compensation``), fitted against the
  weights read back right after programming (``reference = W_0``, ``measured = W_t``);
* the **calibration** (``NonIdealityConfig.column_calibration`` / ``row_calibration``), fitted
  against the intended weights (``reference = W``, ``measured`` = the read-back ``W_t`` times
  the drift gain).

Schemes (``W``: reference, ``M``: measured, (R, C) weight matrices):

* :class:`GlobalDriftCompensation`: one scalar ``sum |W| / sum |M|`` (1 when ``M = 0``), the
  gain of aihwkit's ``GlobalDriftCompensation`` (``aihwkit/inference/compensation/drift.py``,
  which reads it out through the periphery with an all-ones input; Joshi et al., "Accurate
  deep neural network inference using computational phase-change memory", Nat. Commun. 11,
  2473, 2020, "global drift compensation").
* :class:`ColumnGainCalibration`: one least-squares gain per matrix column,
  ``c_j = <W_j, M_j> / <M_j, M_j>`` (1 where ``M_j = 0``; ours, see the module docstring of
  :mod:`xbarprune.analog.layers`).
* :class:`RowColumnCalibration`: jointly one gain per tile row and one per column,
  ``W ~ r[key] * M * c``, by alternating exact least-squares updates (ours; see
  docs/methods/sparse_nonideal.md).

A new scheme is a new subclass of :class:`GainCorrection`; put an instance in the config
field (``NonIdealityConfig(drift_compensation=MyScheme())``). The YAML keys stay booleans:
``drift_compensation: true`` is :class:`GlobalDriftCompensation`, ``column_calibration: true``
is :class:`ColumnGainCalibration`, and with ``row_calibration: true`` as well,
:class:`RowColumnCalibration` (:attr:`NonIdealityConfig.drift_compensator`,
:attr:`NonIdealityConfig.calibrator`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

from xbarprune.errors import SpecError
from xbarprune.hardware.nonideal._checks import check_int


@dataclass(frozen=True)
class Gains:
    """Digital gains of one programmed layer.

    Attributes:
        scalar: one gain for the whole layer.
        col: (C,) gain per matrix column (output), or None.
        row: (R, C) gain of each weight's tile row (input), or None.
    """

    scalar: float = 1.0
    col: Tensor | None = None
    row: Tensor | None = None

    def apply(self, w: Tensor) -> Tensor:
        """``w * scalar * col * row`` for an (R, C) weight matrix (in this order)."""
        w = w * self.scalar
        if self.col is not None:
            w = w * self.col
        if self.row is not None:
            w = w * self.row
        return w


class GainCorrection(ABC):
    """A digital gain fitted after programming: ``fit(reference, measured, row_keys)``."""

    @abstractmethod
    def fit(
        self, reference: Tensor, measured: Tensor, row_keys: Tensor | None = None
    ) -> Gains:  # pragma: no cover - interface
        """Gains that map ``measured`` (R, C) back towards ``reference`` (R, C).

        ``row_keys`` (R, C) long: the tile row (``tile * rows + row``) of each placed weight,
        -1 where none is placed; only schemes with row gains read it."""


@dataclass(frozen=True)
class GlobalDriftCompensation(GainCorrection):
    """One gain ``sum |reference| / sum |measured|`` (1 when ``measured`` is all zero)."""

    def fit(self, reference: Tensor, measured: Tensor, row_keys: Tensor | None = None) -> Gains:
        ref0, reft = float(reference.abs().sum()), float(measured.abs().sum())
        return Gains(scalar=ref0 / reft if reft > 0 else 1.0)


@dataclass(frozen=True)
class ColumnGainCalibration(GainCorrection):
    """One least-squares gain per matrix column (:func:`column_gains`)."""

    def fit(self, reference: Tensor, measured: Tensor, row_keys: Tensor | None = None) -> Gains:
        return Gains(col=column_gains(reference, measured))


@dataclass(frozen=True)
class RowColumnCalibration(GainCorrection):
    """Joint least-squares gains per tile row and per column (:func:`row_column_gains`).

    Attributes:
        iters: alternating updates (>= 1); each lowers the residual.
    """

    iters: int = 6

    def __post_init__(self) -> None:
        check_int("RowColumnCalibration.iters", self.iters, low=1)

    def fit(self, reference: Tensor, measured: Tensor, row_keys: Tensor | None = None) -> Gains:
        if row_keys is None:
            raise SpecError("RowColumnCalibration.fit needs row_keys (the tile row of each weight)")
        r, c = row_column_gains(reference, measured, row_keys, self.iters)
        return Gains(col=c, row=r)


def column_gains(intended: Tensor, measured: Tensor) -> Tensor:
    """Least-squares gain per matrix column: ``<W_c, M_c> / <M_c, M_c>`` (1 where M_c = 0).

    ``intended`` and ``measured`` are (R, C) weight matrices; the result has shape (C,).
    """
    num = (intended * measured).sum(0)
    den = (measured * measured).sum(0)
    ones = torch.ones_like(den)
    return torch.where(den > 0, num / torch.where(den > 0, den, ones), ones)


def row_column_gains(
    intended: Tensor, measured: Tensor, keys: Tensor, iters: int = 6
) -> tuple[Tensor, Tensor]:
    """Joint least-squares fit ``W ~ r[key] * M * c`` of one gain per tile row (``keys``,
    (R, C) long, -1 for unplaced weights) and one per matrix column, by alternating exact
    least-squares updates (each lowers the residual); returns ``(r expanded to (R, C), c)``.
    Starts from the column-only fit, so it never ends worse than :func:`column_gains`."""
    c = column_gains(intended, measured)
    placed = keys >= 0
    k = torch.where(placed, keys, 0).reshape(-1)
    n = int(k.max()) + 1 if bool(placed.any()) else 1
    r_full = torch.ones_like(measured)
    for _ in range(iters):
        p = measured * c
        num = torch.zeros(n, dtype=p.dtype, device=p.device)
        den = torch.zeros(n, dtype=p.dtype, device=p.device)
        num.index_add_(0, k, (p * intended * placed).reshape(-1))
        den.index_add_(0, k, (p * p * placed).reshape(-1))
        r = torch.where(den > 0, num / torch.where(den > 0, den, 1.0), 1.0)
        r_full = torch.where(placed, r[k].view_as(measured), 1.0)
        c = column_gains(intended, measured * r_full)
    return r_full, c
