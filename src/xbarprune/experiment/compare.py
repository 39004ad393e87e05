"""``xbarprune compare CONFIG``: method comparisons that write ``results/<method>/summary.json``.

A comparison YAML names its ``kind`` (the study it runs); each kind is a function registered
with :func:`xbarprune.experiment.studies.study`. Every study shares the same helpers
(:mod:`xbarprune.experiment.studykit`, :func:`xbarprune.experiment.studies.header`): seeded data
and models, dense training cached per (model, dataset), resumable arms (finished arms are kept
in ``<out>/work`` and skipped), and a summary written atomically with the exact command and
wall time at its top.
"""

from __future__ import annotations

import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

from xbarprune.config import load_yaml
from xbarprune.errors import ConfigError

# the studies register themselves with @study on import
from xbarprune.experiment import (  # noqa: F401
    prunix_compare,
    sparse_nonideal_compare,
)
from xbarprune.experiment.config import apply_overrides
from xbarprune.experiment.studies import STUDIES
from xbarprune.hardware.presets import resolve_hardware


def run_compare(
    config: str | Path,
    *,
    out: str | None = None,
    quick: bool = False,
    sets: list[str] | None = None,
) -> dict:
    data = load_yaml(config) or {}
    if sets:
        data = apply_overrides(data, sets)
    if not isinstance(data, dict) or "kind" not in data:
        raise ConfigError(
            f"{config}: a comparison config needs a 'kind' key "
            f"(one of: {', '.join(sorted(_load()))})"
        )
    kind = data.pop("kind")
    command = (
        "xbarprune compare " + " ".join(shlex.quote(a) for a in sys.argv[2:])
        if len(sys.argv) > 1 and sys.argv[1] == "compare"
        else f"xbarprune compare {config}"
    )
    if kind == "bench":  # the benchmark engine (also `xbarprune bench`)
        from xbarprune.experiment.bench import run_bench

        return run_bench(data, out=out, quick=quick, command=command)
    data = resolve_hardware(data)
    studies = _load()
    if kind not in studies:
        raise ConfigError(
            f"{config}: unknown comparison kind {kind!r}; available: {', '.join(sorted(studies))}"
        )
    t0 = time.perf_counter()
    summary = studies[kind](data, out=out, quick=quick, command=command, t0=t0)
    from xbarprune.experiment.study_html import write_study_html

    # every study writes <out>/summary.json, out defaulting to results/<kind>
    write_study_html(kind, out or data.get("out", f"results/{kind}"))
    return summary


def _load() -> dict[str, Callable[..., dict]]:
    """The registered studies (every ``*_compare`` module, imported above, registers its own)."""
    return STUDIES
