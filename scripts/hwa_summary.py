"""Assemble the hardware-aware-training study of issue #17 into ``results/hwa/summary.json``
and ``summary.md`` from the per-model bench summaries (``results/hwa/<model>/summary.json``,
written by ``xbarprune bench examples/hwa_<model>.yaml``).

Rows keep the bench's fields (``model, dataset, method, hwa, nonideal, time, time_s, seeds,
acc_ideal_mean, acc_nonideal_mean, acc_nonideal_ci95``, ...), ``method`` being the registered
method (``none`` = dense) and ``hwa`` whether the arm was fine-tuned with HWA. ``effects`` are the
paired HWA effects (``xbarprune.experiment.bench.hwa_effects``), and ``ranking`` says, per model,
preset and time, whether the compression methods keep their order after HWA.

    python scripts/hwa_summary.py [results/hwa]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from xbarprune.experiment.bench import hwa_markdown
from xbarprune.io import atomic_write_json, atomic_write_text


def _pp(x: float | None, ci: float | None = None) -> str:
    if x is None:
        return "–"
    return f"{100 * x:.2f}" + (f" ± {100 * ci:.2f}" if ci is not None else "")


def assemble(root: Path) -> dict:
    parts = sorted(root.glob("*/summary.json"))
    if not parts:
        raise SystemExit(
            f"{root}: no <model>/summary.json; run xbarprune bench examples/hwa_*.yaml"
        )
    rows, effects, ranks, header = [], [], [], []
    for p in parts:
        s = json.loads(p.read_text())
        h = s["header"]
        header.append({"summary": str(p), "command": h["command"], "wall_time_s": h["wall_time_s"],
                       "compute_s": round(h["compute_s"], 1), "machine": h["machine"],
                       "merged": h.get("merged", [])})  # fmt: skip
        # a second study of the same model (e.g. lenet5-select: noise chosen on validation)
        # is labelled by its folder
        label = s["model"] if p.parent.name == s["model"] else f"{s['model']} ({p.parent.name})"
        for r in s["rows"]:
            rows.append({**r, "label": r["method"], "method": r["method_name"],
                         "study": label})  # fmt: skip
        for e in s.get("hwa", []):
            effects.append({"model": label, "dataset": s["dataset"], **e})
        keys = {(r["nonideal"], r["time"]) for r in s["rows"]}
        for preset, t in sorted(keys):
            sel = [r for r in s["rows"] if (r["nonideal"], r["time"]) == (preset, t)
                   and r["method_name"] != "none"]  # fmt: skip
            order = {}
            for flag in (False, True):
                rs = sorted((r for r in sel if r["hwa"] is flag),
                            key=lambda r: -r["acc_nonideal_mean"])  # fmt: skip
                order[flag] = [r["method_name"] for r in rs]
            ranks.append({"model": label, "nonideal": preset, "time": t,
                          "order_plain": order[False], "order_hwa": order[True],
                          "kept": order[False] == order[True]})  # fmt: skip
    return {"header": header, "rows": rows, "effects": effects, "ranking": ranks,
            "selection_split": "val"}  # fmt: skip


def markdown(summary: dict) -> str:
    lines = ["# Hardware-aware fine-tuning (issue #17)", ""]
    for h in summary["header"]:
        lines.append(f"- `{h['command']}` → {h['summary']}: wall time of the last invocation "
                     f"{h['wall_time_s']} s, arm compute {h['compute_s']} s "
                     f"({h['machine']})")  # fmt: skip
        for m in h.get("merged", []):
            lines.append(
                f"  - merged with {m['records']} record(s) of `{m['command']}` (wall "
                f"time {m['wall_time_s']} s, arm compute {m['compute_s']:.1f} s)"
            )
    lines += hwa_markdown(summary["effects"], with_model=True)
    lines += ["", "## Do the compression methods keep their ranking after HWA?", "",
              "| model | non-ideality | time | without HWA (best first) | with HWA | kept |",
              "|---|---|---|---|---|---|"]  # fmt: skip
    for r in summary["ranking"]:
        lines.append(f"| {r['model']} | {r['nonideal']} | {r['time']} | "
                     f"{', '.join(r['order_plain'])} | {', '.join(r['order_hwa'])} | "
                     f"{'yes' if r['kept'] else 'no'} |")  # fmt: skip
    lines += ["", "## Every arm", "", "| model | method | HWA | ideal (%) | non-ideality | time | "
              "non-ideal (%) | seeds |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in summary["rows"]:
        lines.append(f"| {r['study']} | {r['method']} | {'yes' if r['hwa'] else 'no'} | "
                     f"{_pp(r['acc_ideal_mean'], r['acc_ideal_ci95'])} | {r['nonideal']} | "
                     f"{r['time']} | {_pp(r['acc_nonideal_mean'], r['acc_nonideal_ci95'])} | "
                     f"{len(r['seeds'])} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    root = Path(args[0] if args else "results/hwa")
    summary = assemble(root)
    atomic_write_json(root / "summary.json", summary)
    atomic_write_text(root / "summary.md", markdown(summary))
    print(f"written {root / 'summary.json'}, summary.md")


if __name__ == "__main__":
    main()
