"""The documents stay true: every module is named in docs/architecture.md, every documented exit code is
the one in errors.py, and every module's ``Usage::`` block runs (or, where it needs a server, a dataset or
a trained run, at least calls what exists with arguments its signature accepts)."""

from __future__ import annotations

import ast
import builtins
import contextlib
import importlib
import inspect
import io
import re
import shlex
import textwrap
import typing
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import imgclf
from imgclf import errors

PACKAGE = Path(imgclf.__file__).parent
ROOT = PACKAGE.parents[1]
ARCHITECTURE = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
MODULES = sorted(p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py"))


# --- docs/architecture.md names every module ---------------------------------------------------------


def _named(rel: str) -> bool:
    if re.search(rf"(?<![\w/.]){re.escape(rel)}(?!\w)", ARCHITECTURE):
        return True
    if rel == "__init__.py":
        return "imgclf/__init__.py" in ARCHITECTURE
    # A subpackage's __init__.py is named by the subpackage: `data/`.
    return rel.endswith("/__init__.py") and f"`{rel[: -len('__init__.py')]}`" in ARCHITECTURE


@pytest.mark.parametrize("rel", MODULES)
def test_every_module_is_named_in_the_architecture_document(rel):
    assert _named(rel), f"docs/architecture.md does not name src/imgclf/{rel}: add it where it belongs"


def test_the_architecture_document_names_no_module_that_is_gone():
    mentioned = set(re.findall(r"`((?:[a-z_]+/)*[a-z_0-9]+\.py)`", ARCHITECTURE))
    gone = {m for m in mentioned if not (PACKAGE / m).is_file() and not m.startswith(("imgclf/", "tests/"))}
    gone.discard("imgclf/__init__.py")
    assert not gone, f"docs/architecture.md names modules that do not exist: {sorted(gone)}"


# --- exit codes: the tables in the README, docs/format.md and errors.py equal errors.py's classes -----

ERROR_CLASSES = sorted(
    (v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, errors.ImgclfError)),
    key=lambda c: c.__name__,
)
# A word each class's row of an exit-code table contains (the row is the class's meaning).
ROW_WORD = {
    "UsageError": "usage",
    "ModelFileError": "model file",
    "ImageError": "image",
    "PartialFailure": "batch",
    "StorageError": "disk",
    "ResumeError": "resume",
    "DatasetError": "dataset",
    "ExportError": "export",
    "OutOfMemory": "memory",
    "DistributedError": "distributed",
}
# Codes that no ImgclfError subclass carries as a class attribute.
OTHER_CODES = {0: "success", 1: "internal", 130: "SIGINT", 143: "SIGTERM"}


def _expected_codes() -> dict[int, set[str]]:
    codes: dict[int, set[str]] = {code: set() for code in OTHER_CODES}
    for cls in ERROR_CLASSES:
        if cls.__name__ in ROW_WORD:
            codes.setdefault(cls.exit_code, set()).add(cls.__name__)
    return codes


def _markdown_table(text: str) -> dict[int, str]:
    start = text.index("| exit code | meaning |")
    rows: dict[int, str] = {}
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        codes, meaning = line.strip("|").split("|", 1)
        for code in re.findall(r"\d+", codes):
            rows[int(code)] = meaning.lower()
    return rows


def _rst_table(text: str) -> dict[int, str]:
    block = text.split("====  ", 1)[1].split("====  ", 1)[0]
    return {int(m.group(1)): m.group(2).lower() for m in re.finditer(r"^(\d+)\s+(.*)$", block, re.M)}


TABLES = {
    "README.md": lambda: _markdown_table((ROOT / "README.md").read_text(encoding="utf-8")),
    "docs/format.md": lambda: _markdown_table((ROOT / "docs" / "format.md").read_text(encoding="utf-8")),
    "errors.py": lambda: _rst_table(errors.__doc__ or ""),
}


def test_every_error_class_has_a_row_word():
    named = {c.__name__ for c in ERROR_CLASSES} - {"ImgclfError", "RunFinished", "Interrupted"}
    assert named == set(ROW_WORD), "give a new error class its word in ROW_WORD (and its row in the tables)"


