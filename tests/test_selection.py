"""LayerSelection (compress/selection.py) and Importance (compress/parts/importance.py), #18 item 3.

The per-method lists were computed with the code *before* the selection was unified (each
method's own filter), so a drift in any method's mapping of its YAML keys fails here.
"""

from __future__ import annotations

import pytest
import torch

from xbarprune.compress.base import get_method, list_methods
from xbarprune.compress.parts.importance import L2, RMS, Importance, L2Importance, RMSImportance
from xbarprune.compress.parts.pruning import group_scores, layer_group_mask, magnitude_masks
from xbarprune.compress.selection import LayerSelection, is_pattern, unknown_names
from xbarprune.errors import ConfigError
from xbarprune.experiment.pipeline import check_layer_names
from xbarprune.hardware.spec import CrossbarSpec
from xbarprune.mapping.layout import map_model
from xbarprune.models import build_model

# name -> kind, in layout order (a small made-up network)
NET = {"a.conv1": "conv", "a.conv2": "conv", "b.fc1": "linear", "b.fc2": "linear"}
C1, C2, F1, F2 = "features.conv1", "features.conv2", "classifier.fc1", "classifier.fc2"
F3 = "classifier.fc3"
ALL = [C1, C2, F1, F2, F3]


@pytest.fixture(scope="module")
def lenet():
    model = build_model("lenet5", num_classes=10, in_channels=1, image_size=28)
    return model, map_model(model, CrossbarSpec(rows=64, cols=64))


# ------------------------------------------------------------------------- hand-computed cases
@pytest.mark.parametrize(
    ("sel", "expected"),
    [
        (LayerSelection(), ["a.conv1", "a.conv2", "b.fc1", "b.fc2"]),
        (LayerSelection(exclude=("b.fc1",)), ["a.conv1", "a.conv2", "b.fc2"]),
        (LayerSelection(exclude=("a.*",)), ["b.fc1", "b.fc2"]),
        (LayerSelection(exclude=("*.fc?", "a.conv1")), ["a.conv2"]),
        (LayerSelection(exclude=("a.conv[12]",)), ["b.fc1", "b.fc2"]),
        (LayerSelection(keep_first=True), ["a.conv2", "b.fc1", "b.fc2"]),
        (LayerSelection(keep_last=True), ["a.conv1", "a.conv2", "b.fc1"]),
        (LayerSelection(keep_first=True, keep_last=True), ["a.conv2", "b.fc1"]),
        (LayerSelection(keep_last="linear"), ["a.conv1", "a.conv2", "b.fc1"]),
        # 4 layers < 5: the first/last rules do not apply
        (LayerSelection(keep_first=True, keep_last=True, first_last_min_layers=5), list(NET)),
        (LayerSelection(kinds=("conv",)), ["a.conv1", "a.conv2"]),
        (LayerSelection(kinds=("linear",), keep_last=True), ["b.fc1"]),
        # include keeps the layout's order, not the list's
        (LayerSelection(include=("b.fc2", "a.conv1")), ["a.conv1", "b.fc2"]),
        (LayerSelection(include=("b.fc2", "a.conv1"), exclude=("b.*",)), ["a.conv1"]),
        (LayerSelection(include=("a.conv1",), kinds=("linear",)), []),
        # first/last are those of the whole layout, even when kinds filter it
        (LayerSelection(kinds=("conv",), keep_first=True), ["a.conv2"]),
    ],
)
def test_select_hand_cases(sel, expected):
    assert sel.select(NET) == expected


def test_keep_last_linear_only_when_last_is_linear():
    net = {"x": "linear", "y": "linear", "z": "conv"}
    assert LayerSelection(keep_last="linear").select(net) == ["x", "y", "z"]
    assert LayerSelection(keep_last=True).select(net) == ["x", "y"]


def test_select_takes_a_layout_in_its_order(lenet):
    _, layout = lenet
    assert LayerSelection().select(layout) == ALL
    assert LayerSelection(kinds=("linear",), exclude=("*fc2",)).select(layout) == [F1, F3]


@pytest.mark.parametrize(
    ("sel", "match"),
    [
        (LayerSelection(exclude=("b.fc9",)), r"exclude names unknown layer\(s\): b\.fc9;"),
        (LayerSelection(exclude=("c.*",)), r"exclude names unknown layer\(s\): c\.\*;"),
        (LayerSelection(include=("zz",)), r"include names unknown layer\(s\): zz;"),
        (LayerSelection(include=("zz",), include_key="layers"), r"layers names unknown .*zz;"),
    ],
)  # fmt: skip
def test_bad_names_raise_config_error(sel, match):
    with pytest.raises(ConfigError, match=r"^method\.params\." + match):
        sel.select(NET)


def test_bad_kind_and_keep_last_raise():
    with pytest.raises(ConfigError, match="layer kind.*'fc'.*allowed: conv, linear"):
        LayerSelection(kinds=("fc",))
    with pytest.raises(ConfigError, match="keep_last"):
        LayerSelection(keep_last="conv")  # type: ignore[arg-type]


