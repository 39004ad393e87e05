"""Imports point down, and there are no import cycles (issue #18 item 6; docs/architecture.md).

The import graph is read with :mod:`ast` from every module of ``src/xbarprune``, so it needs no
import of the package. Every import counts: module-level ones, imports inside functions (a lazy
import that breaks a cycle at run time is still a cycle of the design) and
``importlib.import_module("xbarprune...")`` calls with a constant name. The one exemption:
imports under ``if TYPE_CHECKING:`` obey the layers but are left out of the cycle check, since
they name a type for annotations only (``analog/periphery.py`` annotates its functions with the
``AnalogLayer`` whose forward pass calls them) and run neither at import nor at call time.

Layers, lowest first; a module may import from its own package, from a lower layer, and (only in
the core layer) from another core module. Packages of one layer are independent of each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "xbarprune"

LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "checks", "config", "units", "io", "metrics", "provenance", "_version"),  # core
    ("data", "models", "hardware"),
    ("mapping",),
    ("analog", "cost"),
    ("training",),
    ("compress",),
    ("interop",),
    ("report",),
    ("experiment",),
    ("cli", ""),  # "" is the package itself (xbarprune/__init__.py: the Python API facade)
)
RANK = {pkg: i for i, layer in enumerate(LAYERS) for pkg in layer}


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules(root: Path = SRC) -> dict[str, Path]:
    return {_module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def _type_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes inside ``if TYPE_CHECKING:`` blocks."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, str | None, bool]]:
    """``(imported module, imported name or None, type-only)`` for every import of our code."""
    is_pkg = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), str(path))
    type_only = _type_only(tree)
    out: list[tuple[str, str | None, bool]] = []
    for node in ast.walk(tree):
        t = id(node) in type_only
        if isinstance(node, ast.Import):
            out += [(a.name, None, t) for a in node.names if a.name.split(".")[0] == "xbarprune"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "xbarprune":
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                out.append((sub, None, t) if sub in modules else (target, a.name, t))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and str(node.args[0].value).startswith("xbarprune")
        ):
            out.append((str(node.args[0].value), None, t))
    return out


def _package(mod: str) -> str:
    """The top-level package (or module) under ``xbarprune``; "" for the package itself."""
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else ""


def _graph(root: Path = SRC) -> tuple[dict[str, set[str]], list[str]]:
    modules = _modules(root)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    problems: list[str] = []
    for mod, path in modules.items():
        for target, imported, type_only in _imports(mod, path, modules):
            if target not in modules:
                problems.append(f"{mod}: imports unknown module {target}")
                continue
            if target != mod and not type_only:
                graph[mod].add(target)
            a, b = _package(mod), _package(target)
            if a not in RANK or b not in RANK:
                problems.append(f"{mod} -> {target}: package {a or b!r} has no layer in LAYERS")
                continue
            if a != b and (RANK[b] > RANK[a] or (RANK[b] == RANK[a] and RANK[a] != 0)):
                problems.append(f"{mod} -> {target}: layer {a or 'xbarprune'} may not import {b}")
            # private names and private modules stay inside their package
            parent = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
            t_is_pkg = modules[target].name == "__init__.py"
            t_parent = target if t_is_pkg else target.rpartition(".")[0]
            private_mod = any(p.startswith("_") for p in target.split(".")[1:])
            if private_mod and not (parent + ".").startswith(t_parent + "."):
                problems.append(f"{mod} -> {target}: private module used outside its package")
            if imported and imported.startswith("_") and not imported.startswith("__") and a != b:
                problems.append(f"{mod} -> {target}.{imported}: private name across packages")
    return graph, sorted(set(problems))


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def test_imports_point_down():
    _, problems = _graph()
    assert problems == [], "\n".join(problems)


def test_no_import_cycles():
    graph, _ = _graph()
    cycles = _cycles(graph)
    assert cycles == [], "\n".join(" <-> ".join(c) for c in cycles)


def test_compress_parts_never_import_methods():
    """Inside compress/: methods/ build on parts/, never the other way round."""
    graph, _ = _graph()
    up = [
        f"{m} -> {t}"
        for m, targets in graph.items()
        if m.startswith("xbarprune.compress.parts")
        for t in targets
        if t.startswith("xbarprune.compress.methods")
    ]
    assert up == []
    assert any(
        t.startswith("xbarprune.compress.parts") for t in graph["xbarprune.compress.methods.admm"]
    )


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / "xbarprune" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root / "xbarprune"


def test_checker_catches_upward_import_private_names_and_cycles(tmp_path):
    """The checker itself: an upward import, a function-level cycle and a private name."""
    root = _write(
        tmp_path,
        {
            "__init__.py": "",
            "errors.py": "",
            "mapping/__init__.py": "",
            "mapping/a.py": "def f():\n    from xbarprune.analog.sim import g\n",
            "mapping/b.py": "from xbarprune.mapping.c import x\n",
            "mapping/c.py": "def h():\n    from xbarprune.mapping import b\n",
            "analog/__init__.py": "",
            "analog/sim.py": "from xbarprune.mapping.a import f\n"
            "from xbarprune.compress.p import _hidden\n",
            "compress/__init__.py": "",
            "compress/p.py": "import importlib\nimportlib.import_module('xbarprune.compress.q')\n",
            "compress/q.py": "from typing import TYPE_CHECKING\n"
            "from xbarprune.compress import p\n"
            "if TYPE_CHECKING:\n    from xbarprune.compress.r import T\n",
            "compress/r.py": "from xbarprune.compress.q import p\n",
        },
    )
    graph, problems = _graph(root)
    assert "xbarprune.mapping.a -> xbarprune.analog.sim: layer mapping may not import analog" in (
        problems
    )
    assert (
        "xbarprune.analog.sim -> xbarprune.compress.p: layer analog may not import compress"
        in problems
    )
    assert "xbarprune.analog.sim -> xbarprune.compress.p._hidden: private name across packages" in (
        problems
    )
    assert len(problems) == 3
    assert _cycles(graph) == [
        ["xbarprune.analog.sim", "xbarprune.mapping.a"],
        ["xbarprune.compress.p", "xbarprune.compress.q"],
        ["xbarprune.mapping.b", "xbarprune.mapping.c"],
    ]


@pytest.mark.parametrize("pkg", sorted(p.name for p in SRC.iterdir() if p.is_dir()))
def test_every_package_has_a_layer(pkg):
    if pkg.startswith("_") or not (SRC / pkg / "__init__.py").exists():
        pytest.skip(f"{pkg} is not a package")
    assert pkg in RANK