@pytest.mark.parametrize("where", sorted(TABLES))
def test_each_exit_code_table_lists_exactly_the_codes_errors_py_uses(where):
    table = TABLES[where]()
    expected = _expected_codes()
    assert sorted(table) == sorted(expected), where
    for code, names in expected.items():
        for name in names:
            assert ROW_WORD[name] in table[code], f"{where}: code {code} ({name}) reads {table[code]!r}"
    for code, word in OTHER_CODES.items():
        assert word.lower() in table[code] or (code == 1 and "bug" in table[code]), (where, code)


def test_the_exit_code_map_the_cli_uses_is_the_classes_codes():
    assert set(errors.EXIT_CODES.values()) == set(_expected_codes())


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_each_error_class_docstring_states_its_own_exit_code(cls):
    stated = re.findall(r"\(exit code (\d+)\)", cls.__doc__ or "")
    if cls is errors.ImgclfError or cls is errors.Interrupted:
        return
    assert stated and all(int(code) == cls.exit_code for code in stated), (cls.__name__, stated)


def test_exit_codes_named_beside_an_error_class_in_the_sources_are_its_codes():
    pattern = re.compile(r":class:`[~.\w]*?(\w+)` \(exit (?:code )?(\d+)")
    wrong = []
    for rel in MODULES:
        text = (PACKAGE / rel).read_text(encoding="utf-8")
        for name, code in pattern.findall(text):
            cls = getattr(errors, name, None)
            if isinstance(cls, type) and cls is not errors.Interrupted and cls.exit_code != int(code):
                wrong.append(f"{rel}: {name} (exit {code}), but its code is {cls.exit_code}")
    assert not wrong, wrong


# --- each module's Usage:: block ----------------------------------------------------------------------


def usage_block(rel: str) -> str | None:
    doc = ast.get_docstring(ast.parse((PACKAGE / rel).read_text(encoding="utf-8")), clean=True) or ""
    match = re.search(r"Usage::\n\n((?:[ ]{4}.*\n?|\n)+)", doc + "\n")
    return textwrap.dedent(match.group(1)).strip() + "\n" if match else None


def module_name(rel: str) -> str:
    return ("imgclf." + rel[:-3].replace("/", ".")).removesuffix(".__init__")


USAGES = {rel: block for rel in MODULES if (block := usage_block(rel)) is not None}
SHELL = {rel for rel, block in USAGES.items() if block.split()[0] in ("imgclf", "torchrun")}


def _png(path: Path, size: int = 20, seed: int = 0) -> None:
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def _model(path: str) -> None:
    from helpers import make_classifier

    imgclf.save(make_classifier(), path)


def _setup_images(ns: dict[str, Any]) -> None:
    from imgclf.config import PreprocessSpec

    for name in ("a.png", "cell.png", "cell1.png", "cell2.png"):
        _png(Path(name))
    from PIL import Image

    Image.open("a.png").convert("RGB").save("b.jpg")
    ns["spec"] = PreprocessSpec(height=16, width=16)


def _setup_dataset(ns: dict[str, Any]) -> None:
    from helpers import make_dataset

    make_dataset(Path("dataset"), {"": 10})


def _setup_classifier(ns: dict[str, Any]) -> None:
    import numpy as np

    from helpers import make_classifier

    _setup_images(ns)
    _model("malaria.imgclf")
    ns["classifier"] = make_classifier()
    ns["image_array"] = np.zeros((20, 20, 3), np.uint8)


def _setup_evaluation(ns: dict[str, Any]) -> None:
    import numpy as np

    ns["y_true"], ns["y_pred"] = np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0])
    ns["probs"] = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]], np.float32)
    ns["labels"], ns["paths"] = ns["y_true"], ["a.png", "b.png", "c.png", "d.png"]
    ns["logits"] = np.log(ns["probs"])


def _setup_files(ns: dict[str, Any]) -> None:
    import json

    ns["payload"], ns["text"], ns["report"], ns["json"] = b"bytes", "{}", {}, json


