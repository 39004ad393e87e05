"""PNG plots of a run (matplotlib, Agg backend; files written atomically)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from xbarprune.io import atomic_write_bytes  # noqa: E402


def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def accuracy_vs_time(
    series: dict[str, list[dict]], ideal: dict[str, float], path: Path, title: str = ""
) -> None:
    """series: label -> [{time_s, mean, std}], ideal: label -> digital accuracy."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for i, (label, rows) in enumerate(series.items()):
        t = [max(r["time_s"], 1e-3) for r in rows]
        m = [100 * r["mean"] for r in rows]
        s = [100 * r["std"] for r in rows]
        line = ax.errorbar(t, m, yerr=s, marker="o", capsize=3, label=f"{label} (non-ideal)")
        if label in ideal:
            ax.axhline(
                100 * ideal[label],
                ls="--",
                lw=1,
                color=line[0].get_color(),
                label=f"{label} (ideal)",
            )
        del i
    ax.set_xscale("log")
    ax.set_xlabel("time after programming (s)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    _save(fig, path)


def layer_sparsity(layers: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(layers) + 2), 3.4))
    names = [r["name"] for r in layers]
    ws = [100 * r["weight_sparsity"] for r in layers]
    saving = [
        100 * (1 - r["tiles_compressed"] / r["tiles_dense"]) if r["tiles_dense"] else 0
        for r in layers
    ]
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], ws, width=0.4, label="weight sparsity")
    ax.bar([i + 0.2 for i in x], saving, width=0.4, label="crossbars freed")
    ax.set_xticks(list(x), names, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def _grids(occ) -> list:
    """Occupancy as a list of 2-D grids: per-block grids (``LayerLayout.occupancy_grids``), one
    grid, or a flat per-tile list (older runs; shown as one row of tiles)."""
    import numpy as np

    if not isinstance(occ, list | tuple):
        occ = np.asarray(occ).tolist()
    depth, x = 0, occ
    while isinstance(x, list | tuple) and x:
        depth, x = depth + 1, x[0]
    if depth >= 3:
        return [np.asarray(g, dtype=float).reshape(len(g), -1) for g in occ]
    return [np.atleast_2d(np.asarray(occ, dtype=float))]


def occupancy_figure(occ, name: str, max_width: int = 24):
    """The physical tiles of one layer: one square per tile, coloured by its share of non-zero
    weight slots; a block's tiles form its (row band x column band) grid, blocks are laid out
    left to right (wrapping at ``max_width`` tiles) and outlined. Tick labels are band indices
    (one block) or block numbers (several)."""
    import numpy as np
    from matplotlib.patches import Rectangle

    grids = _grids(occ)
    # shelf packing of the blocks: (x, y) of each block's top-left tile
    pos, x, y, shelf = [], 0, 0, 0
    for g in grids:
        nr, nc = g.shape
        if x and x + nc > max_width:
            x, y, shelf = 0, y + shelf + 1, 0
        pos.append((x, y))
        x, shelf = x + nc + (1 if len(grids) > 1 else 0), max(shelf, nr)
    width = max(px + g.shape[1] for (px, _), g in zip(pos, grids, strict=True))
    height = max(py + g.shape[0] for (_, py), g in zip(pos, grids, strict=True))
    canvas = np.full((height, width), np.nan)
    for (px, py), g in zip(pos, grids, strict=True):
        canvas[py : py + g.shape[0], px : px + g.shape[1]] = g
    fig, ax = plt.subplots(
        figsize=(min(14, max(3.2, 0.42 * width + 2)), max(2.2, 0.42 * height + 1.2))
    )
    mesh = ax.pcolormesh(np.ma.masked_invalid(canvas), vmin=0, vmax=1, cmap="viridis",
                         edgecolors="white", linewidth=1.0)  # fmt: skip
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_aspect("equal")
    n_tiles = sum(g.size for g in grids)
    if len(grids) == 1:
        nr, nc = grids[0].shape
        ax.set_xticks([c + 0.5 for c in range(nc)], [str(c) for c in range(nc)])
        ax.set_yticks([r + 0.5 for r in range(nr)], [str(r) for r in range(nr)])
        ax.set_xlabel("tile column band")
        ax.set_ylabel("tile row band")
    else:
        ax.set_xticks([])
        ax.set_yticks([])
        for i, ((px, py), g) in enumerate(zip(pos, grids, strict=True)):
            ax.add_patch(Rectangle((px, py), g.shape[1], g.shape[0], fill=False, lw=1.5,
                                   edgecolor="black", gid=f"block{i}"))  # fmt: skip
            ax.text(px, py - 0.08, f"b{i}", fontsize=6, va="bottom")
        ax.set_xlabel(f"{len(grids)} blocks (each outlined; tiles: row band x column band)")
    if n_tiles <= 48:
        for (px, py), g in zip(pos, grids, strict=True):
            for (r, c), v in np.ndenumerate(g):
                ax.text(px + c + 0.5, py + r + 0.5, f"{100 * v:.0f}", ha="center", va="center",
                        fontsize=7, color="white" if v < 0.6 else "black")  # fmt: skip
    for s in ax.spines.values():
        s.set_visible(False)
    ax.set_title(f"non-zero share per tile (%): {name}, {n_tiles} tiles", fontsize=9, pad=12)
    fig.colorbar(mesh, ax=ax, fraction=0.05)
    return fig


def occupancy_heatmap(occ, name: str, path: Path) -> None:
    _save(occupancy_figure(occ, name), path)
