"""Measurements of the parasitic (IR-drop) non-ideality on a mapped model.

* :func:`nonideality_factor`: per physical column of every tile the non-ideality factor of
  GENIEx (Chakraborty et al., DAC 2020), ``NF = (I_ideal - I_nonideal) / I_ideal``, on a
  calibration batch: ``I_ideal = V G`` with the programmed conductances ``G`` and
  ``I_nonideal = V G_eff`` with the effective conductances of the circuit stage (IR drop, see
  :mod:`xbarprune.hardware.nonideal.ir_drop`), ``V`` the layer's real input vectors gathered
  onto the tile's rows.
* :func:`low_conductance_share`: per tile the share of used cells whose conductance lies in
  the lowest ``tau`` of the window, ``G < g_min + tau (g_max - g_min)`` (the "proportion of
  low-conductance synapses" of Bhattacharjee et al., DATE 2022).

Our choices (the papers give none): the input voltages are the layer's calibration inputs
scaled by their largest magnitude (NF is scale-free); a signed input is applied in two
read phases (its positive and its negative part, each a non-negative voltage vector), so
every current is non-negative and the ratio well defined; a column's NF is the mean over the
calibration vectors that drive it (``I_ideal > 0``); the conductances are the nominal
programmed ones (the "program" and "time" stages drawn with one fixed generator), so NF
isolates the circuit stage. ``tau = 0.25`` by default.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from xbarprune.errors import SpecError
from xbarprune.hardware.conductance import encode, weight_scale
from xbarprune.hardware.nonideal.base import EffectContext
from xbarprune.hardware.nonideal.model import NonIdealityModel
from xbarprune.hardware.spec import DeviceSpec
from xbarprune.mapping.layout import CrossbarLayout, LayerLayout, layer_matrices
from xbarprune.mapping.matrix import conv_unfold, weight_to_matrix
from xbarprune.mapping.rearrange import VARIANTS, rearranged

#: the RRAM cell of Bhattacharjee et al. (GLSVLSI 2023, Table 1): R_ON 50 kOhm, ON/OFF 10,
#: 4-bit (16 levels).
RRAM_DATE22 = DeviceSpec.from_resistance(50e3, 500e3, levels=16)


@dataclass
class LayerNF:
    """Per-layer result: ``nf`` (T, cols) NF per physical column (NaN: unused column or
    never driven), ``low_g`` (T,) low-conductance share per tile."""

    name: str
    nf: Tensor
    low_g: Tensor

    @property
    def columns(self) -> Tensor:
        """NF of every used, driven column (1-D)."""
        v = self.nf.reshape(-1)
        return v[~torch.isnan(v)]


def programmed_tiles(
    module: nn.Conv2d | nn.Linear,
    layer: LayerLayout,
    device: DeviceSpec,
    nonideal: NonIdealityModel | None = None,
    *,
    weight_clip: float | None = None,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """Programmed conductances of a layer in the physical tile view ``(T, rows, cols)``
    (float64) and the ``used`` mask; ``nonideal``'s program and time stages applied with a
    generator seeded ``seed`` (None: the ideal encoding)."""
    mat = weight_to_matrix(module.weight.detach()).double().cpu()
    placed = layer.placed
    mat = mat * placed
    w_max = weight_scale(mat, weight_clip)
    cells = encode(mat, w_max, layer.crossbar, device)
    g = layer.to_tiles(cells, device.g_min)
    used = layer.used_cells
    if nonideal is not None:
        ctx = EffectContext(
            device=device,
            crossbar=layer.crossbar,
            generator=torch.Generator().manual_seed(seed),
            used=used,
        )
        g = nonideal.program(g, ctx).double()
    return g, used


def low_conductance_share(g: Tensor, used: Tensor, device: DeviceSpec, tau: float = 0.25):
    """(T,) share of used cells with ``G < g_min + tau * (g_max - g_min)`` per tile."""
    low = (g < device.g_min + tau * device.g_range) & used
    n = used.sum((1, 2)).clamp_min(1)
    return low.sum((1, 2)).double() / n


def layer_input_vectors(module: nn.Module, x: Tensor, max_vectors: int = 256) -> Tensor:
    """Input vectors (N, R) of a Conv2d/Linear in mapped-matrix row order from its input
    batch ``x`` (conv: im2col patches), at most ``max_vectors`` evenly spaced ones."""
    if isinstance(module, nn.Conv2d):
        cols = conv_unfold(module, x)[0]
        v = cols.transpose(1, 2).reshape(-1, cols.shape[1])
    else:
        v = x.reshape(-1, x.shape[-1])
    if v.shape[0] > max_vectors:
        idx = torch.linspace(0, v.shape[0] - 1, max_vectors).round().long()
        v = v[idx]
    return v


def capture_inputs(model: nn.Module, names: Iterable[str], batch: Tensor) -> dict[str, Tensor]:
    """Inputs of the named modules for one eval forward pass of ``batch``."""
    mods = dict(model.named_modules())
    store: dict[str, Tensor] = {}
    hooks = [
        mods[n].register_forward_pre_hook(
            lambda _m, inp, n=n: store.__setitem__(n, inp[0].detach().cpu())
        )
        for n in names
    ]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(batch)
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    return store


def tile_voltages(layer: LayerLayout, vectors: Tensor) -> Tensor:
    """(T, N', rows) non-negative row voltages of every tile: the vectors scaled to a largest
    magnitude of 1, split into a positive and a negative read phase when signed (N' = 2N)."""
    v = vectors.double()
    fs = float(v.abs().max()) or 1.0
    v = v / fs
    if bool((v < 0).any()):
        v = torch.cat([v.clamp(min=0), (-v).clamp(min=0)], 0)
    tr = layer.tile_rows  # (T, rows)
    vz = torch.cat([v, v.new_zeros(v.shape[0], 1)], 1)
    idx = torch.where(tr < 0, v.shape[1], tr)
    return vz[:, idx].permute(1, 0, 2)  # (T, N', rows)


def column_nf(g: Tensor, g_eff: Tensor, volts: Tensor, used: Tensor) -> Tensor:
    """(T, cols) mean NF over the driving vectors; NaN for unused or undriven columns."""
    i_ideal = torch.bmm(volts, g)  # (T, N, cols)
    i_non = torch.bmm(volts, g_eff)
    driven = i_ideal > 1e-30
    nf = torch.where(driven, (i_ideal - i_non) / i_ideal.clamp_min(1e-30), 0.0)
    cnt = driven.sum(1)
    out = nf.sum(1) / cnt.clamp_min(1)
    col_used = used.any(1)  # (T, cols)
    return torch.where(col_used & (cnt > 0), out, float("nan"))


def layer_nonideality(
    module: nn.Conv2d | nn.Linear,
    layer: LayerLayout,
    device: DeviceSpec,
    nonideal: NonIdealityModel,
    vectors: Tensor,
    *,
    weight_clip: float | None = None,
    tau: float = 0.25,
    seed: int = 0,
) -> LayerNF:
    """NF per column and low-G share per tile of one layer (see the module docstring)."""
    g, used = programmed_tiles(module, layer, device, nonideal, weight_clip=weight_clip, seed=seed)
    ctx = EffectContext(
        device=device, crossbar=layer.crossbar, generator=torch.Generator().manual_seed(seed)
    )
    g_eff = nonideal.circuit(g, ctx).double()
    volts = tile_voltages(layer, vectors)
    nf = column_nf(g, g_eff, volts, used)
    return LayerNF(layer.name, nf, low_conductance_share(g, used, device, tau))


def nonideality_factor(
    model: nn.Module,
    layout: CrossbarLayout,
    device: DeviceSpec,
    nonideal: NonIdealityModel,
    batch: Tensor,
    *,
    weight_clip: dict[str, float] | None = None,
    tau: float = 0.25,
    max_vectors: int = 256,
    seed: int = 0,
) -> dict[str, LayerNF]:
    """:class:`LayerNF` of every layout layer on the calibration ``batch`` (model inputs)."""
    inputs = capture_inputs(model, layout.layers, batch)
    mods = dict(model.named_modules())
    out = {}
    for layer in layout:
        vec = layer_input_vectors(mods[layer.name], inputs[layer.name], max_vectors)
        out[layer.name] = layer_nonideality(
            mods[layer.name],
            layer,
            device,
            nonideal,
            vec,
            weight_clip=(weight_clip or {}).get(layer.name),
            tau=tau,
            seed=seed,
        )
    return out


def summarize(per_layer: dict[str, LayerNF]) -> dict:
    """Model-level numbers: ``nf_mean`` / ``nf_median`` / ``nf_p95`` over every used column,
    ``low_g_fraction`` (mean over tiles of the per-tile share) and ``low_g_min`` (worst tile)."""
    cols = torch.cat([v.columns for v in per_layer.values()]) if per_layer else torch.zeros(0)
    low = torch.cat([v.low_g for v in per_layer.values()]) if per_layer else torch.zeros(0)
    if cols.numel() == 0:
        return {
            "nf_mean": float("nan"),
            "nf_median": float("nan"),
            "nf_p95": float("nan"),
            "low_g_fraction": float("nan"),
            "low_g_min": float("nan"),
            "columns": 0,
        }
    return {
        "nf_mean": float(cols.mean()),
        "nf_median": float(cols.median()),
        "nf_p95": float(torch.quantile(cols, 0.95)),
        "low_g_fraction": float(low.mean()),
        "low_g_min": float(low.min()),
        "columns": int(cols.numel()),
    }


def choose_rearrangement(
    model,
    layout,
    device,
    nonideal,
    batch: Tensor,
    *,
    variants: tuple[str, ...] = VARIANTS,
    weight_clip: dict[str, float] | None = None,
    max_vectors: int = 128,
    seed: int = 0,
):
    """Per layer, the variant with the lowest mean NF on ``batch``; returns
    ``(layout, report)`` with report ``{layer: {variant: nf_mean, ..., "chosen": v}}``.

    The variants are those of :mod:`xbarprune.mapping.rearrange` (Bhattacharjee et al., DATE
    2022, column rearrangement); the score is the mean column NF of :func:`layer_nonideality`."""
    for v in variants:
        if v not in VARIANTS:
            raise SpecError(f"rearrangement = {v!r}; allowed: {', '.join(VARIANTS)}")
    variants = tuple(dict.fromkeys(("none", *variants)))
    mats = layer_matrices(model, layout)
    mods = dict(model.named_modules())
    inputs = capture_inputs(model, layout.layers, batch)
    report: dict[str, dict] = {}
    out = layout
    for layer in layout:
        vec = layer_input_vectors(mods[layer.name], inputs[layer.name], max_vectors)
        scores: dict[str, float] = {}
        cands: dict[str, LayerLayout] = {}
        for v in variants:
            lay = rearranged(layer, mats[layer.name], v)
            if v != "none" and all(
                torch.equal(a.cols, b.cols) for a, b in zip(lay.blocks, layer.blocks, strict=True)
            ):
                scores[v] = scores.get("none", float("nan"))
                continue
            r = layer_nonideality(
                mods[layer.name],
                lay,
                device,
                nonideal,
                vec,
                weight_clip=(weight_clip or {}).get(layer.name),
                seed=seed,
            )
            c = r.columns
            scores[v] = float(c.mean()) if c.numel() else 0.0
            cands[v] = lay
        best = min(cands, key=lambda v: (scores[v], v != "none"))
        report[layer.name] = {**scores, "chosen": best}
        if best != "none":
            out = out.replace(cands[best])
    return out, report
