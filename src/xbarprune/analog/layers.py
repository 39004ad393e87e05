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
is a design-time step (:meth:`xbarprune.analog.simulate.AnalogModel.calibrate`): one batch of
calibration images runs through the *ideally* programmed chip and fixes every converter's full
scale, which is then kept for every trial and time, so no trial's result depends on which
other trials or times were simulated. A layer that was never calibrated calibrates on the
first batch it sees; :meth:`reset_calibration` forgets it.

Column gain calibration (``column_calibration``, our addition; the sparse-non-ideality papers
leave accuracy recovery out): after each trial's programming, one-hot reads give the effective
weight matrix ``W_t`` (exact for linear parasitics, whose currents are linear in the inputs);
column ``c`` gets the digital gain ``g_c = <W_c, W_t,c> / <W_t,c, W_t,c>`` against the intended
weights ``W`` (least squares, i.e. the gain that best restores the column's output for white
inputs), applied to the column's output before the bias. It is aihwkit's global drift
compensation refined to one factor per column, and undoes what is systematic per column
(attenuation by driver, sense and wire resistance, a common drift factor); random per-cell
deviations stay.
"""

from __future__ import annotations

from typing import TypedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from xbarprune.analog import kernels as _kernels
from xbarprune.analog import periphery
from xbarprune.hardware.conductance import decode, decode_slices, encode
from xbarprune.hardware.conductance import weight_scale as _weight_scale
from xbarprune.hardware.nonideal.base import EffectContext
from xbarprune.hardware.nonideal.compensation import Gains
from xbarprune.hardware.nonideal.converters import quantize_uniform
from xbarprune.hardware.nonideal.model import NonIdealityModel
from xbarprune.hardware.spec import DeviceSpec
from xbarprune.mapping.layout import LayerLayout
from xbarprune.mapping.matrix import conv_unfold, matrix_to_weight, weight_to_matrix


class _ConvBands(TypedDict):
    """Index tensors of the grouped-convolution tile path (``AnalogLayer._init_conv_bands``)."""

    block: Tensor  # (nb,) block index of each row band
    ch: Tensor  # (nb * width,) input channel of each group slot
    rows: Tensor  # (nb, width * kh * kw) mapped-matrix row of each local row
    width: int


class AnalogLayer(nn.Module):
    """A Conv2d/Linear computed through its crossbar tiles."""

    inner: nn.Conv2d | nn.Linear

    def __init__(
        self,
        module: nn.Conv2d | nn.Linear,
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
        assert cfg is not None, "NonIdealityModel.__post_init__ always sets config"
        self.dac_bits = cfg.dac_bits
        self.adc_bits = cfg.adc_bits
        self.adc_full_scale = cfg.adc_full_scale
        self.drift_compensator = cfg.drift_compensator  # GainCorrection or None
        self.calibrator = cfg.calibrator  # GainCorrection or None
        self.io = cfg.io  # peripheral I/O model (analog/periphery.py) or None
        self._io_gains: Tensor | None = None  # per-tile drift gains read out through it
        self._col_gain: Tensor | None = None
        self._row_gain: Tensor | None = None  # (R, C): the gain of each cell's tile row
        self._row_keys: Tensor | None = None
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
        self._conv_w: tuple | None = None
        self._trial_w: Tensor | None = None  # (K, R, C): K batched trials (kernels.py)
        self._init_conv_bands()
        self._cell_mode = layout.crossbar.encoding == "differential" and all(
            e.elementwise for e in nonideal.effects
        )

    # ------------------------------------------------------------------ programming
    @property
    def tile_mode(self) -> bool:
        return self.adc_bits is not None or (self.io is not None and self.io.per_tile)

    def _ctx(self, gen: torch.Generator, time_s: float, used: Tensor) -> EffectContext:
        return EffectContext(
            device=self.device_spec,
            crossbar=self.layout.crossbar,
            generator=gen,
            time_s=time_s,
            used=used,
        )

    @property
    def needs_calibration(self) -> bool:
        """Whether a converter full scale is fitted from data (DAC, or ADC without a fixed
        ``adc_full_scale``)."""
        return self.dac_bits is not None or (self.tile_mode and self.adc_full_scale is None)

    @torch.no_grad()
    def program(
        self, generator: torch.Generator | None, time_s: float = 1.0, *, ideal: bool = False
    ) -> None:
        """Sample one trial's programmed conductances (program, time and circuit stages).

        ``ideal=True`` programs the intended conductances without any effect (the design-time
        chip used to calibrate the converters); ``generator`` may then be None.

        When every effect is elementwise (no IR drop, no row/column fault patterns) and the
        encoding is differential, effects act directly on the cell tensor (k, S, R, C) with
        the placed weights as ``used`` mask; otherwise on the physical tile view (T, rows,
        cols). Both are exact; they differ only in the order of random draws.
        """
        w = self.inner.weight
        mat = weight_to_matrix(w.detach()).float()
        lay = self.layout
        placed = lay.placed.to(mat.device)
        mat = mat * placed
        # free the previous trial's state before sampling this one (peak memory, issue #20)
        self._trial_w = self._phys = self._w_eff = self._slices = self._conv_w = None
        self._w_max = _weight_scale(mat, self.weight_clip)
        dev, xbar = self.device_spec, lay.crossbar
        cells = encode(mat, self._w_max, xbar, dev)
        self._gain = 1.0
        self._col_gain = None
        self._row_gain = None
        self._io_gains = None
        self._time_s = time_s
        if ideal or self.nonideal.is_ideal:
            self._phys = None
            self._set_weights(cells, None, placed)
            return
        if self._cell_mode:
            state = cells
            used = placed.expand_as(cells)
        else:
            state = lay.to_tiles(cells, dev.g_min)
            used = lay.used_cells.to(mat.device)
        assert generator is not None, "a non-ideal programming needs a generator"
        ctx = self._ctx(generator, time_s, used)
        for eff in self.nonideal.stage("program"):
            state = eff.apply(state, ctx)
        base = state  # what a read right after programming sees
        for eff in self.nonideal.stage("time"):
            state, base = eff.apply_tracked(state, base, ctx)
        for eff in self.nonideal.stage("circuit"):
            state = eff.apply(state, ctx)
        self._phys = state if self.nonideal.has_read_stage else None  # kept for read noise
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        self._read_gen = torch.Generator(device=mat.device).manual_seed(seed)
        wt = self._fit_gains(mat, base, state, placed, generator)
        if wt is not None and not self.nonideal.has_read_stage and not self.tile_mode:
            # the read-back weights are the effective ones: no second decode
            self._w_eff = self._calibrated(wt)
            self._slices = None
            return
        if not self.nonideal.has_read_stage:
            self._set_state(state, placed)

    def _fit_gains(
        self, mat: Tensor, base: Tensor, state: Tensor, placed: Tensor, generator: torch.Generator
    ) -> Tensor | None:
        """Fit the drift compensation (read-back ``W_t`` against the weights ``W_0`` right
        after programming) and then the calibration (``W_t`` times the drift gain against the
        intended weights) of this trial (:mod:`xbarprune.hardware.nonideal.compensation`);
        returns ``W_t`` if it was read back, else None."""
        wt = None
        if (comp := self.drift_compensator) is not None:
            # one-hot reads of the whole tile right after programming and at time t
            w0 = self._state_weights(base, placed)
            wt = self._state_weights(state, placed)
            self._gain = comp.fit(w0, wt).scalar
            if self.io is not None and not self.tile_mode:  # aihwkit: read out through the I/O
                self._io_gains = periphery.drift_gains(w0, wt, self.io, self._w_max, generator)
        if (cal := self.calibrator) is not None:
            if wt is None:
                wt = self._state_weights(state, placed)
            intended = mat.clamp(-self._w_max, self._w_max)
            keys = self._tile_row_keys().to(mat.device)
            gains = cal.fit(intended, wt * self._gain, keys)
            self._row_gain, self._col_gain = gains.row, gains.col
        return wt

    def _calibrated(self, w: Tensor) -> Tensor:
        """Decoded weights times the drift gain and the column and row calibration gains
        (with ``io`` the physical weights: the gains are applied after its ADC)."""
        if self.io is not None:
            return w
        return Gains(self._gain, self._col_gain, self._row_gain).apply(w)

    def _tile_row_keys(self) -> Tensor:
        """(R, C) long: ``tile * rows + tile_row`` of every placed weight (-1: not placed);
        fixed by the layout, so built once."""
        if self._row_keys is not None:
            return self._row_keys
        lay = self.layout
        T, rows, wpr = lay.tile_cells.shape
        R, C = lay.matrix_shape
        keys = torch.full((R * C,), -1, dtype=torch.long)
        cells = lay.tile_cells.reshape(-1)
        ok = cells >= 0
        tr = torch.arange(T * rows).view(T, rows, 1).expand(T, rows, wpr).reshape(-1)
        keys[cells[ok]] = tr[ok]
        self._row_keys = keys.view(R, C)
        return self._row_keys

    def _state_cells(self, state: Tensor) -> tuple[Tensor, Tensor | None]:
        if self._cell_mode:
            return state, None
        return self.layout.from_tiles(state, self.device_spec.g_min)

    def _state_weights(self, state: Tensor, placed: Tensor) -> Tensor:
        c, ref = self._state_cells(state)
        return decode(c, self._w_max, self.layout.crossbar, self.device_spec, ref) * placed

    def _set_state(self, state: Tensor, placed: Tensor) -> None:
        c, ref = self._state_cells(state)
        self._set_weights(c, ref, placed)

    def _set_weights(self, cells: Tensor, ref: Tensor | None, placed: Tensor) -> None:
        xbar, dev = self.layout.crossbar, self.device_spec
        self._conv_w = None
        if self.tile_mode:
            self._slices = decode_slices(cells, xbar, dev, ref) * placed
            if self._row_gain is not None:  # input gains folded into each tile row's cells
                self._slices = self._slices * self._row_gain
            self._w_eff = None
        else:
            self._w_eff = self._calibrated(decode(cells, self._w_max, xbar, dev, ref) * placed)
            self._slices = None

    def _current(self) -> None:
        """Apply read noise (a fresh draw) if the model has a read stage."""
        if self._phys is None or not self.nonideal.has_read_stage:
            return
        placed = self.layout.placed.to(self._phys.device)
        used = placed.expand_as(self._phys) if self._cell_mode else self.layout.used_cells
        assert self._read_gen is not None, "program() seeds the read generator with _phys"
        ctx = self._ctx(self._read_gen, self._time_s, used.to(self._phys.device))
        state = self._phys
        for eff in self.nonideal.stage("read"):
            state = eff.apply(state, ctx)
        self._set_state(state, placed)

    def reset_calibration(self) -> None:
        self.x_fs = None
        self.adc_fs = adc_full_scale_or_none(self.adc_full_scale)

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor) -> Tensor:
        if x.is_cuda:
            # full float32 on GPUs: cuDNN's default TF32 convolutions keep 10 mantissa bits,
            # an error as large as an 8-bit ADC's step, and differ between the batched-trial,
            # per-tile and plain paths (matmuls are float32 by PyTorch's default already)
            cudnn = torch.backends.cudnn
            with cudnn.flags(
                enabled=cudnn.enabled,
                benchmark=cudnn.benchmark,
                deterministic=cudnn.deterministic,
                allow_tf32=False,
            ):
                return self._forward(x)
        return self._forward(x)

    def _forward(self, x: Tensor) -> Tensor:
        if self._trial_w is not None:
            return _kernels.trials_forward(self, x)
        self._current()
        if self._w_eff is None and self._slices is None:
            raise RuntimeError(
                f"analog layer '{self.layout.name}' is not programmed; call program() first"
            )
        if self.io is not None:  # peripheral I/O model (aihwkit IOParameters)
            if self.tile_mode:
                return periphery.forward_per_tile(self, x)
            return periphery.forward_weight_level(self, x)
        if self.dac_bits is not None:
            x = self._dac(x)
        if not self.tile_mode:
            assert self._w_eff is not None  # the weight-level path programs _w_eff
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
        assert self.dac_bits is not None  # called only with a DAC
        return quantize_uniform(x, self.dac_bits, self.x_fs, signed=self.x_signed)

    def _tile_forward(self, x: Tensor) -> Tensor:
        m = self.inner
        R, C = self.layout.matrix_shape
        if isinstance(m, nn.Conv2d):
            if self._conv_bands is not None:
                y = self._tile_conv(x)
            else:
                cols, ho, wo = conv_unfold(m, x)
                y = self._tile_matmul(cols).view(x.shape[0], C, ho, wo)
            if m.bias is not None:
                y = y + m.bias.view(1, -1, 1, 1)
            return y
        lead = x.shape[:-1]
        y = self._tile_linear(x.reshape(-1, R))
        if m.bias is not None:
            y = y + m.bias
        return y.view(*lead, C)

    # ---- convolution: all row bands of all blocks in one grouped convolution
    def _init_conv_bands(self) -> None:
        """Index tensors for the grouped-convolution tile path, or None if not applicable.

        Applicable when every block's rows are a contiguous ascending range of the mapped
        matrix (the dense layout, column packings, any column permutation): a row band of
        ``xbar.rows`` rows then covers a contiguous range of input channels, so band j is a
        convolution over ``m`` channels starting at ``c0_j`` with the band's weights (zero for
        kernel rows outside the band). Group j of one grouped conv computes band j.
        """
        self._conv_bands: _ConvBands | None = None
        m = self.inner
        if not isinstance(m, nn.Conv2d):
            return
        lay = self.layout
        xbar = lay.crossbar
        kk = lay.kernel_numel
        bands = []  # (block index, first row, end row)
        for bi, b in enumerate(lay.blocks):
            r = b.rows
            if b.mask is not None or not bool((r[1:] - r[:-1] == 1).all()):
                return
            start, end = int(r[0]), int(r[-1]) + 1
            for a in range(start, end, xbar.rows):
                bands.append((bi, a, min(a + xbar.rows, end)))
        c0 = torch.tensor([a // kk for _, a, _ in bands])
        c1 = torch.tensor([(e - 1) // kk + 1 for _, _, e in bands])
        width = int((c1 - c0).max())
        nb = len(bands)
        # input channel of group j, slot q (== in_channels: a zero channel)
        ch = c0.view(-1, 1) + torch.arange(width).view(1, -1)
        ch = torch.where(ch < c1.view(-1, 1), ch, lay.in_channels)
        # matrix row of group j, local row q*kk + t (== R: a zero row) if inside the band
        rows = ch.view(nb, width, 1) * kk + torch.arange(kk).view(1, 1, kk)
        lo = torch.tensor([a for _, a, _ in bands]).view(-1, 1, 1)
        hi = torch.tensor([e for _, _, e in bands]).view(-1, 1, 1)
        R = lay.matrix_shape[0]
        rows = torch.where(
            (rows >= lo) & (rows < hi) & (ch.view(nb, width, 1) < lay.in_channels), rows, R
        ).view(nb, width * kk)
        self._conv_bands = {
            "block": torch.tensor([bi for bi, _, _ in bands]),
            "ch": ch.reshape(-1),
            "rows": rows,
            "width": width,
        }

    def _conv_group_weights(self, dtype, dev) -> tuple:
        """Grouped-conv weights of the current programmed slices, one group per row band:
        (weights (nb*k*c_b, width, kh, kw), c_b, same_cols, cols, colmap). Cached until the
        layer is reprogrammed or a new read-noise draw changes the slices."""
        m = self.inner
        cb = self._conv_bands
        assert isinstance(m, nn.Conv2d) and cb is not None  # the grouped-convolution path
        assert self._slices is not None  # tile mode programs _slices
        lay = self.layout
        k = lay.crossbar.cells_per_weight
        R, C = lay.matrix_shape
        nb, width = cb["rows"].shape[0], cb["width"]
        kk = lay.kernel_numel
        cols = colmap = None
        slices = self._slices.to(dtype)  # (k, R, C)
        padded = torch.cat([slices, slices.new_zeros(k, 1, C)], 1)  # zero row R
        w = padded[:, cb["rows"].to(dev)]  # (k, nb, width*kk, C)
        # one group per band: its columns (block columns) x slices
        outs_per_band = []
        for bi, b in enumerate(lay.blocks):
            sel = (cb["block"] == bi).nonzero().squeeze(1)
            outs_per_band.append((sel, b.cols.to(dev)))
        same_cols = len(lay.blocks) == 1
        if same_cols:
            cols = lay.blocks[0].cols.to(dev)
            wg = w[..., cols] if len(cols) != C else w  # (k, nb, width*kk, c)
            c_b = wg.shape[-1]
            wg = wg.permute(1, 0, 3, 2).reshape(nb * k * c_b, width, *m.kernel_size)
        else:
            # blocks with different column sets: pad every band to the widest column set
            c_b = max(len(c) for _, c in outs_per_band)
            wg = w.new_zeros(nb, k, c_b, width * kk)
            colmap = torch.full((nb, c_b), C, dtype=torch.long, device=dev)
            for sel, c in outs_per_band:
                colmap[sel, : len(c)] = c
            wz = torch.cat([w, w.new_zeros(k, nb, width * kk, 1)], 3)  # zero column C
            idx = colmap.view(1, nb, 1, c_b).expand(k, nb, width * kk, c_b)
            wg = torch.gather(wz, 3, idx).permute(1, 0, 3, 2)
            wg = wg.reshape(nb * k * c_b, width, *m.kernel_size)
        return wg, c_b, same_cols, cols, colmap

    def _tile_conv(self, x: Tensor) -> Tensor:
        y = _kernels.tile_conv(self, x)
        if self._col_gain is not None:
            y = y * self._col_gain.to(y.dtype).view(1, -1, 1, 1)
        return y

    # ---- linear: one batched matmul over the row bands of each block
    def _tile_linear(self, x: Tensor) -> Tensor:
        y = _kernels.tile_linear(self, x)
        if self._col_gain is not None:
            y = y * self._col_gain.to(y.dtype)
        return y

    def _band_weights(self, dtype) -> list[tuple]:
        """Per block: (rows, cols, natural_rows, natural_cols, full-band weights (nf, k*c, rows)
        or None, remainder weights (k*c, rem) or None), scaled to ADC units."""
        lay = self.layout
        xbar = lay.crossbar
        R, C = lay.matrix_shape
        k = xbar.cells_per_weight
        assert self._slices is not None  # tile mode programs _slices
        slices = self._slices.to(dtype)  # (k, R, C)
        out = []
        for b in lay.blocks:
            rows, cols = b.rows.to(slices.device), b.cols.to(slices.device)
            nat_r = len(rows) == R and bool((rows == torch.arange(R, device=rows.device)).all())
            nat_c = len(cols) == C and bool((cols == torch.arange(C, device=cols.device)).all())
            w = slices if nat_r else slices[:, rows]
            w = w if nat_c else w[:, :, cols]  # (k, r_b, c_b)
            if b.mask is not None:  # holes: weights held by another block
                w = w * b.mask.to(w.device, w.dtype)
            w = w.permute(0, 2, 1).reshape(k * len(cols), len(rows))  # (k*c_b, r_b)
            nf, rem = divmod(len(rows), xbar.rows)
            wf = w[:, : nf * xbar.rows].reshape(k * len(cols), nf, xbar.rows).transpose(0, 1)
            wr = w[:, nf * xbar.rows :] if rem else None
            out.append((rows, cols, nat_r, nat_c, wf.contiguous() if nf else None, wr))
        return out

    def _tile_matmul(self, xm: Tensor) -> Tensor:
        """(B, R, L) inputs -> (B, C, L) outputs through per-tile, per-column, per-slice ADCs.

        The ADC digitises each column's current per row band of a block (one tile row of the
        placement), so partial sums are computed per (block, row band, column) with broadcast
        batched matmuls over the bands, with no padding of unused column slots (column tiling
        inside a band does not change any column's current) and no copy of the unfolded input
        for the dense natural-order layout.
        """
        y = _kernels.tile_matmul(self, xm)
        if self._col_gain is not None:
            y = y * self._col_gain.to(y.dtype).view(1, -1, 1)
        return y

    def extra_repr(self) -> str:
        return (
            f"layer={self.layout.name!r}, tiles={self.layout.n_tiles}, "
            f"mode={'tile-adc' if self.tile_mode else 'weight'}"
        )


def adc_full_scale_or_none(v: float | None) -> float | None:
    return None if v is None else float(v)