def _setup_settings(ns: dict[str, Any]) -> None:
    from dataclasses import dataclass

    ns["dataclass"] = dataclass


def _setup_listing(ns: dict[str, Any]) -> None:
    for name in ("cell.png", "more_cells/x.png", "dataset/training/cat/c.png"):
        _png(Path(name))


def _setup_reading(ns: dict[str, Any]) -> None:
    Path("run").mkdir()
    Path("run/record.json").write_text("{}")
    Path("recipe.json").write_text("{}")


def _setup_rgb(ns: dict[str, Any]) -> None:
    import numpy as np
    from PIL import Image

    ns["img"], ns["array"] = Image.new("LA", (4, 4)), np.zeros((4, 4, 3), np.uint8)


# Usage blocks that run, with what they need set up first (in an empty current folder).
RUNS: dict[str, Any] = {
    "_settings.py": _setup_settings,
    "_version.py": None,
    "config.py": None,
    "world.py": None,
    "classifier.py": _setup_classifier,
    "sharding.py": _setup_classifier,
    "modelfile/__init__.py": _setup_classifier,
    "modelfile/saving.py": _setup_classifier,
    "evaluation.py": _setup_evaluation,
    "calibration.py": _setup_evaluation,
    "images/__init__.py": _setup_images,
    "images/preprocess.py": _setup_images,
    "data/__init__.py": _setup_dataset,
    "data/folders.py": _setup_dataset,
    "data/listing.py": _setup_listing,
    "data/synthetic_cells.py": None,
    "fileio/__init__.py": _setup_files,
    "fileio/reading.py": _setup_reading,
    "fileio/writing.py": _setup_files,
    "models/__init__.py": None,
    "models/registry.py": None,
    "models/seed_resnet.py": None,
    "models/small_cnn.py": None,
    "models/gradcam.py": None,
    "data/synthetic_foreign.py": None,
    "serving/metrics.py": None,
    "serving/settings.py": None,
    "cli/cache.py": None,
    "cli/common.py": None,
    "data/cache_admin.py": None,
    "errors.py": None,  # raises the error it shows (RAISES)
    "images/rgb.py": _setup_rgb,
    "progress.py": None,
    "training/balance.py": None,
}
RAISES = {"errors.py": errors.DatasetError}
# Usage blocks that do not run here, and why: each is still compiled, its `imgclf ...` command lines and
# main([...]) argument lists are parsed by the real parser, and its calls of what the module (or the
# block) imports must fit their signatures (_check_calls).
NOT_RUN = {
    "needs a trained model, a dataset or minutes of training": [
        "__init__.py",
        "cli/__init__.py",
        "cli/demo.py",
        "cli/evaluate.py",
        "cli/report.py",
        "images/tta.py",
        "ood.py",
        "cli/explain.py",
        "cli/calibrate.py",
        "cli/model.py",
        "cli/predict.py",
        "cli/train.py",
        "data/decode.py",
        "data/heldout.py",
        "data/identity.py",
        "data/labels_csv.py",
        "data/synthetic.py",
        "dataset_evaluation.py",
        "precision.py",
        "training/__init__.py",
        "training/pipeline.py",
        "training/display.py",
    ],
    "a step of a larger flow: its inputs are made by the steps before it": [
        "training/embeddings.py",
        "training/finetune.py",
        "training/pretrained.py",
        "training/weight_files.py",
        "cli/output.py",
        "cli/recipe_flags.py",
        "data/decode_cache.py",
        "fileio/processes.py",
        "images/png.py",
        "images/read.py",
        "modelfile/checks.py",
        "modelfile/digests.py",
        "modelfile/foreign.py",
        "modelfile/format.py",
        "modelfile/manifest.py",
        "modelfile/probes.py",
        "modelfile/provenance.py",
        "modelfile/trust.py",
        "modelfile/weights.py",
        "models/graph_schema.py",
        "models/keras_graph.py",
        "plots.py",
        "reports.py",
        "report_html.py",
        "training/augment.py",
        "training/checkpoint.py",
        "training/determinism.py",
        "training/device.py",
        "training/ema.py",
        "training/interrupts.py",
        "training/job.py",
        "training/loop.py",
        "training/optim.py",
        "training/preflight.py",
        "training/record.py",
        "training/resume.py",
        "training/runfolder.py",
        "training/schedule.py",
        "training/state.py",
        "training/steps.py",
        "training/validate.py",
    ],
    "needs an ONNX export or a Keras file (optional extras)": [
        "interop/__init__.py",
        "interop/keras_hdf5.py",
        "loading.py",
        "interop/keras_config.py",
        "interop/keras_import.py",
        "interop/keras_reader.py",
        "interop/keras_zip.py",
        "interop/onnx_export.py",
        "interop/onnx_meta.py",
        "interop/onnx_parity.py",
        "interop/onnx_quantize.py",
        "interop/onnx_runtime.py",
        "interop/onnx_verify.py",
        "interop/openvino_export.py",
        "interop/openvino_runtime.py",
    ],
    "needs a running server, its requests or its model store": [
        "serving/__init__.py",
        "serving/app.py",
        "serving/batching.py",
        "serving/decoding.py",
        "serving/guard.py",
        "serving/protocol.py",
        "serving/inputs.py",
        "serving/models.py",
        "serving/server.py",
        "serving/v2.py",
        "serving/v2_inputs.py",
    ],
    "builds a timm backbone (an optional extra; its import costs seconds)": ["models/timm_backbone.py"],
    "needs several processes (torchrun)": [
        "cli/torchrun.py",
        "training/distributed.py",
        "training/global_bn.py",
    ],
    "changes the whole process (the malloc allocator)": ["cli/allocator.py"],
}


