"""Parity with IBM aihwkit on a trained network under the realistic periphery (issue #17).

Slow (several minutes: a LeNet-5 is trained once, its checkpoint kept under runs/vs_aihwkit/,
then both simulators evaluate 3,000 test images at four times over 20 trials); skipped when
aihwkit is not importable (it is never a dependency of xbarprune).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("aihwkit.simulator.configs", reason="aihwkit is optional")

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location(
        "vs_aihwkit", ROOT / "benchmarks" / "vs_aihwkit.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_trained_lenet5_accuracy_parity(monkeypatch):
    monkeypatch.chdir(ROOT)  # the checkpoint folder is relative to the repository
    out = _bench().main(["--trained", "--trials", "20", "--repeat", "5"])
    assert out is not None and out["test_images"] == 3000
    n = out["trials"]
    for label, (ours, ref) in out["accuracy"].items():
        # the 0.5 pp target, or 2.5 standard errors of the difference where 20 trials cannot
        # resolve 0.5 pp (at 1 y the trial std is ~1 pp: SE 0.32 pp; measured +0.56 pp at 20
        # trials, -0.10 pp at 80, docs/benchmarks_aihwkit.md)
        so, sr = out["accuracy_std"][label]
        se = ((so**2 + sr**2) / n) ** 0.5
        assert abs(ours - ref) <= max(0.005, 2.5 * se), (label, ours, ref, se)
    for label, (ours, ref) in out["error"].items():
        assert abs(ours / ref - 1) <= 0.10, (label, ours, ref)  # within 10 %
