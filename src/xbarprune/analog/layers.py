"""Analog (crossbar) execution of one mapped layer (DESIGN.md `analog/`).

:class:`AnalogLayer` wraps an ``nn.Conv2d``/``nn.Linear`` and its :class:`LayerLayout`.
``program(generator, time_s)`` samples one Monte Carlo trial: the layer's mapped matrix is
encoded to cell conductances (:mod:`xbarprune.hardware.conductance`), laid out on the physical
tiles, perturbed by the program/time/circuit stages of the :class:`NonIdealityModel` and decoded
back to effective weights. ``forward`` then runs one of two paths:

* **weight-level** (no ADC): the effective weights run as a plain conv/linear. This is exact for
  every conductance-level effect, since a crossbar computes ``I = G^T V`` linearly; sampling is
  O(weights) and the forward pass costs the same as the digital one. The DAC, if set, quantises
  the layer input first.
* **per-tile ADC**: inputs are unfolded (im2col) and gathered per tile, every tile's partial
  sums are computed in one batched matmul (no Python loop over tiles), digitised per column and
  per bit slice by the ADC, weighted by slice significance and summed digitally by matrix
  column.

Read noise (stage ``read``) is drawn anew at every forward call (one draw per batch) from the
layer's read generator. Biases are added digitally. Units of the converters: the DAC full scale
is the largest |input| of the calibration batch; the ADC digitises partial sums in units of
``x_fs * dG`` (an input at full scale through one cell at g_max - g_min gives 1), full scale
``adc_full_scale`` or, if None, the largest |partial sum| of the calibration batch. Calibration
happens on the first batch the layer sees and is then kept for every trial (a design-time
choice, as in a real chip); :meth:`reset_calibration` forgets it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xbarprune.hardware.conductance import decode, decode_slices, encode, slice_significance
from xbarprune.hardware.conductance import weight_scale as _weight_scale
from xbarprune.hardware.nonideal.base import EffectContext
from xbarprune.hardware.nonideal.converters import quantize_uniform
from xbarprune.hardware.nonideal.model import NonIdealityModel
from xbarprune.hardware.spec import DeviceSpec
from xbarprune.mapping.layout import LayerLayout
from xbarprune.mapping.matrix import matrix_to_weight, weight_to_matrix

# bound on the elements of the gathered per-tile input (N x T x rows) per chunk
_CHUNK_ELEMS = 1 << 24


class AnalogLayer(nn.Module):
    """A Conv2d/Linear computed through its crossbar tiles."""

    def __init__(
        self,
        module: nn.Module,
        layout: LayerLayout,
        device: DeviceSpec,
        nonideal: NonIdealityModel,
        *,
        weight_clip: float | None = None,
    ):
        super().__init__()
        if tuple(module.weight.shape) != layout.weight_shape:
            raise ValueError(
                f"layer '{layout.name}': weight {tuple(module.weight.shape)} != layout "
                f"{layout.weight_shape}"
            )
        self.inner = module
        self.layout = layout
        self.device_spec = device
        self.nonideal = nonideal
        self.weight_clip = weight_clip
        cfg = nonideal.config
        self.dac_bits = cfg.dac_bits
        self.adc_bits = cfg.adc_bits
        self.adc_full_scale = cfg.adc_full_scale
        self.drift_compensation = cfg.drift_compensation
        self._phys: Tensor | None = None
        self._w_eff: Tensor | None = None
        self._slices: Tensor | None = None
        self._w_max = 1.0
        self._gain = 1.0
        self._read_gen: torch.Generator | None = None
        self._time_s = 1.0
        self.x_fs: float | None = None
        self.x_signed = True
        self.adc_fs: float | None = adc_full_scale_or_none(cfg.adc_full_scale)

    # ------------------------------------------------------------------ programming
    @property
    def tile_mode(self) -> bool:
        return self.adc_bits is not None

    def _ctx(self, gen: torch.Generator, time_s: float, used: Tensor) -> EffectContext:
        return EffectContext(
            device=self.device_spec,
            crossbar=self.layout.crossbar,
            generator=gen,
            time_s=time_s,
            used=used,
        )

    @torch.no_grad()
    def program(self, generator: torch.Generator, time_s: float = 1.0) -> None:
        """Sample one trial's programmed conductances (program, time and circuit stages)."""
        w = self.inner.weight
        mat = weight_to_matrix(w.detach()).float()
        lay = self.layout
        placed = lay.placed.to(mat.device)
        mat = mat * placed
        self._w_max = _weight_scale(mat, self.weight_clip)
        dev, xbar = self.device_spec, lay.crossbar
        cells = encode(mat, self._w_max, xbar, dev)
        self._gain = 1.0
        self._time_s = time_s
        if self.nonideal.is_ideal:
            self._phys = None
            self._set_weights(cells, None, placed)
            return
        used = lay.used_cells.to(mat.device)
        ctx = self._ctx(generator, time_s, used)
        phys = lay.to_tiles(cells, dev.g_min)
        for eff in self.nonideal.stage("program"):
            phys = eff.apply(phys, ctx)
        if self.drift_compensation:
            w0 = self._decode(phys, placed)
        for eff in self.nonideal.stage("time"):
            phys = eff.apply(phys, ctx)
        for eff in self.nonideal.stage("circuit"):
            phys = eff.apply(phys, ctx)
        if self.drift_compensation:
            wt = self._decode(phys, placed)
            ref0 = w0.sum(0).abs().sum()
            reft = wt.sum(0).abs().sum()
            self._gain = float(ref0 / reft) if float(reft) > 0 else 1.0
        self._phys = phys
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        self._read_gen = torch.Generator(device=mat.device).manual_seed(seed)
        if not self.nonideal.has_read_stage:
            c, ref = lay.from_tiles(phys, dev.g_min)
            self._set_weights(c, ref, placed)

    def _decode(self, phys: Tensor, placed: Tensor) -> Tensor:
        c, ref = self.layout.from_tiles(phys, self.device_spec.g_min)
        return decode(c, self._w_max, self.layout.crossbar, self.device_spec, ref) * placed

    def _set_weights(self, cells: Tensor, ref: Tensor | None, placed: Tensor) -> None:
        xbar, dev = self.layout.crossbar, self.device_spec
        if self.tile_mode:
            self._slices = decode_slices(cells, xbar, dev, ref) * placed
            self._w_eff = None
        else:
            self._w_eff = decode(cells, self._w_max, xbar, dev, ref) * placed * self._gain
            self._slices = None

    def _current(self) -> None:
        """Apply read noise (a fresh draw) if the model has a read stage."""
        if self._phys is None or not self.nonideal.has_read_stage:
            return
        lay = self.layout
        placed = lay.placed.to(self._phys.device)
        ctx = self._ctx(self._read_gen, self._time_s, lay.used_cells.to(self._phys.device))
        phys = self._phys
        for eff in self.nonideal.stage("read"):
            phys = eff.apply(phys, ctx)
        c, ref = lay.from_tiles(phys, self.device_spec.g_min)
        self._set_weights(c, ref, placed)

    def reset_calibration(self) -> None:
        self.x_fs = None
        self.adc_fs = adc_full_scale_or_none(self.adc_full_scale)

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor) -> Tensor:
        self._current()
        if self._w_eff is None and self._slices is None:
            raise RuntimeError(
                f"analog layer '{self.layout.name}' is not programmed; call program() first"
            )
        if self.dac_bits is not None:
            x = self._dac(x)
        if not self.tile_mode:
            w = matrix_to_weight(self._w_eff, self.layout.weight_shape).to(x.dtype)
            return self._digital(x, w)
        return self._tile_forward(x)

    def _digital(self, x: Tensor, w: Tensor) -> Tensor:
        m = self.inner
        if isinstance(m, nn.Conv2d):
            return F.conv2d(x, w, m.bias, m.stride, m.padding, m.dilation, m.groups)
        return F.linear(x, w, m.bias)

    def _dac(self, x: Tensor) -> Tensor:
        if self.x_fs is None:
            self.x_fs = float(x.detach().abs().max()) or 1.0
            self.x_signed = bool((x < 0).any())
        return quantize_uniform(x, self.dac_bits, self.x_fs, signed=self.x_signed)

    def _tile_forward(self, x: Tensor) -> Tensor:
        m = self.inner
        lay = self.layout
        R, C = lay.matrix_shape
        if isinstance(m, nn.Conv2d):
            B, _, H, W = x.shape
            cols = F.unfold(x, m.kernel_size, m.dilation, m.padding, m.stride)  # (B, R, L)
            Ho = (H + 2 * m.padding[0] - m.dilation[0] * (m.kernel_size[0] - 1) - 1) // m.stride[
                0
            ] + 1
            Wo = (W + 2 * m.padding[1] - m.dilation[1] * (m.kernel_size[1] - 1) - 1) // m.stride[
                1
            ] + 1
            xm = cols.transpose(1, 2).reshape(-1, R)
        else:
            lead = x.shape[:-1]
            xm = x.reshape(-1, R)
        y = self._tile_matmul(xm)
        if m.bias is not None:
            y = y + m.bias
        if isinstance(m, nn.Conv2d):
            return y.view(B, Ho * Wo, C).transpose(1, 2).reshape(B, C, Ho, Wo)
        return y.view(*lead, C)

    def _tile_matmul(self, xm: Tensor) -> Tensor:
        """(N, R) inputs -> (N, C) outputs through per-tile, per-slice ADCs."""
        lay = self.layout
        xbar = lay.crossbar
        R, C = lay.matrix_shape
        k = xbar.cells_per_weight
        dev = xm.device
        tr = lay.tile_rows.to(dev)  # (T, rows)
        tc = lay.tile_cols.to(dev)  # (T, wpr)
        T, rows = tr.shape
        wpr = tc.shape[1]
        slices = self._slices.to(xm.dtype)  # (k, R, C)
        flat = torch.cat([slices.reshape(k, -1), slices.new_zeros(k, 1)], 1)
        cells = lay.tile_cells.to(dev)
        cidx = torch.where(cells < 0, R * C, cells)  # (T, rows, wpr)
        wt = flat[:, cidx]  # (k, T, rows, wpr)
        wt = wt.permute(1, 2, 0, 3).reshape(T, rows, k * wpr)
        x_fs = self.x_fs if (self.dac_bits is not None and self.x_fs) else 1.0
        ridx = torch.where(tr < 0, R, tr)
        sig = slice_significance(xbar, self.device_spec, dev).to(xm.dtype)
        out = xm.new_zeros(xm.shape[0], C + 1)
        cidx_out = torch.where(tc < 0, C, tc)  # (T, wpr)
        chunk = max(1, _CHUNK_ELEMS // max(T * rows, 1))
        for s in range(0, xm.shape[0], chunk):
            xc = xm[s : s + chunk] / x_fs
            xp = torch.cat([xc, xc.new_zeros(xc.shape[0], 1)], 1)
            xt = xp[:, ridx].permute(1, 0, 2)  # (T, n, rows)
            p = torch.bmm(xt, wt)  # (T, n, k*wpr) partial sums, units x_fs * dG
            if self.adc_fs is None:
                self.adc_fs = float(p.detach().abs().max()) or 1.0
            p = quantize_uniform(p, self.adc_bits, self.adc_fs, signed=True)
            p = (p.view(T, -1, k, wpr) * sig.view(1, 1, k, 1)).sum(2)  # (T, n, wpr)
            n = p.shape[1]
            contrib = p.permute(1, 0, 2).reshape(n, T * wpr)
            o = out.new_zeros(n, C + 1)
            o.index_add_(1, cidx_out.reshape(-1), contrib)
            out[s : s + n] = o
        y = out[:, :C] * (x_fs * self._w_max * self._gain)
        if xbar.encoding == "offset":
            # u-values give w = w_max (2u - 1): y = w_max (2 sum x u - sum_{placed} x)
            placed = lay.placed.to(dev).to(xm.dtype)
            y = 2 * y - (xm @ placed) * self._w_max * self._gain
        return y

    def extra_repr(self) -> str:
        return (
            f"layer={self.layout.name!r}, tiles={self.layout.n_tiles}, "
            f"mode={'tile-adc' if self.tile_mode else 'weight'}"
        )


def adc_full_scale_or_none(v: float | None) -> float | None:
    return None if v is None else float(v)
