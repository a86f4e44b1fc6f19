"""A35: nothing in the package can unpickle, evaluate code or import a module by a computed name.

The checker walks every module's AST (not its text, so comments and strings do not count) and flags:
imports of pickle-like modules; the builtins eval/exec/compile/__import__ (as bare names, through
``builtins`` or ``getattr``); and calls such as ``torch.load``, ``numpy.load``, ``importlib.import_module``,
resolved through import aliases. The one exception is ``torch.load(..., weights_only=True)`` written out
(reading a user's ``.pth`` state dict with PyTorch's restricted unpickler). Method calls that merely
share a name (``model.eval()``, ``torch.compile``, ``re.compile``) are fine. A self-test plants each
forbidden pattern and checks it is caught, so this test cannot silently pass by checking nothing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import imgclf

PACKAGE = Path(imgclf.__file__).parent
FORBIDDEN_MODULES = {
    "pickle",
    "cPickle",
    "_pickle",
    "dill",
    "cloudpickle",
    "joblib",
    "marshal",
    "shelve",
    "runpy",
}
FORBIDDEN_BUILTINS = {"eval", "exec", "compile", "__import__"}
FORBIDDEN_DOTTED = {
    "torch.load",
    "torch.jit.load",
    "torch.serialization.load",
    "torch.hub.load",
    "torch.package.PackageImporter",
    "numpy.load",
    "importlib.import_module",
    "importlib.__import__",
    "importlib.util.module_from_spec",
    "builtins.eval",
    "builtins.exec",
    "builtins.compile",
    "builtins.__import__",
}


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(aliases.get(node.id, node.id))
    return ".".join(reversed(parts))


def violations(source: str, filename: str = "<snippet>") -> list[str]:
    """Every forbidden construct in ``source``, as ``file:line: what``."""
    tree = ast.parse(source, filename)
    aliases: dict[str, str] = {"np": "numpy"}
    found = []

    def flag(node: ast.AST, what: str) -> None:
        found.append(f"{filename}:{getattr(node, 'lineno', 0)}: {what}")

    for node in ast.walk(tree):  # first pass: aliases, so `import torch as t; t.load` resolves
        if isinstance(node, ast.Import):
            for a in node.names:
                aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    # The one exception (DESIGN, principle 7): torch.load with a literal weights_only=True, whose restricted
    # unpickler builds tensors and plain containers only (user-given .pth weight files).
    restricted = {
        id(node.func)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and _dotted(node.func, aliases) == "torch.load"
        and any(
            k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
            for k in node.keywords
        )
    }
    for node in ast.walk(tree):
        if id(node) in restricted:
            continue
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in FORBIDDEN_MODULES:
                    flag(node, f"import {a.name}")
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if module.split(".")[0] in FORBIDDEN_MODULES:
                flag(node, f"from {module} import ...")
            for a in node.names:
                if f"{module}.{a.name}" in FORBIDDEN_DOTTED or (
                    module == "builtins" and a.name in FORBIDDEN_BUILTINS
                ):
                    flag(node, f"from {module} import {a.name}")
        elif isinstance(node, ast.Name) and node.id in FORBIDDEN_BUILTINS and isinstance(node.ctx, ast.Load):
            if aliases.get(node.id, node.id) == node.id:  # not rebound by an import
                flag(node, f"builtin {node.id}")
        elif isinstance(node, ast.Name) and aliases.get(node.id) in FORBIDDEN_DOTTED:
            flag(node, f"{aliases[node.id]} (imported as {node.id})")
        elif isinstance(node, ast.Attribute):
            dotted = _dotted(node, aliases)
            if dotted in FORBIDDEN_DOTTED or (dotted and dotted.split(".")[0] in FORBIDDEN_MODULES):
                flag(node, dotted)
            elif isinstance(node.value, ast.Name) and node.value.id == "__builtins__":
                flag(node, f"__builtins__.{node.attr}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr":
            args = node.args
            if len(args) >= 2 and isinstance(args[1], ast.Constant) and args[1].value in FORBIDDEN_BUILTINS:
                flag(node, f"getattr(..., {args[1].value!r})")
    return found


def test_the_package_never_unpickles_evaluates_or_imports_by_name():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) >= 15  # the whole package, not an empty glob
    problems = [
        v for f in files for v in violations(f.read_text(encoding="utf-8"), str(f.relative_to(PACKAGE)))
    ]
    assert problems == []


@pytest.mark.parametrize(
    "snippet",
    [
        "import pickle",
        "import pickle as p",
        "from pickle import loads",
        "import _pickle",
        "import cPickle",
        "import dill",
        "import marshal",
        "import shelve",
        "import runpy",
        "from joblib import load",
        "eval('1')",
        "exec('x = 1')",
        "compile('1', 'f', 'eval')",
        "__import__('os')",
        "f = eval",
        "import builtins\nbuiltins.exec('1')",
        "from builtins import eval",
        "getattr(__builtins__, 'eval')('1')",
        "__builtins__.exec('1')",
        "getattr(x, 'exec')",
        "import torch\ntorch.load('m.pt')",
        "import torch as t\nt.load('m.pt', weights_only=False)",
        "from torch import load\nload('m.pt')",
        "from torch import load as fetch\nfetch('m.pt')",
        "import torch\ntorch.load('m.pt', weights_only=flag)",
        "import torch\ntorch.load('m.pt', weights_only=1)",
        "import torch\nf = torch.load\nf('m.pt', weights_only=True)",
        "import torch\ntorch.jit.load('m.pt')",
        "import torch.serialization\ntorch.serialization.load(f)",
        "import torch\ntorch.hub.load('repo', 'model')",
        "import numpy as np\nnp.load('w.npz', allow_pickle=True)",
        "import numpy\nnumpy.load('w.npy')",
        "import importlib\nimportlib.import_module(name)",
        "from importlib import import_module\nimport_module(name)",
        "import importlib.util\nimportlib.util.module_from_spec(spec)",
    ],
)
def test_the_checker_catches_each_forbidden_pattern(snippet):
    assert violations(snippet), snippet


@pytest.mark.parametrize(
    "snippet",
    [
        "model.eval()",
        "import torch\nmodel = torch.compile(model)",
        "import re\nre.compile('x')",
        "import importlib.util\nimportlib.util.find_spec('matplotlib')",
        "from safetensors.torch import load\nload(blob)",
        "x = {'eval': 1}\nx['eval']",
        "# eval('1') in a comment\ns = 'torch.load in a string'",
        "def run(evaluate):\n    return evaluate()",
        "getattr(model, 'train')",
        "import torch\ntorch.load('w.pth', map_location='cpu', weights_only=True)",
    ],
)
def test_the_checker_allows_look_alikes(snippet):
    assert violations(snippet) == []