def _namespace(rel: str) -> dict[str, Any]:
    module = importlib.import_module(module_name(rel))
    ns = dict(vars(module))
    ns.setdefault("imgclf", imgclf)
    return ns


def _resolve(node: ast.expr, ns: dict[str, Any], env: dict[str, Any]) -> Any:
    """The object ``node`` names, ``_Instance(cls)`` for a variable the block assigned, else None."""
    if isinstance(node, ast.Name):
        if node.id in env:
            return env[node.id]
        return ns.get(node.id, getattr(builtins, node.id, None))
    if isinstance(node, ast.Attribute):
        base = _resolve(node.value, ns, env)
        if isinstance(base, _Instance):
            attr = inspect.getattr_static(base.cls, node.attr, None)
            if attr is None:
                assert _has_field(base.cls, node.attr), f"{base.cls.__name__} has no attribute {node.attr!r}"
            return getattr(base.cls, node.attr) if callable(attr) else None
        if isinstance(base, ModuleType):
            if not hasattr(base, node.attr):
                with contextlib.suppress(ImportError):
                    importlib.import_module(f"{base.__name__}.{node.attr}")
            assert hasattr(base, node.attr), f"module {base.__name__} has no attribute {node.attr!r}"
            return getattr(base, node.attr)
        if isinstance(base, type):
            assert hasattr(base, node.attr), f"{base.__name__} has no attribute {node.attr!r}"
            return getattr(base, node.attr)
    return None


def _has_field(cls: type, name: str) -> bool:
    """``name`` is an annotated field of ``cls`` (or a base) or set on ``self`` in its source."""
    for klass in cls.__mro__:
        if name in vars(klass).get("__annotations__", {}):
            return True
        with contextlib.suppress(OSError, TypeError):
            if re.search(rf"self\.{name}\b", inspect.getsource(klass)):
                return True
    return False


class _Instance:
    def __init__(self, cls: type) -> None:
        self.cls = cls


def _returned(func: Any) -> Any:
    if isinstance(func, type):
        return _Instance(func)
    with contextlib.suppress(Exception):
        ret = typing.get_type_hints(func).get("return")
        if isinstance(ret, type) and ret.__module__.startswith("imgclf"):
            return _Instance(ret)
    return None


def _block_imports(stmt: ast.Import | ast.ImportFrom, env: dict[str, Any]) -> None:
    for alias in stmt.names:
        if isinstance(stmt, ast.ImportFrom):
            env[alias.asname or alias.name] = getattr(importlib.import_module(stmt.module), alias.name)
        else:
            env[alias.asname or alias.name] = importlib.import_module(alias.name)


