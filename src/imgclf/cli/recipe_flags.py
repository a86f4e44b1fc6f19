"""``imgclf train``'s recipe flags, generated from :class:`imgclf.TrainConfig`, and the config they build.

Every recipe flag, its type, its choices and the "(default X)" in ``--help`` come from the fields of
``TrainConfig`` and its nested settings (:mod:`imgclf.config`), so a default is written once.

Usage::

    for spec in recipe_flags():
        add_recipe_flag(parser, spec)
    config = config_from_args(parser.parse_args(argv))
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from imgclf.errors import UsageError

# Which group of --help a TrainConfig field's flag is listed in (the rest are "recipe").
RUN_FIELDS = ("device", "precision", "channels_last", "compile", "eval_batch_size")


CHECKPOINT_FIELDS = ("keep", "monitor", "patience", "deterministic")


@dataclasses.dataclass(frozen=True)
class RecipeFlag:
    """A command-line flag generated from one settings field (``path`` is the field's place in the config)."""

    flag: str
    path: tuple[str, ...]
    field: dataclasses.Field
    hint: Any

    @property
    def dest(self) -> str:
        return "config." + ".".join(self.path)


def recipe_flags() -> list[RecipeFlag]:
    """Every ``TrainConfig`` setting that has a flag of its own, nested settings included."""
    from imgclf._settings import Settings, type_hints
    from imgclf.config import TrainConfig

    flags: list[RecipeFlag] = []

    def walk(cls: type, path: tuple[str, ...]) -> None:
        hints = type_hints(cls)
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            if isinstance(hint, type) and issubclass(hint, Settings):
                walk(hint, (*path, f.name))
            elif f.metadata.get("flag") is not None:
                flag = f.metadata["flag"] or "--" + f.name.replace("_", "-")
                flags.append(RecipeFlag(flag, (*path, f.name), f, hint))

    walk(TrainConfig, ())
    return flags


def default_text(f: dataclasses.Field) -> str:
    if f.metadata.get("default_text"):
        return f.metadata["default_text"]
    if isinstance(f.default, bool):
        return "on" if f.default else "off"
    return str(f.default)


def option_help(name: str) -> str:
    """A :class:`imgclf.RunOptions` field's help line for its ``imgclf train`` flag, with "(default X)"
    where the default is more than off."""
    from imgclf.config import RunOptions

    f = next(f for f in dataclasses.fields(RunOptions) if f.name == name)
    if f.default is False and not f.metadata.get("default_text"):
        return f.metadata["help"]
    return f"{f.metadata['help']} (default {default_text(f)})"


def add_recipe_flag(group: argparse._ActionsContainer, spec: RecipeFlag) -> None:
    import typing

    from imgclf._settings import choices_of

    help_text = f"{spec.field.metadata.get('help', '')} (default {default_text(spec.field)})"
    kwargs: dict[str, Any] = {"dest": spec.dest, "default": None, "help": help_text}
    choices = choices_of(spec.hint)
    base = [a for a in typing.get_args(spec.hint) if a is not type(None)] or [spec.hint]
    if choices is not None:
        kwargs["choices"] = choices
    elif base[0] is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
    else:
        kwargs["type"] = base[0]
        kwargs["metavar"] = "N" if base[0] in (int, float) else "NAME"
    group.add_argument(spec.flag, **kwargs)


MAX_CONFIG_BYTES = 1 << 20  # a TrainConfig is a few hundred bytes


def config_from_args(args: argparse.Namespace, start: dict[str, Any] | None = None) -> Any:
    """The TrainConfig: ``start`` (a resumed run's recipe, else the defaults), then --config, then flags."""
    from imgclf.config import TrainConfig

    base: dict[str, Any] = dict(start or {})
    if args.config:
        from imgclf.fileio.reading import os_reason, read_json

        try:
            base.update(read_json(args.config, MAX_CONFIG_BYTES, "--config"))
        except (OSError, TypeError, ValueError) as exc:
            raise UsageError(
                "cannot read --config",
                received=f"{args.config} ({os_reason(exc) if isinstance(exc, OSError) else exc})",
                expected="a JSON file of TrainConfig settings",
                fix="check the file",
            ) from None
    if getattr(args, "config.recipe", None):  # the preset fills what the start and --config leave unset
        base["recipe"] = getattr(args, "config.recipe")
    pretrained = any(getattr(args, f"config.{k}", None) or base.get(k) for k in ("weights", "init_from"))
    if start is None and pretrained and "recipe" not in base:
        base["recipe"] = "finetune"
    parent = getattr(args, "config.init_from", None) or base.get("init_from")
    if start is None and parent:  # the parent's architecture and preprocessing
        from imgclf.training.pretrained import parent_settings

        settings = parent_settings(parent)
        arch = getattr(args, "config.arch", None)
        if arch and arch != settings["arch"]:
            raise UsageError(
                "--init-from names a model of another architecture",
                received=f"{parent}: {settings['arch']}",
                expected=f"--arch {arch}",
                fix="drop --arch: imgclf train --init-from takes the architecture from the file",
            )
        base = {**settings, **base}
    if start is None and "preprocess" not in base:
        # A backbone's own preprocessing (timm's pretrained configuration) comes before the flags.
        base["preprocess"] = backbone_preprocess(getattr(args, "config.arch", None) or base.get("arch"))
    settings = TrainConfig.from_dict(base).to_dict()
    for spec in recipe_flags():
        value = getattr(args, spec.dest)
        if value is not None:
            _set_path(settings, spec.path, value)
    if args.size:
        settings["preprocess"]["height"], settings["preprocess"]["width"] = args.size
    if args.shift is not None:
        settings["augment"]["width_shift"] = settings["augment"]["height_shift"] = args.shift
    for key in ("mean", "std"):
        if getattr(args, key, None) is not None:
            settings["preprocess"][key] = list(getattr(args, key))
    if args.arch_arg:
        settings["arch_args"] = {**settings["arch_args"], **dict(args.arch_arg)}
    return TrainConfig.from_dict(settings)


def backbone_preprocess(arch: Any) -> dict[str, Any]:
    """The preprocessing a backbone from another library was trained with (``{}`` for our own archs).

    Raises:
        UsageError: The architecture's library is missing or does not know the name.
    """
    from imgclf.models.timm_backbone import arch_preprocess

    return arch_preprocess(arch) if isinstance(arch, str) else {}


def _set_path(settings: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for key in path[:-1]:
        settings = settings[key]
    settings[path[-1]] = value