def test_patterns_helpers_and_pipeline_check():
    assert is_pattern("a.*") and is_pattern("x?") and is_pattern("[ab]") and not is_pattern("a.b")
    assert unknown_names(["a.*", "b.fc1", "q*", "nope"], NET) == ["q*", "nope"]
    p = get_method("magnitude").Params(sparsity=0.5, exclude=("classifier.*",))
    check_layer_names(p, ALL)  # a matching pattern is fine in exclude
    bad = get_method("magnitude").Params(sparsity=0.5, exclude=("head.*",))
    with pytest.raises(ConfigError, match=r"method\.params\.exclude names unknown.*head\.\*"):
        check_layer_names(bad, ALL)


# ------------------------------------------------- every method selects what the old code did
def _selected(name, model, layout, **kw):
    """The layers the method's own code path selects on LeNet-5."""
    cls = get_method(name)
    p = cls.Params(**kw)
    mod = __import__(cls.__module__, fromlist=["_"])
    if name in ("admm", "liang", "cf", "xcs", "xrs"):
        return mod.prunable_layers(layout, p)
    if name == "prunix":
        return mod.prunable_layers(p, type("Ctx", (), {"layout": layout})())
    if name == "trannsformer":
        return list(mod.select_layers(model, p))
    return p.layer_selection.select(layout)


OLD = {  # computed with the code before LayerSelection (commit 7847d83), default params
    "admm": [C1, C2],
    "cf": [C2, F1, F2],
    "xcs": [C2, F1, F2],
    "xrs": [C2, F1, F2],
    "liang": [C2, F1, F2],
    "magnitude": ALL,
    "group-magnitude": ALL,
    "prunix": ALL,
    "wct": ALL,
    "trannsformer": [F1, F2, F3],
}


def test_every_registered_method_is_covered():
    assert set(list_methods()) - {"none"} == set(OLD)


@pytest.mark.parametrize("name", sorted(OLD))
def test_default_selection_equals_old_code(lenet, name):
    model, layout = lenet
    assert _selected(name, model, layout) == OLD[name]


@pytest.mark.parametrize(
    ("name", "kw", "expected"),
    [
        ("admm", {"layers": "all"}, ALL),
        ("admm", {"layers": "all", "exclude": (F1,)}, [C1, C2, F2, F3]),
        ("liang", {"skip_first": False, "skip_last": False}, ALL),
        ("liang", {"skip_last": False, "exclude": (C2,)}, [F1, F2, F3]),
        ("cf", {"exclude_first_last": False}, ALL),
        ("xcs", {"exclude": (F1,)}, [C2, F2]),
        ("magnitude", {"sparsity": 0.5, "exclude": (F2,)}, [C1, C2, F1, F3]),
        ("prunix", {"exclude": (C1, F3)}, [C2, F1, F2]),
        ("wct", {"exclude": (C1,)}, [C2, F1, F2, F3]),
        ("trannsformer", {"conv": True}, ALL),
        ("trannsformer", {"conv": True, "layers": (F2, C1), "exclude": (C1,)}, [F2]),
    ],
)
def test_configured_selection_equals_old_code(lenet, name, kw, expected):
    model, layout = lenet
    assert _selected(name, model, layout, **kw) == expected


# ------------------------------------------------------------------------------- importance
def test_importance_hand_computed(lenet):
    _, layout = lenet
    lay = layout[F3]  # 84 x 10 matrix on 64 x 64 tiles: tile rows of 64 and 20 rows
    mat = torch.zeros(lay.matrix_shape)
    mat[0, 0], mat[70, 3] = 3.0, 4.0
    g = lay.groups("tile")
    assert len(g) == 2 and sorted(g.sizes.tolist()) == [200, 640]
    big, small = (0, 1) if int(g.sizes[0]) == 640 else (1, 0)
    l2, rms = L2(mat, g), RMS(mat, g)
    assert l2[big].item() == pytest.approx(3.0) and l2[small].item() == pytest.approx(4.0)
    assert rms[big].item() == pytest.approx(3.0 / 640**0.5)
    assert rms[small].item() == pytest.approx(4.0 / 200**0.5)
    w = lay.groups("weight")  # single weights: RMS = |w| (magnitude)
    assert torch.equal(RMS(-mat, w), L2(mat, w))
    assert torch.equal(group_scores(mat, g), rms)
    assert isinstance(RMSImportance(), Importance) and isinstance(L2Importance(), Importance)


def test_importance_is_pluggable_and_default_is_rms(lenet):
    model, layout = lenet
    torch.manual_seed(0)
    mat = torch.randn(layout[F1].matrix_shape)
    g = layout[F1].groups("tile_column")
    assert torch.equal(layer_group_mask(mat, g, 0.5), layer_group_mask(mat, g, 0.5, RMS))

    class Reverse:  # prune the *largest* groups: a different mask
        def __call__(self, m, groups):
            return -RMS(m, groups)

    assert not torch.equal(layer_group_mask(mat, g, 0.5), layer_group_mask(mat, g, 0.5, Reverse()))
    a = magnitude_masks(model, layout, sparsity=0.5, kind="tile_column", scope="global")
    b = magnitude_masks(model, layout, sparsity=0.5, kind="tile_column", scope="global",
                        importance=RMSImportance())  # fmt: skip
    assert all(torch.equal(a[n], b[n]) for n in layout.layers)