def _check_call(node: ast.Call, ns: dict[str, Any], env: dict[str, Any]) -> None:
    func = _resolve(node.func, ns, env)
    if not callable(func) or isinstance(func, _Instance):
        return
    if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
        return
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return
    args: list[None] = [None] * len(node.args)
    if isinstance(node.func, ast.Attribute) and isinstance(_resolve(node.func.value, ns, env), _Instance):
        args = [None, *args]  # the instance, for a method looked up on its class
    # `f(..., key=v)` elides the positional arguments: only the keywords must fit.
    elided = any(isinstance(a, ast.Constant) and a.value is Ellipsis for a in node.args)
    try:
        if elided:
            sig.bind_partial(**{k.arg: None for k in node.keywords if k.arg})
        else:
            sig.bind(*args, **{k.arg: None for k in node.keywords if k.arg})
    except TypeError as exc:
        raise AssertionError(f"`{ast.unparse(node)}` does not fit {func.__qualname__}{sig}: {exc}") from None


def _check_calls(block: str, ns: dict[str, Any]) -> None:
    """Each call of a known function or method binds to its signature; attributes of modules exist."""
    env: dict[str, Any] = {}
    for stmt in ast.parse(block).body:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            _block_imports(stmt, env)
            continue
        for node in ast.walk(stmt):
            if isinstance(node, ast.Call):
                _check_call(node, ns, env)
            elif isinstance(node, ast.Attribute):
                _resolve(node, ns, env)
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
            if isinstance(stmt.value, ast.Call):
                env[stmt.targets[0].id] = _returned(_resolve(stmt.value.func, ns, env))


def _shell_argvs(block: str) -> list[list[str]]:
    argvs = []
    for line in block.splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["torchrun"]:
            words = words[words.index("imgclf") :]
        if words:
            assert words[0] == "imgclf", line
            argvs.append(words[1:])
    return argvs


def _main_argvs(block: str) -> list[list[str]]:
    tree = ast.parse(block)
    return [
        ast.literal_eval(node.args[0])
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "main" and node.args
    ]


def _parses(argv: list[str]) -> None:
    from imgclf.cli.main import build_parser

    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            build_parser().parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"imgclf {shlex.join(argv)}: {err.getvalue().strip()}") from exc


def test_every_module_has_a_usage_block():
    assert sorted(set(MODULES) - set(USAGES)) == ["__main__.py"]  # `python -m imgclf`: nothing to call


def test_each_python_usage_block_runs_or_says_why_not():
    not_run = [rel for rels in NOT_RUN.values() for rel in rels]
    assert len(not_run) == len(set(not_run)) and not set(not_run) & set(RUNS)
    python_blocks = set(USAGES) - SHELL
    assert sorted(python_blocks - set(RUNS) - set(not_run)) == [], "add it to RUNS, or to NOT_RUN with why"
    assert sorted((set(RUNS) | set(not_run)) - python_blocks) == []


@pytest.mark.parametrize("rel", sorted(USAGES))
def test_each_usage_block_matches_the_api(rel):
    block = USAGES[rel]
    if rel in SHELL:
        for argv in _shell_argvs(block):
            _parses(argv)
        return
    compile(block, rel, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    for argv in _main_argvs(block):
        _parses(argv)
    if rel not in RUNS:
        _check_calls(block, _namespace(rel))


@pytest.mark.parametrize("rel", sorted(RUNS))
def test_each_runnable_usage_block_runs(rel, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("IMGCLF_CACHE_DIR", str(tmp_path / "cache"))
    ns = _namespace(rel)
    if RUNS[rel] is not None:
        RUNS[rel](ns)
    code = compile(USAGES[rel], f"<usage of {rel}>", "exec")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        if rel in RAISES:
            with pytest.raises(RAISES[rel]):
                exec(code, ns)  # noqa: S102 - our own docstrings
        else:
            exec(code, ns)  # noqa: S102 - our own docstrings
