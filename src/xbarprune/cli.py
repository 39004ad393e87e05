"""Command-line interface: a thin layer over the library (DESIGN.md `cli.py`).

Every :class:`~xbarprune.errors.XbarpruneError` (bad input) is printed as one line on stderr
with exit code 2. Any other exception is a bug of ours: it is printed as one line too, with the
path of a file holding the traceback, and exit code 3 (``XBARPRUNE_DEBUG=1`` re-raises it).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _cmd_run(a: argparse.Namespace) -> int:
    from xbarprune.config import load_yaml
    from xbarprune.experiment.config import apply_overrides, load_config
    from xbarprune.experiment.pipeline import Run

    data = load_yaml(a.config)
    if data is None:
        data = {}
    if a.set:
        if not isinstance(data, dict):
            data = {"": data}  # load_config names the problem
        data = apply_overrides(data, a.set)
    if a.strict and isinstance(data, dict):
        data = apply_overrides(data, ["runtime.strict=true"])
    cfg = load_config(data)
    out = Path(a.out) if a.out else Path("runs") / _plain_name(cfg.name, "name")
    rep = Run(cfg, out, fresh=a.fresh).run()
    acc = rep["accuracy"]
    print(f"\nreport: {out / 'report.json'}, {out / 'report.md'}")
    last = list(acc["compressed_nonideal"].values())[-1]
    print(
        f"dense {100 * (acc['dense_ideal'] or 0):.2f} % | compressed ideal "
        f"{100 * acc['compressed_ideal']:.2f} % | non-ideal @ "
        f"{list(acc['compressed_nonideal'])[-1]} {100 * last['mean']:.2f} ± "
        f"{100 * last['std']:.2f} % | crossbars {rep['crossbars']['dense']} -> "
        f"{rep['crossbars']['compressed']}"
    )
    return 0


def _cmd_simulate(a: argparse.Namespace) -> int:
    from xbarprune.errors import ConfigError
    from xbarprune.experiment.pipeline import Run
    from xbarprune.io import atomic_write_json
    from xbarprune.units import format_time, parse_time

    if a.trials is not None and a.trials < 1:
        raise ConfigError(f"--trials = {a.trials}; allowed: an integer >= 1")
    if a.label is not None:
        _plain_name(a.label, "--label")
    times = [parse_time(t) for t in a.time] if a.time else None
    if a.nonideal is not None:
        from xbarprune.hardware.nonideal.model import preset

        preset(a.nonideal)
    run = Run.open(a.run)
    for s in ("train", "finetune"):
        if not run.done(s):
            raise ConfigError(f"run {a.run} has not finished stage '{s}'; run it first")
    if a.bn_calibration is not None:  # override the run's evaluate.bn_calibration
        from dataclasses import replace

        from xbarprune.analog.batchnorm import BNCalibrationConfig

        ev = run.cfg.evaluate
        bn = None
        if a.bn_calibration != "off":
            bn = replace(ev.bn_calibration or BNCalibrationConfig(), mode=a.bn_calibration)
        run.cfg = replace(run.cfg, evaluate=replace(ev, bn_calibration=bn))
    out = run.simulate(nonideal=a.nonideal, times=times, trials=a.trials)
    parts = [a.nonideal or "config"] + [format_time(t) for t in (times or [])]
    if a.bn_calibration is not None:
        parts.append(f"bn-{a.bn_calibration}")
    label = a.label or "_".join(parts)
    path = run.dir / "simulations" / f"{label}.json"
    atomic_write_json(path, out)
    print(f"written {path}")
    return 0


def _cmd_map(a: argparse.Namespace) -> int:
    from xbarprune.hardware import CrossbarSpec
    from xbarprune.mapping import layer_matrices, map_model

    target = Path(a.target)
    digital: tuple[str, ...] = ()
    if (target / "config.yaml").is_file():
        # a run: its own crossbar, the dense layout and the (packed) compressed layout
        from xbarprune.experiment.pipeline import Run

        run = Run.open(target, log=lambda s: None)
        if run.done("finetune"):
            _, model, dense_layout, layout, _ = run.models()
        elif run.done("train"):
            model, _ = run._load_model("train")
            dense_layout = layout = run.map(model)
        else:
            model = run.build_model()
            dense_layout = layout = run.map(model)
        xbar = run.cfg.crossbar
        digital = run.cfg.model.digital
    else:
        from xbarprune.mapping.coverage import check_tile_memory
        from xbarprune.models import build_model

        xbar = CrossbarSpec(a.rows, a.cols, a.cells_per_weight, a.encoding)
        model = build_model(
            a.target,
            num_classes=a.num_classes,
            in_channels=a.in_channels,
            image_size=a.image_size,
            width=a.width,
        )
        check_tile_memory(model, xbar, 4.0)
        dense_layout = layout = map_model(model, xbar)
    mats = layer_matrices(model, layout)
    print(
        f"crossbar {xbar.rows}x{xbar.cols}, {xbar.encoding}, {xbar.cells_per_weight} cell(s)"
        f"/weight -> {xbar.weights_per_row} weights per tile row"
    )
    hdr = (
        f"{'layer':<28}{'matrix':>14}{'tiles':>8}{'needed':>8}{'blocks':>8}{'util %':>8}"
        f"{'sparsity %':>12}"
    )
    print(hdr)
    print("-" * len(hdr))
    tot = need = 0
    for layer in layout:
        s = layer.summary(mats[layer.name])
        dense = dense_layout[layer.name].dense_tiles
        tot += dense
        need += s["tiles_needed"]
        print(
            f"{layer.name:<28}{s['matrix_shape'][0]:>7}x{s['matrix_shape'][1]:<6}"
            f"{dense:>8}{s['tiles_needed']:>8}{s['blocks']:>8}{100 * s['utilisation']:>8.1f}"
            f"{100 * s['weight_sparsity']:>12.1f}"
        )
    print("-" * len(hdr))
    print(f"{'total':<28}{'':>14}{tot:>8}{need:>8}")
    from xbarprune.mapping.coverage import coverage

    cov = coverage(model, layout, digital)
    print(
        f"\n{cov.mapped_weights} of {cov.total_weights} weights "
        f"({100 * cov.fraction_on_crossbars:.1f} %) are on crossbars"
    )
    for d in cov.digital:
        print(f"  digital: {d['name'] or '(model)'} ({d['type']}, {d['weights']} weights): "
              f"{d['reason']}")  # fmt: skip
    if a.strict and cov.digital:
        from xbarprune.errors import ConfigError

        raise ConfigError(
            "--strict: layers stay digital: " + ", ".join(d["name"] for d in cov.digital)
        )
    return 0


def _cmd_methods(a: argparse.Namespace) -> int:
    from xbarprune.compress import list_methods

    for name, summary in list_methods().items():
        print(f"{name:<18} {summary}")
    return 0


def _cmd_presets(a: argparse.Namespace) -> int:
    from xbarprune.config import to_dict
    from xbarprune.hardware.nonideal.model import PRESETS
    from xbarprune.hardware.presets import HARDWARE_PRESETS

    print("non-ideality presets (nonideal: <name>):")
    for name, cfg in PRESETS.items():
        on = {k: v for k, v in to_dict(cfg).items() if v not in (None, False)}
        print(f"  {name:<14} {json.dumps(on)}")
    print("hardware presets (hardware: <name>; sets crossbar and device):")
    for name, hw in HARDWARE_PRESETS.items():
        print(f"  {name:<14} {json.dumps(to_dict(hw.crossbar))} {json.dumps(to_dict(hw.device))}")
        print(f"  {'':<14} source: {hw.source}")
    return 0


def _cmd_report(a: argparse.Namespace) -> int:
    from xbarprune.experiment.pipeline import Run
    from xbarprune.report import write_report

    run = Run.open(a.run)
    write_report(run)
    print(f"written {run.dir / 'report.json'} and report.md")
    return 0


def _cmd_bench(a: argparse.Namespace) -> int:
    import shlex

    from xbarprune.experiment.bench import load_bench_file, run_bench
    from xbarprune.experiment.config import apply_overrides

    data = load_bench_file(a.config)
    if a.set:
        data = apply_overrides(data, a.set)
    command = "xbarprune bench " + " ".join(shlex.quote(x) for x in sys.argv[2:])
    run_bench(data, out=a.out, quick=a.quick, executor=a.executor, command=command,
              merge=a.merge or (), only=a.experiment or (), methods=a.method or ())  # fmt: skip
    return 0


_EXPERIMENT_HELP = (
    "run only this experiment of the config (repeatable); the index summary also lists the "
    "experiments earlier invocations finished"
)


def _cmd_compare(a: argparse.Namespace) -> int:
    from xbarprune.experiment.compare import run_compare

    run_compare(a.config, out=a.out, quick=a.quick, sets=a.set or [], only=a.experiment or [])
    return 0


# ---------------------------------------------------------------- export (issue #19)
def _cmd_export(a: argparse.Namespace) -> int:
    from xbarprune.experiment.export import export_run

    rep = export_run(a.run, a.format, a.out, shrink=not a.no_shrink)
    for kind, path in rep["files"].items():
        print(f"{kind:<15} {path}")
    if a.format == "onnx":
        c, d = rep["compressed"], rep["dense"]
        print(
            f"onnxruntime vs PyTorch: max |diff| {c['max_abs_diff']:.2e}; {c['bytes']} bytes, "
            f"{c['parameters']} parameters, {c['mapped_layers']} Conv/Linear layers "
            f"(dense: {d['bytes']} bytes, {d['parameters']} parameters)"
        )
    else:
        print(f"not translated to aihwkit: {', '.join(rep['untranslated']) or 'nothing'}")
    return 0


def _add_export_parser(sub) -> None:
    e = sub.add_parser(
        "export",
        help="export a finished run's compressed model: ONNX (+ crossbar layout JSON) or an "
        "aihwkit AnalogSequential script with the translated InferenceRPUConfig",
    )
    e.add_argument("run", help="run directory")
    e.add_argument("--format", required=True, help="onnx or aihwkit")
    e.add_argument(
        "--out", help="output file (default <run>/export/<name>.onnx or <name>_aihwkit.py)"
    )
    e.add_argument(
        "--no-shrink",
        action="store_true",
        help="keep pruned filters/channels as zeros (default: remove unused paths physically)",
    )
    e.set_defaults(fn=_cmd_export)


# ---------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="xbarprune",
        description="Crossbar-aware compression and non-ideal simulation for memristive "
        "accelerators.",
    )
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser(
        "run",
        help="run an experiment (train, compress, finetune, map, "
        "simulate, report) from a YAML config",
    )
    r.add_argument("config", help="experiment YAML")
    r.add_argument("--out", help="run directory (default runs/<name>)")
    r.add_argument("--fresh", action="store_true", help="discard finished stages, start over")
    r.add_argument(
        "--resume",
        action="store_true",
        help="resume an interrupted run (the default when the directory exists)",
    )
    r.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.epochs=1 (repeatable)",
    )
    r.add_argument(
        "--strict", action="store_true", help="refuse a model with layers that stay digital"
    )
    r.set_defaults(fn=_cmd_run)

    s = sub.add_parser("simulate", help="re-simulate a finished run under other conditions")
    s.add_argument("run", help="run directory")
    s.add_argument(
        "--time", action="append", help="time after programming, e.g. 1s, 1d, 1y (repeatable)"
    )
    s.add_argument("--nonideal", help="non-ideality preset name (see `xbarprune presets`)")
    s.add_argument("--trials", type=int, help="Monte Carlo trials")
    s.add_argument(
        "--bn-calibration",
        choices=["off", "adapt", "finetune"],
        help="BatchNorm re-calibration per programmed chip (default: the run's config)",
    )
    s.add_argument("--label", help="output name under <run>/simulations/")
    s.set_defaults(fn=_cmd_simulate)

    m = sub.add_parser(
        "map",
        help="print the crossbar layout of a model or run as a table "
        "(tiles of the dense layout, tiles needed, blocks, utilisation)",
    )
    m.add_argument("target", help="model name (see the zoo) or run directory")
    m.add_argument("--rows", type=int, default=128)
    m.add_argument("--cols", type=int, default=128)
    m.add_argument("--cells-per-weight", type=int, default=1)
    m.add_argument("--encoding", default="differential", choices=["differential", "offset"])
    m.add_argument("--num-classes", type=int, default=10)
    m.add_argument("--in-channels", type=int, default=1)
    m.add_argument("--image-size", type=int, default=28)
    m.add_argument("--width", type=float, default=1.0)
    m.add_argument("--strict", action="store_true", help="fail if any layer stays digital")
    m.set_defaults(fn=_cmd_map)

    sub.add_parser("methods", help="list compression methods").set_defaults(fn=_cmd_methods)
    sub.add_parser("presets", help="list non-ideality presets").set_defaults(fn=_cmd_presets)

    rp = sub.add_parser("report", help="rebuild report.json/report.md/plots of a run")
    rp.add_argument("run", help="run directory")
    rp.set_defaults(fn=_cmd_report)

    c = sub.add_parser(
        "compare",
        help="run a method comparison (e.g. examples/prunix_compare"
        ".yaml) and write results/<method>/summary.json",
    )
    c.add_argument("config", help="comparison YAML")
    c.add_argument("--out", help="output folder (default from the config)")
    c.add_argument("--quick", action="store_true", help="tiny subset, for smoke tests")
    c.add_argument("--set", action="append", metavar="KEY=VALUE")
    c.add_argument("--experiment", action="append", metavar="LABEL", help=_EXPERIMENT_HELP)
    c.set_defaults(fn=_cmd_compare)

    b = sub.add_parser(
        "bench",
        help="compare every method under one protocol (seeds, validation-only selection, "
        "matched crossbar saving) and write <out>/summary.json, summary.md, report.html",
    )
    b.add_argument("config", help="bench YAML (e.g. examples/bench_lenet5.yaml)")
    b.add_argument("--out", help="output folder (default: the config's out)")
    b.add_argument("--quick", action="store_true", help="the config's quick: overrides")
    b.add_argument("--executor", choices=["local", "ray"], default="local")
    b.add_argument("--set", action="append", metavar="KEY=VALUE")
    b.add_argument("--experiment", action="append", metavar="LABEL", help=_EXPERIMENT_HELP)
    b.add_argument(
        "--method",
        action="append",
        metavar="LABEL",
        help="run only this method's arms and the dense arm (repeatable): a bench longer than "
        "a session in parts, joined by --merge",
    )
    b.add_argument(
        "--merge",
        action="append",
        metavar="SUMMARY",
        help="an earlier summary.json of the same bench whose records of arms this run does "
        "not plan join the summary (a bench spread over sessions; the header says which)",
    )
    b.set_defaults(fn=_cmd_bench)
    _add_export_parser(sub)
    return p


def _plain_name(name: str, key: str) -> str:
    """A file or folder name without path parts (``--label``, ``name``)."""
    from xbarprune.errors import ConfigError

    ok = name and name not in (".", "..") and "/" not in name and "\\" not in name
    if not ok or not name.isprintable():
        raise ConfigError(
            f"{key} = {name!r}; allowed: a plain name (letters, digits, '-', '_', '.'), "
            "no path separators"
        )
    return name


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def main(argv: list[str] | None = None) -> int:
    import os

    from xbarprune.errors import XbarpruneError

    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except XbarpruneError as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished stages and epochs are kept; rerun to resume", file=sys.stderr)
        return 130
    except MemoryError:
        print(
            "error: out of memory; use a smaller model, crossbar, batch "
            "(data.batch_size_eval) or runtime.max_tile_memory_gb",
            file=sys.stderr,
        )
        return 2
    except Exception as exc:
        if os.environ.get("XBARPRUNE_DEBUG"):
            raise
        import tempfile
        import traceback

        fd, path = tempfile.mkstemp(prefix="xbarprune-error-", suffix=".log")
        with os.fdopen(fd, "w") as fh:
            traceback.print_exc(file=fh)
        print(
            f"internal error: {type(exc).__name__}: {_one_line(exc)[:300]} (a bug in xbarprune; "
            f"traceback in {path}, please report it)",
            file=sys.stderr,
        )
        return 3


if __name__ == "__main__":
    sys.exit(main())
