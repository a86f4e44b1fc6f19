"""The package's import graph: no cycles, and imports run one way along the data flow.

The graph is built from the source (``ast``), so it sees what importing alone would miss: imports inside
functions, imports under ``TYPE_CHECKING`` and relative imports. An import ``from a.b import c`` is an
edge to ``a.b.c`` when that is a module, else to ``a.b``.

The allowed directions are data (``LAYERS`` and ``MAY_IMPORT``); docs/architecture.md explains them. To
add a module, put it in a layer; to add a dependency between layers, change ``MAY_IMPORT`` here, and say
why in the commit.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import imgclf

PACKAGE = Path(imgclf.__file__).parent

# Layer of each module, by the longest matching name prefix ("imgclf.training" covers its submodules).
LAYERS = {
    "imgclf": "api",  # the public facade: lazy imports of everything it exports
    "imgclf.__main__": "main",
    "imgclf.cli": "cli",
    "imgclf.serving": "serving",
    "imgclf.interop": "interop",
    "imgclf.sharding": "sharding",
    "imgclf.loading": "loading",
    "imgclf.training": "training",
    "imgclf.data": "data",
    "imgclf.evaluation": "evaluation",
    "imgclf.dataset_evaluation": "evaluation",
    "imgclf.reports": "reports",
    "imgclf.report_html": "reports",
    "imgclf.calibration": "evaluation",
    "imgclf.ood": "evaluation",
    "imgclf.plots": "plots",
    "imgclf.modelfile": "modelfile",
    "imgclf.classifier": "classifier",
    "imgclf.precision": "precision",
    "imgclf.models": "models",
    "imgclf.images": "images",
    "imgclf.config": "base",
    "imgclf._settings": "base",
    "imgclf.errors": "base",
    "imgclf.fileio": "base",
    "imgclf._version": "base",
    "imgclf.progress": "base",
    "imgclf.world": "base",
}

# cli → training → {data, evaluation, reports, plots} → modelfile → classifier → {models, images} → base.
_BELOW_CLASSIFIER = {"models", "images", "base"}
_LIBRARY = {"modelfile", "classifier"} | _BELOW_CLASSIFIER
_TOP = {
    "training",
    "data",
    "evaluation",
    "reports",
    "plots",
    "serving",
    "interop",
    "loading",
    "sharding",
    "precision",
}
MAY_IMPORT: dict[str, set[str]] = {
    "base": set(),
    "images": {"base"},
    "models": {"base"},
    "classifier": _BELOW_CLASSIFIER,
    "modelfile": {"classifier"} | _BELOW_CLASSIFIER,
    "data": _LIBRARY,
    "evaluation": {"data"} | _LIBRARY,  # evaluate_dataset scans and decodes a folder
    "reports": {"evaluation"} | _LIBRARY,  # the HTML report draws an evaluation's calibration
    "plots": _LIBRARY,
    "training": {"data", "evaluation", "reports", "plots"} | _LIBRARY,
    # Beside cli, over the library: never training or cli.
    # loading: one loader for .imgclf and .onnx files; precision: bf16 where the CPU has it
    "serving": {"interop", "loading", "precision"} | _LIBRARY,
    "interop": {"data"} | _LIBRARY,  # int8 calibration scans the dataset for its training split
    "precision": _LIBRARY,  # fp32 or bf16 for a loaded classifier: reads the file's probes
    # imgclf.load/verify/inspect: an .imgclf through modelfile, an .onnx through interop (without torch).
    "loading": {"interop"} | _LIBRARY,
    "sharding": {"loading", "precision"} | _LIBRARY,  # loads .imgclf and .onnx alike; bf16 as predict
    "cli": _TOP | _LIBRARY,
    "main": {"cli"},
    "api": _TOP | _LIBRARY,
}


def _modules(root: Path) -> dict[str, Path]:
    """Dotted module name → file, for every ``.py`` file of the package."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute module a (possibly relative) ``from ... import`` names."""
    if level == 0:
        return name or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module → the package modules it imports anywhere in its source (module level or in a function)."""
    modules = _modules(root)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, is_package, node.level, node.module)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:  # imgclf.x.y where y is a name, not a module
                    target = target.rpartition(".")[0]
                if target and target != module:
                    graph[module].add(target)
    return graph


def layer_of(module: str) -> str | None:
    """The layer ``LAYERS`` gives ``module`` (longest prefix wins), or ``None`` if none does."""
    matches = [p for p in LAYERS if module == p or module.startswith(p + ".")]
    return LAYERS[max(matches, key=len)] if matches else None


def forbidden_imports(graph: dict[str, set[str]]) -> list[str]:
    """``"a -> b (layer x may not import layer y)"`` for every import against ``MAY_IMPORT``."""
    problems = []
    for module, targets in sorted(graph.items()):
        src = layer_of(module)
        for target in sorted(targets):
            dst = layer_of(target)
            if src is None or dst is None or src == dst or dst in MAY_IMPORT[src]:
                continue
            problems.append(f"{module} -> {target} (layer {src} may not import layer {dst})")
    return problems


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every group of modules that import each other (directly or through others), sorted."""

    def reachable(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    reach = {m: reachable(m) for m in graph}
    groups = {tuple(sorted(m2 for m2 in reach[m] if m in reach[m2])) for m in graph if m in reach[m]}
    return sorted(list(g) for g in groups)


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_graph_sees_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "imgclf"
    (pkg / "training").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("")
    (pkg / "training" / "__init__.py").write_text("")
    (pkg / "training" / "loop.py").write_text("from ..errors import UsageError\n")
    (pkg / "classifier.py").write_text("def f():\n    from imgclf.training.loop import fit\n")
    g = import_graph(pkg)
    assert g["imgclf.training.loop"] == {"imgclf.errors"}
    assert g["imgclf.classifier"] == {"imgclf.training.loop"}
    assert forbidden_imports(g) == [
        "imgclf.classifier -> imgclf.training.loop (layer classifier may not import layer training)"
    ]


def test_cycles_are_found():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a", "e"}, "e": {"d"}}) == [
        ["a", "b", "c"],
        ["d", "e"],
    ]
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_every_module_has_a_layer(graph):
    assert [m for m in graph if layer_of(m) is None] == []


def test_the_package_has_no_import_cycle(graph):
    assert import_cycles(graph) == []


def test_imports_follow_the_layering(graph):
    assert forbidden_imports(graph) == []


def test_nothing_but_main_imports_the_cli(graph):
    importers = {m for m, targets in graph.items() for t in targets if layer_of(t) == "cli"}
    assert {m for m in importers if layer_of(m) != "cli"} == {"imgclf.__main__"}


@pytest.mark.parametrize("layer", ["images", "models", "modelfile", "classifier", "evaluation"])
def test_the_predict_side_never_imports_training_or_cli(graph, layer):
    reached = {t for m, targets in graph.items() if layer_of(m) == layer for t in targets}
    assert sorted(t for t in reached if layer_of(t) in ("training", "cli")) == []
