"""The occupancy plot of a layer draws its physical tiles (issue #21, item 8): one grid of
(row band x column band) tiles per block of the layout, not one row of fractional ticks."""

from __future__ import annotations

import torch

from xbarprune.hardware import CrossbarSpec
from xbarprune.mapping.layout import LayerLayout
from xbarprune.mapping.permute import pack_columns


def _packed() -> tuple[LayerLayout, torch.Tensor]:
    x = CrossbarSpec(4, 4)  # 4 rows x 2 weights per tile row = 8 weight slots per tile
    layer = LayerLayout("fc", "linear", (8, 8), x)
    torch.manual_seed(0)
    mat = torch.rand(8, 8) + 0.1
    mat[0:4, [1, 2, 5]] = 0  # band 0 keeps columns 0 3 4 6 7 -> 3 tiles
    mat[4:8, [0, 1, 2, 3, 6]] = 0  # band 1 keeps columns 4 5 7 -> 2 tiles
    mat[0, 0] = mat[1, 0] = 0  # two more zeros in the first tile of band 0
    return pack_columns(layer, mat), mat


def test_occupancy_grids_one_grid_per_block_hand_computed():
    packed, mat = _packed()
    assert len(packed.blocks) == 2
    grids = packed.occupancy_grids(mat)
    # block 0: tiles of columns (0,3) (4,6) (7): 6/8, 8/8, 4/8; block 1: (4,5) (7): 8/8, 4/8
    assert grids == [[[0.75, 1.0, 0.5]], [[1.0, 0.5]]]
    dense = LayerLayout("fc", "linear", (8, 8), CrossbarSpec(4, 4))
    g = dense.occupancy_grids(mat)
    assert len(g) == 1 and len(g[0]) == 2 and len(g[0][0]) == 4  # 2 row bands x 4 column bands
    assert torch.tensor(g[0]).tolist() == dense.occupancy(mat).tolist()


def test_occupancy_plot_draws_the_physical_tiles():
    from matplotlib.patches import Rectangle

    from xbarprune.report.plots import occupancy_figure

    packed, mat = _packed()
    fig = occupancy_figure(packed.occupancy_grids(mat), "fc")
    ax = fig.axes[0]
    mesh = ax.collections[0]
    assert int((~mesh.get_array().mask).sum()) == 5  # five tiles, the gap between blocks masked
    blocks = [
        p for p in ax.patches if isinstance(p, Rectangle) and (p.get_gid() or "")[:5] == "block"
    ]
    assert [(b.get_width(), b.get_height()) for b in blocks] == [(3, 1), (2, 1)]
    assert sorted(t.get_text() for t in ax.texts if t.get_text().isdigit()) == sorted(
        ["75", "100", "50", "100", "50"]
    )
    # one block (a single row band, the case that showed ticks -0.4 ... 0.4): integer band ticks
    fig = occupancy_figure([[[0.2, 0.4, 0.6]]], "one")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["0"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1", "2"]
    assert list(ax.get_yticks()) == [0.5] and list(ax.get_xticks()) == [0.5, 1.5, 2.5]
