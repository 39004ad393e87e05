"""``xbarprune compare CONFIG``: a paper's study, written as a config of the benchmark engine.

Every study config says ``kind: bench`` (:mod:`xbarprune.experiment.bench`): the arms run
through the pipeline of ``xbarprune run``, select on validation data only, and write
``<out>/summary.json``, ``summary.md`` and ``report.html`` with the exact command and wall time at
the top. ``xbarprune compare X.yaml`` and ``xbarprune bench X.yaml`` are the same run; the
``kind`` key is what marks a file as a study.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from xbarprune.config import load_yaml
from xbarprune.errors import ConfigError
from xbarprune.experiment.config import apply_overrides

#: the study kinds ``xbarprune compare`` runs (the per-paper study programs it ran before the
#: benchmark engine are gone: each paper's study is a config of the engine, issue #21)
KINDS = ("bench",)


def run_compare(
    config: str | Path,
    *,
    out: str | None = None,
    quick: bool = False,
    sets: list[str] | None = None,
    only: list[str] | None = None,
) -> dict:
    data = load_yaml(config) or {}
    if sets:
        data = apply_overrides(data, sets)
    if not isinstance(data, dict) or "kind" not in data:
        raise ConfigError(
            f"{config}: a comparison config needs a 'kind' key (one of: {', '.join(KINDS)})"
        )
    kind = data.pop("kind")
    if kind not in KINDS:
        raise ConfigError(
            f"{config}: kind = {kind!r}; allowed: {', '.join(KINDS)} (every paper study is a "
            "config of the benchmark engine; see examples/*.yaml)"
        )
    command = (
        "xbarprune compare " + " ".join(shlex.quote(a) for a in sys.argv[2:])
        if len(sys.argv) > 1 and sys.argv[1] == "compare"
        else f"xbarprune compare {config}"
    )
    from xbarprune.experiment.bench import run_bench

    return run_bench(data, out=out, quick=quick, command=command, only=only or ())
