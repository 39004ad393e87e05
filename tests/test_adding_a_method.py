"""docs/adding_a_method.md stays true: its worked example, run exactly as written."""

from __future__ import annotations

import copy
import re
import sys
import types
from pathlib import Path

import pytest
import torch
from torch.utils.data import Subset

from xbarprune.compress import base
from xbarprune.compress.parts.pruning import group_scores
from xbarprune.config import from_dict
from xbarprune.errors import XbarpruneError
from xbarprune.hardware import CrossbarSpec, DeviceSpec
from xbarprune.mapping import layer_matrices, map_model

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding_a_method.md"


@pytest.fixture
def tile_norm(monkeypatch):
    """The page's method module, registered in a private copy of the method registry."""
    code = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)[0]
    base._load_builtin()  # the built-in methods register in the real registry first
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    mod = types.ModuleType("xbarprune_doc_tile_norm")
    monkeypatch.setitem(sys.modules, mod.__name__, mod)
    exec(compile(code, str(DOC), "exec"), mod.__dict__)
    return mod


def test_worked_example_registers_validates_and_prunes_lowest_groups(tile_norm):
    from xbarprune.data import load_splits
    from xbarprune.models import build_model
    from xbarprune.training import TrainConfig

    assert "tile-norm" in base.list_methods()
    cls = base.get_method("tile-norm")
    with pytest.raises(XbarpruneError, match="method.params.sparsity"):
        from_dict(cls.Params, {"sparsity": 1.5}, "method.params")

    s = load_splits("mnist-embedded", val_size=0.1, seed=0)
    model = build_model("lenet5-caffe", width=0.3, seed=0)
    layout = map_model(model, CrossbarSpec(16, 16))
    before = {n: m.clone() for n, m in layer_matrices(copy.deepcopy(model), layout).items()}
    ctx = base.CompressContext(
        model=model,
        layout=layout,
        device_spec=DeviceSpec(levels=16),
        train_data=Subset(s.train, range(100)),
        val_data=Subset(s.val, range(50)),
        finetune_cfg=TrainConfig(epochs=1, batch_size=50, progress=False),
        log=lambda _: None,
    )
    params = from_dict(
        cls.Params, {"sparsity": 0.5, "exclude": ["classifier.fc2"]}, "method.params"
    )
    res = cls(params).compress(ctx)

    after = layer_matrices(model, layout)
    assert torch.equal(after["classifier.fc2"], before["classifier.fc2"])  # excluded: untouched
    for name in ("features.conv1", "features.conv2", "classifier.fc1"):
        g = layout.layers[name].groups("tile_column")
        kept = g.norms(after[name]) > 0
        scores = group_scores(before[name], g)
        # the dropped groups are exactly the lowest-RMS ones, and they reach the 50 % budget
        assert scores[~kept].max() <= scores[kept].min()
        removed = int(g.sizes[~kept].sum())
        assert removed >= 0.5 * before[name].numel()
        assert removed - int(g.sizes[~kept].min()) < 0.5 * before[name].numel()
    assert res.layout is not None and res.layout.n_tiles < layout.n_tiles
    assert res.info["tiles"] == {"dense": layout.n_tiles, "packed": res.layout.n_tiles}
