"""Tests of imgclf.config: JSON round trips, unknown keys, wrong types and out-of-range values."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from imgclf.config import AugmentSpec, PreprocessSpec, TrainConfig
from imgclf.errors import UsageError

PREPROCESS = PreprocessSpec(
    height=48,
    width=32,
    interpolation="nearest",
    rescale=1 / 127.5,
    mean=(0.5, 0.25, -1.0),
    std=(0.229, 0.224, 2.0),
)
AUGMENT = AugmentSpec(
    rotation=33.5,
    zoom=0.2,
    width_shift=0.1,
    height_shift=0.0,
    shear=12.0,
    horizontal_flip=False,
    vertical_flip=True,
    fill="reflect",
    enabled=False,
)
TRAIN = TrainConfig(
    arch="small_cnn",
    arch_args={"widths": [8, 16], "reg": 0.001},
    epochs=3,
    batch_size=7,
    lr=0.05,
    momentum=0.8,
    decay=0.001,
    seed=123,
    label_smoothing=0.1,
    preprocess=PREPROCESS,
    augment=AUGMENT,
    val_split=0.15,
    test_split=0.05,
    device="cuda:1",
    precision="bf16",
    channels_last=False,
    compile=True,
    eval_batch_size=64,
    keep="best",
    monitor="val_accuracy",
    patience=4,
    deterministic=True,
)


def json_round_trip(obj: dict) -> dict:
    return json.loads(json.dumps(obj, allow_nan=False))


@pytest.mark.parametrize(
    "settings",
    [PREPROCESS, AUGMENT, TRAIN, PreprocessSpec(), AugmentSpec(), TrainConfig()],
    ids=["pre", "aug", "train", "pre-default", "aug-default", "train-default"],
)
def test_round_trip_through_json(settings: object) -> None:
    as_dict = settings.to_dict()  # type: ignore[attr-defined]
    back = type(settings).from_dict(json_round_trip(as_dict))  # type: ignore[attr-defined]
    assert back == settings
    assert back.to_dict() == as_dict


def test_to_dict_is_plain_json_data() -> None:
    d = TRAIN.to_dict()
    assert d["preprocess"]["mean"] == [0.5, 0.25, -1.0]
    assert isinstance(d["preprocess"], dict) and isinstance(d["augment"], dict)
    assert d["arch_args"] == {"widths": [8, 16], "reg": 0.001}
    assert set(d) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert json_round_trip(d) == d


def test_from_dict_copies_mutable_inputs() -> None:
    raw = {"arch_args": {"widths": [8]}}
    cfg = TrainConfig.from_dict(raw)
    raw["arch_args"]["reg"] = 1.0
    assert cfg.arch_args == {"widths": [8]}
    out = cfg.to_dict()
    out["arch_args"]["x"] = 1
    assert "x" not in cfg.arch_args


def test_missing_keys_take_defaults_and_ints_become_floats() -> None:
    assert PreprocessSpec.from_dict({}) == PreprocessSpec()
    spec = PreprocessSpec.from_dict({"mean": [0, 0, 1], "rescale": 1})
    assert spec.mean == (0.0, 0.0, 1.0) and isinstance(spec.mean, tuple)
    assert isinstance(spec.rescale, float)
    cfg = TrainConfig.from_dict({"preprocess": {"height": 32}, "decay": None, "patience": None})
    assert cfg.preprocess == PreprocessSpec(height=32) and cfg.augment == AugmentSpec()


def test_settings_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        PREPROCESS.height = 3  # type: ignore[misc]


# --- unknown keys and wrong types ----------------------------------------------------------------


def _usage(fn, *args, **kwargs) -> UsageError:
    with pytest.raises(UsageError) as info:
        fn(*args, **kwargs)
    assert info.value.exit_code == 2
    assert isinstance(info.value, ValueError)
    return info.value


def test_unknown_keys_are_listed() -> None:
    err = _usage(PreprocessSpec.from_dict, {"height": 32, "sizee": 3, "colour": "red"})
    assert str(err).startswith(
        "unknown PreprocessSpec setting(s); received colour, sizee; "
        "expected one of height, interpolation, mean, rescale, std, width"
    )
    err = _usage(TrainConfig.from_dict, {"preprocess": {"hieght": 3}})
    assert str(err).startswith("unknown TrainConfig.preprocess setting(s); received hieght")
    err = _usage(TrainConfig.from_dict, {"augment": {"roation": 3}, "epochs": 1})
    assert "unknown TrainConfig.augment setting(s); received roation" in str(err)


@pytest.mark.parametrize(
    "cls,data,problem",
    [
        (PreprocessSpec, {"height": "64"}, "setting 'PreprocessSpec.height' has the wrong type"),
        (PreprocessSpec, {"height": 64.0}, "setting 'PreprocessSpec.height' has the wrong type"),
        (PreprocessSpec, {"width": True}, "setting 'PreprocessSpec.width' has the wrong type"),
        (PreprocessSpec, {"mean": "abc"}, "setting 'PreprocessSpec.mean' has the wrong type"),
        (PreprocessSpec, {"mean": [0, 0]}, "setting 'PreprocessSpec.mean' has the wrong length"),
        (PreprocessSpec, {"std": [1, 1, "1"]}, "setting 'PreprocessSpec.std' has the wrong type"),
        (PreprocessSpec, {"interpolation": 3}, "setting 'PreprocessSpec.interpolation' has the wrong type"),
        (PreprocessSpec, {"rescale": None}, "setting 'PreprocessSpec.rescale' has the wrong type"),
        (AugmentSpec, {"horizontal_flip": "yes"}, "setting 'AugmentSpec.horizontal_flip' has the wrong type"),
        (AugmentSpec, {"rotation": [20]}, "setting 'AugmentSpec.rotation' has the wrong type"),
        (TrainConfig, {"epochs": 2.5}, "setting 'TrainConfig.epochs' has the wrong type"),
        (TrainConfig, {"decay": "0.1"}, "setting 'TrainConfig.decay' has the wrong type"),
        (TrainConfig, {"decay": True}, "setting 'TrainConfig.decay' has the wrong type"),
        (TrainConfig, {"patience": 1.5}, "setting 'TrainConfig.patience' has the wrong type"),
        (TrainConfig, {"arch_args": ["widths", 8]}, "setting 'TrainConfig.arch_args' has the wrong type"),
        (TrainConfig, {"preprocess": "64x64"}, "TrainConfig.preprocess must be a mapping; received str"),
        (TrainConfig, {"augment": None}, "TrainConfig.augment must be a mapping; received NoneType"),
        (TrainConfig, ["epochs", 3], "TrainConfig must be a mapping; received list"),
    ],
)
def test_wrong_types_are_rejected(cls: type, data: object, problem: str) -> None:
    assert str(_usage(cls.from_dict, data)).startswith(problem)


# --- out-of-range values -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes,problem",
    [
        ({"std": (1.0, 0.0, 1.0)}, "preprocess std contains zero"),
        ({"std": (1e-13, 1.0, 1.0)}, "preprocess std contains zero"),
        ({"height": -64}, "preprocess height is out of range"),
        ({"height": 0}, "preprocess height is out of range"),
        ({"width": 10**6}, "preprocess width is out of range"),
        ({"interpolation": "cubic"}, "unknown interpolation; received 'cubic'; expected nearest | bilinear"),
        ({"mean": (0.0, 0.0)}, "preprocess mean must have 3 values (R, G, B)"),
        ({"mean": (0.0, math.nan, 0.0)}, "setting 'mean' is not a finite number"),
        ({"rescale": 0.0}, "setting 'rescale' is out of range"),
        ({"rescale": math.inf}, "setting 'rescale' is not a finite number"),
    ],
)
def test_preprocess_bounds(changes: dict, problem: str) -> None:
    assert str(_usage(PreprocessSpec, **changes)).startswith(problem)
    data = {k: list(v) if isinstance(v, tuple) else v for k, v in changes.items()}
    if "mean" in changes and len(changes["mean"]) != 3:
        problem = "setting 'PreprocessSpec.mean' has the wrong length"
    assert str(_usage(PreprocessSpec.from_dict, data)).startswith(problem)


def test_preprocess_bounds_name_the_limits() -> None:
    assert "expected an integer in [1, 4096]" in str(_usage(PreprocessSpec, height=10**6))
    assert PreprocessSpec(height=4096, width=1).validated().size == (4096, 1)


@pytest.mark.parametrize(
    "changes,problem",
    [
        ({"rotation": 181.0}, "setting 'rotation' is out of range"),
        ({"rotation": -1.0}, "setting 'rotation' is out of range"),
        ({"zoom": 0.95}, "setting 'zoom' is out of range"),
        ({"width_shift": 1.5}, "setting 'width_shift' is out of range"),
        ({"shear": math.nan}, "setting 'shear' is not a finite number"),
        ({"fill": "wrap"}, "unknown augmentation fill mode"),
    ],
)
def test_augment_bounds(changes: dict, problem: str) -> None:
    assert str(_usage(AugmentSpec, **changes)).startswith(problem)
    assert str(_usage(AugmentSpec.from_dict, changes)).startswith(problem)


@pytest.mark.parametrize(
    "changes,problem",
    [
        ({"val_split": 0.5, "test_split": 0.45}, "val_split + test_split leaves too little training data"),
        ({"val_split": 0.95}, "setting 'val_split' is out of range"),
        ({"epochs": 0}, "setting 'epochs' is out of range"),
        ({"batch_size": 0}, "setting 'batch_size' is out of range"),
        ({"seed": -1}, "setting 'seed' is out of range"),
        ({"seed": 2**63}, "setting 'seed' is out of range"),
        ({"lr": math.inf}, "setting 'lr' is not a finite number"),
        ({"lr": -0.1}, "setting 'lr' is out of range"),
        ({"momentum": 1.0}, "setting 'momentum' is out of range"),
        ({"decay": -1.0}, "setting 'decay' is out of range"),
        ({"label_smoothing": 1.0}, "setting 'label_smoothing' is out of range"),
        ({"precision": "fp16"}, "unknown precision"),
        ({"device": "tpu"}, "unknown device"),
        ({"device": "cuda:x"}, "unknown device"),
        ({"keep": "first"}, "unknown --keep value"),
        ({"monitor": "accuracy"}, "unknown --monitor value"),
        ({"patience": 0}, "patience must be a positive integer"),
        ({"preprocess": {"std": [0, 1, 1]}}, "preprocess std contains zero"),
        ({"augment": {"zoom": 2.0}}, "setting 'zoom' is out of range"),
    ],
)
def test_train_config_bounds(changes: dict, problem: str) -> None:
    assert str(_usage(TrainConfig.from_dict, changes)).startswith(problem)


@pytest.mark.parametrize("changes", [{"patience": "3"}, {"patience": 2.5}, {"device": None}, {"device": 0}])
def test_validated_raises_usage_errors_for_badly_typed_fields(changes: dict) -> None:
    """Built directly (not via from_dict), wrong types give a UsageError at construction, not a TypeError."""
    _usage(TrainConfig, **changes)


def test_replace_validates() -> None:
    assert PREPROCESS.replace(height=16).height == 16
    assert str(_usage(PREPROCESS.replace, height=0)).startswith("preprocess height is out of range")
    assert str(_usage(TRAIN.replace, epochs=0)).startswith("setting 'epochs' is out of range")


def test_valid_configs_pass_validation_unchanged() -> None:
    assert TRAIN.validated() is TRAIN
    assert TrainConfig(device="cuda:0").validated().device == "cuda:0"
    assert TrainConfig(val_split=0.0, test_split=0.0, lr=0.0).validated().lr == 0.0


# --- derived values and recipe defaults ----------------------------------------------------------


def test_effective_decay_defaults_to_lr_over_epochs() -> None:
    assert TrainConfig().effective_decay == pytest.approx(0.1 / 25)
    assert TrainConfig(lr=0.05, epochs=10).effective_decay == pytest.approx(0.005)
    assert TrainConfig(decay=0.01).effective_decay == 0.01
    assert TrainConfig(decay=0.0).effective_decay == 0.0  # an explicit zero is not "unset"


def test_defaults_reproduce_the_recipe() -> None:
    cfg = TrainConfig()
    assert (cfg.arch, cfg.epochs, cfg.batch_size, cfg.lr, cfg.momentum, cfg.label_smoothing) == (
        "seed_resnet",
        25,
        32,
        0.1,
        0.9,
        0.0,
    )
    pre = cfg.preprocess
    assert (pre.height, pre.width, pre.rescale, pre.interpolation) == (64, 64, 1 / 255, "bilinear")
    aug = cfg.augment
    ranges = (aug.rotation, aug.zoom, aug.width_shift, aug.height_shift, aug.shear)
    assert ranges == (20.0, 0.05, 0.05, 0.05, 0.05)
    assert aug.horizontal_flip and not aug.vertical_flip and aug.fill == "nearest" and aug.enabled


def test_an_invalid_config_cannot_be_built():
    """Construction validates: no TrainConfig (or nested spec) with an out-of-range value ever exists."""
    for build in (
        lambda: TrainConfig(epochs=0),
        lambda: TrainConfig(keep="first"),
        lambda: PreprocessSpec(interpolation="cubic"),
        lambda: AugmentSpec(fill="wrap"),
        lambda: TRAIN.replace(lr=-1.0),
        lambda: TrainConfig(preprocess={"height": 3}),
    ):
        _usage(build)


def test_unknown_keys_and_choices_suggest_a_close_match():
    assert "(did you mean 'epochs'?)" in str(_usage(TrainConfig.from_dict, {"epoch": 3}))
    assert "(did you mean 'bilinear'?)" in str(_usage(PreprocessSpec, interpolation="bilinaer"))


def test_unknown_architecture_suggests_a_close_match():
    from imgclf.models import registry

    err = _usage(registry.info, "seed_resent")
    assert str(err).startswith("unknown architecture; received 'seed_resent'; expected one of ")
    assert "(did you mean 'seed_resnet'?)" in str(err)


# --- RunOptions: the run options of imgclf.train and imgclf train, declared once ---------------------------


def test_run_options_defaults_and_paths_as_text(tmp_path):
    from imgclf.config import RunOptions
    from imgclf.images.read import MAX_PIXELS

    options = RunOptions(run_dir=tmp_path / "run", cache_dir=tmp_path)
    assert options.run_dir == str(tmp_path / "run") and options.cache_dir == str(tmp_path)
    assert RunOptions().max_pixels == MAX_PIXELS and RunOptions().use_cache and RunOptions().progress is None
    assert json.loads(json.dumps(options.to_dict()))["run_dir"] == str(tmp_path / "run")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"probes_from": -1}, "setting 'probes_from' is out of range"),
        ({"max_pixels": 0}, "max_pixels is out of range"),
        ({"max_pixels": 10**12}, "max_pixels is out of range"),
    ],
)
def test_run_options_are_validated_at_construction(changes, message):
    from imgclf.config import RunOptions

    with pytest.raises(UsageError, match=message):
        RunOptions(**changes)


def test_train_refuses_more_probes_than_a_model_file_holds_before_any_work(tmp_path):
    import imgclf

    with pytest.raises(UsageError, match="setting 'probes_from' is out of range"):
        imgclf.train(tmp_path / "no-such-dataset", tmp_path / "m.imgclf", probes_from=10_000)
    assert list(tmp_path.iterdir()) == []


def test_run_options_updated_refuses_an_unknown_option_by_name():
    from imgclf.config import RunOptions

    assert RunOptions().updated({"skip_bad": True}).skip_bad
    with pytest.raises(TypeError, match="unknown run option 'skipbad' \\(did you mean 'skip_bad'\\?\\)"):
        RunOptions().updated({"skipbad": True})


def test_run_options_read_back_what_run_json_records():
    from imgclf.config import RunOptions

    record = {"plot": "/p/plot.png", "skip_bad": True, "probes_from": 3, "dataset": "d", "model": "m"}
    options = RunOptions.from_run_json(record, run_dir="run", resume=True)
    assert (options.plot_path, options.skip_bad, options.probes_from) == ("/p/plot.png", True, 3)
    assert (options.run_dir, options.resume, options.force) == ("run", True, False)
    older = RunOptions.from_run_json({"probes_from": None}, probes_from=2)  # flags given win
    assert (older.plot_path, older.skip_bad, older.probes_from) == (None, False, 2)


def test_train_help_takes_the_run_options_help_from_their_declaration():
    import dataclasses as dc

    from imgclf.cli.recipe_flags import option_help
    from imgclf.config import RunOptions

    fields = {f.name: f for f in dc.fields(RunOptions)}
    assert option_help("run_dir") == f"{fields['run_dir'].metadata['help']} (default MODEL-run/ beside MODEL)"
    assert option_help("plot_path").endswith("(default RUN_DIR/plot.png)")
    assert option_help("skip_bad") == fields["skip_bad"].metadata["help"]
