"""Bad input through the real CLI, in-process (issue #16): each case exits 2 with one line on
stderr that names the config key, no traceback, and nothing left in ``--out``."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from xbarprune.cli import main

BASE = {
    "name": "bad",
    "seed": 0,
    "model": {"name": "lenet5"},
    "data": {"name": "mnist-embedded", "train_subset": 200, "test_subset": 100},
    "train": {"epochs": 1, "batch_size": 50, "progress": False},
    "method": {"name": "magnitude", "params": {"sparsity": 0.5}},
    "finetune": {"epochs": 0, "progress": False},
    "crossbar": {"rows": 32, "cols": 32},
    "nonideal": "pcm",
    "evaluate": {"times": ["1s"], "trials": 1},
    "runtime": {"device": "cpu"},
}


def _set(cfg: dict, key: str, value) -> dict:
    out = copy.deepcopy(cfg)
    node = out
    parts = key.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


# (id, config changes {dotted key: value} or a raw file body (bytes/str), extra CLI args,
#  text the one-line message must contain)
CASES: list[tuple[str, object, list[str], str]] = [
    (
        "import-runs-os-system",
        {"model.name": "import:os:system", "model.kwargs": {"command": "touch {tmp}/pwned"}},
        [],
        "model.name",
    ),
    ("import-not-module-class", {"model.name": "import:collections:OrderedDict"}, [], "model.name"),
    ("import-missing-module", {"model.name": "import:no_such_mod_xyz:Net"}, [], "model.name"),
    ("binary-config", b"\x00\xff\xfe\x89PNG\r\n", [], "UTF-8"),
    ("yaml-list-top-level", "- a\n- b\n", [], "top level"),
    ("yaml-syntax", "model: {name: [\n", [], "not valid YAML"),
    ("set-bad-yaml", {}, ["--set", "train.lr=[1"], "--set train.lr"),
    (
        "set-python-tag",
        {},
        ["--set", "model.name=!!python/object/apply:os.system [ls]"],
        "--set model.name",
    ),
    ("set-no-equals", {}, ["--set", "train.lr"], "--set"),
    ("set-threads-negative", {}, ["--set", "runtime.threads=-1"], "runtime.threads"),
    ("threads-zero", {"runtime.threads": 0}, [], "runtime.threads"),
    ("seed-overflow", {}, ["--set", "seed=1000000000000000000000000000000"], "seed"),
    ("seed-negative", {"seed": -1}, [], "seed"),
    ("eval-seed-overflow", {"evaluate.seed": 2**40}, [], "evaluate.seed"),
    ("batch-size-eval-zero", {}, ["--set", "data.batch_size_eval=0"], "data.batch_size_eval"),
    ("crossbar-huge", {}, ["--set", "crossbar.rows=1000000000000"], "max_tile_memory_gb"),
    ("crossbar-rows-zero", {"crossbar.rows": 0}, [], "crossbar.rows"),
    ("crossbar-encoding", {"crossbar.encoding": "triple"}, [], "crossbar.encoding"),
    ("method-unknown", {"method.name": "magnitud"}, [], "method.name"),
    ("method-param-unknown", {"method.params": {"sparsty": 0.5}}, [], "method.params"),
    ("method-param-range", {"method.params": {"sparsity": 1.5}}, [], "method.params.sparsity"),
    (
        "method-exclude-unknown-layer",
        {"method.params": {"sparsity": 0.5, "exclude": ["conv9"]}},
        [],
        "method.params.exclude",
    ),
    ("nonideal-unknown-preset", {"nonideal": "pcmm"}, [], "pcmm"),
    (
        "nonideal-bad-section",
        {"nonideal": {"variation": {"sigma": -1}}},
        [],
        "nonideal.variation.sigma",
    ),
    ("nonideal-unknown-key", {"nonideal": {"read_nois": {"sigma": 0.1}}}, [], "read_nois"),
    ("nonideal-dac-bits", {"nonideal": {"dac_bits": 0}}, [], "nonideal.dac_bits"),
    ("nonideal-list", {"nonideal": [1, 2]}, [], "nonideal"),
    ("cost-tech-missing", {"cost.tech": "{tmp}/no_such_tech.yaml"}, [], "cost.tech"),
    ("times-infinite", {"evaluate.times": ["1e400"]}, [], "evaluate.times"),
    ("times-empty", {"evaluate.times": []}, [], "evaluate.times"),
    ("times-bad-unit", {"evaluate.times": ["1 fortnight"]}, [], "evaluate.times"),
    ("trials-zero", {"evaluate.trials": 0}, [], "evaluate.trials"),
    ("g-max-infinite", {"device.g_max": float("inf")}, [], "device.g_max"),
    ("device-levels", {"device.levels": 1}, [], "device.levels"),
    ("lr-infinite", {"train.lr": float("inf")}, [], "train.lr"),
    ("lr-nan", {"train.lr": float("nan")}, [], "train.lr"),
    ("finetune-lr-negative", {"finetune.lr": -1.0}, [], "finetune.lr"),
    ("epochs-negative", {"train.epochs": -1}, [], "train.epochs"),
    ("optimizer-unknown", {"train.optimizer": "rmsprop"}, [], "train.optimizer"),
    ("unknown-section", {"modle": {"name": "x"}}, [], "modle"),
    ("data-unknown", {"data.name": "nosuchdata"}, [], "data.name"),
    ("data-root-missing", {"data.name": "mnist", "data.root": "{tmp}/nothing"}, [], "data.root"),
    ("val-size", {"data.val_size": 1.5}, [], "data.val_size"),
    ("model-unknown", {"model.name": "alexnet"}, [], "model.name"),
    ("model-width", {"model.width": 0}, [], "model.width"),
    ("model-option", {"model.kwargs": {"batch_nrm": True}}, [], "batch_nrm"),
    ("runtime-device", {"runtime.device": "tpu"}, [], "runtime.device"),
    ("hardware-unknown", {"hardware": "nosuchchip"}, [], "hardware"),
    ("unsupported-layer", {"model.name": "import:badmodels:WithConv1d"}, [], "conv1d"),
    ("name-with-path", {"name": "../../escape"}, [], "name"),
]


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    """A user module in the working directory (import: searches it)."""
    (tmp_path / "badmodels.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "class WithConv1d(nn.Module):\n"
        "    def __init__(self, num_classes=10):\n"
        "        super().__init__()\n"
        "        self.conv1d = nn.Conv1d(28, 8, 3)\n"
        "        self.fc = nn.Linear(8 * 26, num_classes)\n\n"
        "    def forward(self, x):\n"
        "        return self.fc(self.conv1d(x.squeeze(1)).flatten(1))\n"
    )
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _run_case(tmp: Path, change, extra: list[str], capsys) -> tuple[int, str, Path]:
    cfg_path = tmp / "cfg.yaml"
    if isinstance(change, bytes):
        cfg_path.write_bytes(change)
    elif isinstance(change, str):
        cfg_path.write_text(change)
    else:
        cfg = BASE
        for k, v in change.items():
            v = v.replace("{tmp}", str(tmp)) if isinstance(v, str) else v
            if isinstance(v, dict):
                v = {a: (b.replace("{tmp}", str(tmp)) if isinstance(b, str) else b)
                     for a, b in v.items()}  # fmt: skip
            cfg = _set(cfg, k, v)
        cfg_path.write_text(yaml.safe_dump(cfg))
    out = tmp / "out"
    extra = [e.replace("{tmp}", str(tmp)) for e in extra]
    rc = main(["run", str(cfg_path), "--out", str(out), *extra])
    err = capsys.readouterr().err
    return rc, err, out


@pytest.mark.parametrize(("change", "extra", "named"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_bad_input_is_one_clear_line(change, extra, named, user_models, capsys):
    tmp = user_models
    rc, err, out = _run_case(tmp, change, extra, capsys)
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert named.lower() in lines[0].lower(), err
    assert "Traceback" not in err
    assert not out.exists() or not any(out.iterdir()), list(out.rglob("*"))
    assert not (tmp / "pwned").exists()  # import: never called os.system


def test_table_has_forty_cases():
    assert len(CASES) >= 40


def test_import_of_a_user_model_from_the_working_directory(user_models):
    (user_models / "goodmodels.py").write_text(
        "from torch import nn\n\nclass Tiny(nn.Module):\n"
        "    def __init__(self, num_classes=10):\n"
        "        super().__init__()\n        self.fc = nn.Linear(784, num_classes)\n\n"
        "    def forward(self, x):\n        return self.fc(x.flatten(1))\n"
    )
    from xbarprune.models import build_model

    m = build_model("import:goodmodels:Tiny", num_classes=3)
    assert m.fc.out_features == 3
