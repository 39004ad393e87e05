"""Crossbar mapping: hand-computed tile counts, group index tensors, round trips."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from xbarprune.errors import CrossbarTooSmallError, SpecError, UnsupportedLayerError
from xbarprune.hardware import CrossbarSpec, DeviceSpec, decode, encode
from xbarprune.mapping import (
    LayerLayout,
    layer_matrices,
    map_model,
    matrix_to_weight,
    pack_columns,
    pack_rows,
    packed_tile_count,
    weight_to_matrix,
)
from xbarprune.mapping.layout import Block
from xbarprune.mapping.permute import pack_layout

VGG16_CONV = [
    (3, 64),
    (64, 64),
    (64, 128),
    (128, 128),
    (128, 256),
    (256, 256),
    (256, 256),
    (256, 512),
    (512, 512),
    (512, 512),
    (512, 512),
    (512, 512),
    (512, 512),
]


def _vgg16_convs() -> nn.Sequential:
    return nn.Sequential(*[nn.Conv2d(i, o, 3, padding=1) for i, o in VGG16_CONV])


def test_vgg16_cifar_tiles_128_differential_hand_computed():
    # 128x128 tiles, 1 cell/weight, differential pair -> 64 logical columns per tile.
    # rows = in*9: ceil(27/128)=1, ceil(576/128)=5, ..., ceil(4608/128)=36
    # cols: ceil(out/64) = 1, 1, 2, 2, 4, 4, 4, 8, 8, ...
    expected = [1 * 1, 5 * 1, 5 * 2, 9 * 2, 9 * 4, 18 * 4, 18 * 4, 18 * 8] + [36 * 8] * 5
    lay = map_model(_vgg16_convs(), CrossbarSpec(128, 128))
    assert [layer.n_tiles for layer in lay] == expected
    assert lay.dense_tiles == 1798


def test_encodings_change_columns_per_weight():
    assert CrossbarSpec(128, 128).weights_per_row == 64
    assert CrossbarSpec(128, 128, encoding="offset").weights_per_row == 127
    assert CrossbarSpec(128, 128, cells_per_weight=2).weights_per_row == 32
    assert CrossbarSpec(128, 128, cells_per_weight=2, encoding="offset").weights_per_row == 63


def test_tile_rules_on_the_crossbar_and_the_block_by_hand():
    x = CrossbarSpec(16, 16, cells_per_weight=2)  # differential: 2 sides x 2 slices = 4 cols
    assert (x.sides, x.columns_per_weight, x.weights_per_row) == (2, 4, 4)
    off = CrossbarSpec(16, 16, encoding="offset")
    assert (off.sides, off.columns_per_weight, off.weights_per_row) == (1, 1, 15)
    # 33 rows -> 3 bands of 16; 9 columns -> 3 column tiles of 4 (1 on offset: 9 <= 15)
    assert x.tile_grid(33, 9) == (3, 3) and x.tiles(33, 9) == 9
    assert off.tile_grid(33, 9) == (3, 1) and off.tiles(16, 16) == 2
    assert x.row_bands(16) == 1 and x.row_bands(17) == 2 and x.col_bands(0) == 0
    b = Block(torch.arange(33), torch.arange(9))
    assert b.grid(x) == (3, 3) and b.tiles(x) == 9
    with pytest.raises(CrossbarTooSmallError, match="needs at least 4 columns"):
        CrossbarSpec(8, 3, cells_per_weight=2)


@pytest.mark.parametrize(
    "kwargs, field",
    [({"rows": 0}, "rows"), ({"cols": -1}, "cols"), ({"encoding": "bogus"}, "encoding")],
)
def test_bad_crossbar_spec_names_field(kwargs, field):
    with pytest.raises(SpecError, match=field):
        CrossbarSpec(**kwargs)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"g_min": 1e-4, "g_max": 1e-6}, "g_min"),
        ({"levels": 1}, "levels"),
        ({"g_min": -1.0}, "g_min"),
        ({"read_voltage": 0.0}, "read_voltage"),
    ],
)
def test_bad_device_spec_names_field(kwargs, field):
    with pytest.raises(SpecError, match=field):
        DeviceSpec(**kwargs)


def test_grouped_conv_refused_with_clear_error():
    m = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4))
    with pytest.raises(UnsupportedLayerError, match="groups=4"):
        map_model(m, CrossbarSpec())
    m2 = nn.Sequential(nn.Conv1d(2, 2, 3), nn.Linear(3, 2))
    with pytest.raises(UnsupportedLayerError, match="Conv1d"):
        map_model(m2, CrossbarSpec())
    lay = map_model(m2, CrossbarSpec(), on_unsupported="digital")
    assert list(lay.layers) == ["1"]


def test_conv_matrix_row_order_matches_unfold():
    conv = nn.Conv2d(3, 5, (2, 3), padding=1, stride=2, dilation=1)
    x = torch.randn(2, 3, 7, 6)
    cols = nn.functional.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)
    y = cols.transpose(1, 2) @ weight_to_matrix(conv.weight) + conv.bias
    ref = conv(x).flatten(2).transpose(1, 2)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)


def test_which_weights_form_tile_ij():
    # Linear 10 -> 6 (matrix 10 x 6) on 4x4 differential tiles: 2 weights per row
    layer = LayerLayout("fc", "linear", (6, 10), CrossbarSpec(4, 4))
    assert layer.n_tiles == math.ceil(10 / 4) * math.ceil(6 / 2) == 9
    tiles = layer.groups("tile")
    # tile (row band 1, column band 2) is tile 1*3 + 2 = 5: rows 4..7, cols 4..5
    got = set(tiles.index[5][: tiles.sizes[5]].tolist())
    want = {r * 6 + c for r in range(4, 8) for c in range(4, 6)}
    assert got == want
    # last row band holds rows 8, 9 only -> 2*2 weights
    assert tiles.sizes.tolist() == [8, 8, 8, 8, 8, 8, 4, 4, 4]
    assert len(layer.groups("tile_column")) == 3 * 6
    assert len(layer.groups("tile_row")) == 10 * 3
    assert layer.groups("filter").index.shape == (6, 10)
    assert layer.groups("channel").index.shape == (10, 6)


def test_channel_groups_for_conv_cover_kernel_rows():
    layer = LayerLayout("c", "conv", (4, 3, 2, 2), CrossbarSpec(8, 8))
    g = layer.groups("channel")
    assert g.index.shape == (3, 4 * 4)
    rows = {int(i) // 4 for i in g.index[1]}
    assert rows == {4, 5, 6, 7}


def test_tile_accounting_frees_zero_tiles():
    layer = LayerLayout("fc", "linear", (6, 10), CrossbarSpec(4, 4))
    mat = torch.ones(10, 6)
    assert layer.tiles_needed(mat) == 9
    mat[0:4, 0:2] = 0  # tile 0
    mat[8:10, :] = 0  # whole last row band: tiles 6, 7, 8
    assert layer.tiles_needed(mat) == 5
    s = layer.summary(mat)
    assert s["tiles_needed"] == 5 and s["tiles_dense"] == 9
    assert s["nonzero"] == int((mat != 0).sum())
    u = layer.tile_usage(mat)
    assert u["rows_used"].tolist()[:3] == [0, 4, 4]


def test_groups_norms_and_mask_vectorised():
    layer = LayerLayout("fc", "linear", (6, 10), CrossbarSpec(4, 4))
    mat = torch.randn(10, 6)
    g = layer.groups("tile_column")
    norms = g.norms(mat)
    # brute force
    for i in range(len(g)):
        idx = g.index[i][: g.sizes[i]]
        assert torch.isclose(norms[i], mat.reshape(-1)[idx].norm())
    keep = norms > norms.median()
    mask = g.weight_mask(keep, mat.shape)
    assert int((~mask).sum()) == int(g.sizes[~keep].sum())


def test_column_packing_frees_predicted_crossbars():
    x = CrossbarSpec(4, 4)  # 2 logical cols per tile
    layer = LayerLayout("fc", "linear", (8, 8), x)  # 8x8 -> 2 x 4 = 8 tiles
    mat = torch.randn(8, 8)
    mat[0:4, [1, 2, 5]] = 0  # band 0 keeps 5 columns -> 3 tiles
    mat[4:8, [0, 1, 2, 3, 6]] = 0  # band 1 keeps 3 columns -> 2 tiles
    packed = pack_columns(layer, mat)
    assert packed.n_tiles == packed_tile_count(layer, mat, "column") == 5
    rp = pack_rows(layer, mat)
    assert rp.n_tiles == packed_tile_count(layer, mat, "row")


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 9),
    cols=st.integers(2, 11),
    k=st.integers(1, 3),
    enc=st.sampled_from(["differential", "offset"]),
    out=st.integers(1, 13),
    inp=st.integers(1, 4),
    kh=st.integers(1, 3),
)
def test_mapping_roundtrip_and_tile_counts(rows, cols, k, enc, out, inp, kh):
    need = 2 * k if enc == "differential" else k + 1
    if cols < need:
        with pytest.raises(CrossbarTooSmallError):
            CrossbarSpec(rows, cols, k, enc)
        return
    x = CrossbarSpec(rows, cols, k, enc)
    conv = nn.Conv2d(inp, out, kh)
    layer = LayerLayout("c", "conv", tuple(conv.weight.shape), x)
    R, C = layer.matrix_shape
    assert layer.n_tiles == math.ceil(R / rows) * math.ceil(C / x.weights_per_row)
    # every weight in exactly one tile slot
    cells = layer.tile_cells.reshape(-1)
    cells = cells[cells >= 0]
    assert torch.equal(torch.sort(cells).values, torch.arange(R * C))
    # unmap(map(W)) == W
    mat = weight_to_matrix(conv.weight.detach())
    assert torch.equal(matrix_to_weight(mat, layer.weight_shape), conv.weight.detach())
    # through conductances and the physical tile view
    dev = DeviceSpec(levels=4)
    w_max = float(mat.abs().max())
    g = encode(mat, w_max, x, dev)
    c2, ref = layer.from_tiles(layer.to_tiles(g, dev.g_min), dev.g_min)
    assert torch.equal(c2, g)
    back = decode(c2, w_max, x, dev, ref)
    step = w_max / (dev.levels**k - 1) * (2 if enc == "offset" else 1)
    tol = 1e-5 * w_max if k == 1 else step / 2 + 1e-5 * w_max
    assert float((back - mat).abs().max()) <= tol
    # used physical cells: one per cell of each weight + one reference per used tile row
    n_ref = int((layer.tile_rows >= 0).sum()) if enc == "offset" else 0
    assert int(layer.used_cells.sum()) == R * C * x.columns_per_weight + n_ref


def test_layer_matrices_shape_mismatch_is_clear():
    m = nn.Sequential(nn.Linear(4, 3))
    lay = map_model(m, CrossbarSpec(8, 8))
    other = nn.Sequential(nn.Linear(5, 3))
    with pytest.raises(Exception, match="does not match"):
        layer_matrices(other, lay)


def test_model_packed_layout_frees_tiles_for_column_sparsity():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(16, 16))
    lay = map_model(m, CrossbarSpec(8, 8))  # 4 logical columns per tile: 2 x 4 = 8 tiles
    with torch.no_grad():
        m[0].weight[::2] = 0  # every other output column: scattered, no tile empties
    assert lay.tiles_needed(m) == 8
    packed = pack_layout(lay, m, "tile_column")
    assert packed.tiles_needed(m) == 4 == packed["0"].n_tiles
