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


def occupancy_heatmap(occ, name: str, path: Path) -> None:
    import numpy as np

    a = np.atleast_2d(np.asarray(occ, dtype=float))
    fig, ax = plt.subplots(figsize=(max(3, 0.35 * a.shape[1] + 2), max(2.5, 0.35 * a.shape[0] + 1)))
    im = ax.imshow(a, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xlabel("tile column band")
    ax.set_ylabel("tile row band")
    ax.set_title(f"non-zero share per tile: {name}", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.05)
    _save(fig, path)
