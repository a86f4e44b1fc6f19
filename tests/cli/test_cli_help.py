"""Tests of ``imgclf train --help`` as generated from TrainConfig, and of a light, fast parser."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest

from imgclf.cli import recipe_flags as recipe_cli
from imgclf.cli.main import build_parser, parse
from imgclf.config import AugmentSpec, PreprocessSpec, TrainConfig


def _train_help(capsys) -> str:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    return capsys.readouterr().out


def _entry(text: str, flag: str) -> str:
    """The help entry of ``flag`` in the options list, its wrapped lines joined by single spaces."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split(" ", 3)[2:3] in ([flag], [f"{flag},"]))
    end = next(
        (j for j in range(start + 1, len(lines)) if not lines[j].strip() or lines[j].startswith("  -")),
        len(lines),
    )
    return " ".join(" ".join(lines[start:end]).split())


def _shown_default(value: object) -> str:
    return ("on" if value else "off") if isinstance(value, bool) else str(value)


def test_every_recipe_flag_shows_its_dataclass_default(capsys):
    text = _train_help(capsys)
    flags = recipe_cli.recipe_flags()
    assert {f.path[-1] for f in flags} >= {"epochs", "batch_size", "lr", "interpolation", "rotation", "keep"}
    for spec in flags:
        shown = spec.field.metadata.get("default_text") or _shown_default(spec.field.default)
        assert _entry(text, spec.flag).endswith(f"(default {shown})"), spec.flag


@pytest.mark.parametrize(
    "cls,name,value",
    [(TrainConfig, "epochs", 7), (PreprocessSpec, "interpolation", "box"), (AugmentSpec, "rotation", 2.5)],
)
def test_changing_a_default_in_config_changes_the_help(cls, name, value, capsys, monkeypatch):
    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    monkeypatch.setattr(field, "default", value)
    text = _train_help(capsys)
    assert _entry(text, "--" + name.replace("_", "-")).endswith(f"(default {value})")


def test_flags_set_the_config_fields_they_are_generated_from():
    argv = "train -d d -m m --epochs 3 --interpolation nearest --rotation 5 --no-flip --no-augment"
    args = parse([*argv.split(), "--keep", "last", "--shift", "0.1", "--size", "32x48"])
    cfg = recipe_cli.config_from_args(args)
    assert (cfg.epochs, cfg.preprocess.interpolation, cfg.augment.rotation) == (3, "nearest", 5.0)
    assert (cfg.augment.horizontal_flip, cfg.augment.enabled, cfg.keep) == (False, False, "last")
    assert (cfg.augment.width_shift, cfg.augment.height_shift, cfg.preprocess.size) == (0.1, 0.1, (32, 48))
    untouched = recipe_cli.config_from_args(parse(["train", "-d", "d", "-m", "m"]))
    assert untouched == TrainConfig()


def test_choices_come_from_the_literal_types(capsys):
    text = _train_help(capsys)
    choices = "{nearest,bilinear,bicubic,lanczos,box,hamming}"
    assert _entry(text, "--interpolation").startswith(f"--interpolation {choices}")
    assert _entry(text, "--keep").startswith("--keep {best,last}")


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["train", "--help"], ["train", "--epochs", "x"]])
def test_help_version_and_usage_errors_do_not_import_torch(argv):
    code = (
        "import sys\n"
        "from imgclf.cli.main import main\n"
        "try:\n"
        f"    main({json.dumps(argv)})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('\\nTORCH' if 'torch' in sys.modules else '\\nNO-TORCH')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60).stdout
    assert out.rstrip().endswith("NO-TORCH")
