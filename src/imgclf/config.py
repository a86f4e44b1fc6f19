"""Frozen, validated settings: how images are preprocessed, augmented and trained on.

Each dataclass round-trips through plain JSON-able dicts; ``from_dict`` rejects unknown keys and wrong
types so a settings dict from a file can never smuggle in anything unexpected (the shared machinery is
in :mod:`imgclf._settings`).

This module is the one source of truth for the recipe: every default is written once, here; the
``imgclf train`` flags, their choices and the "(default X)" in ``--help`` are generated from these fields.

Usage::

    spec = PreprocessSpec(height=64, width=64, interpolation="nearest")
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    cfg = TrainConfig(epochs=5)  # validated on construction: an invalid config cannot exist
    stable = TrainConfig.from_recipe("stable", epochs=30)  # a preset, then overrides
    options = RunOptions(run_dir="malaria-run", skip_bad=True)  # where and how a training runs
    assert RunOptions.from_run_json({"skip_bad": True, "probes_from": 2}).probes_from == 2
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass
from typing import Any, Literal

from imgclf._settings import Settings, check_integer, check_number, did_you_mean, setting
from imgclf.errors import UsageError

Interpolation = Literal["nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"]
FillMode = Literal["nearest", "constant", "reflect"]
Precision = Literal["auto", "fp32", "bf16"]
Keep = Literal["best", "last"]
Monitor = Literal["val_loss", "val_accuracy", "val_balanced_accuracy", "val_macro_f1"]
Balance = Literal["none", "weights", "sampler"]
Recipe = Literal["seed", "stable", "finetune"]
Schedule = Literal["time_decay", "cosine", "one_cycle"]
INTERPOLATIONS: tuple[str, ...] = typing.get_args(Interpolation)
MAX_SIDE = 4096
# A dataset's splits, by their folder names, and how a dataset without split folders is divided
# (TrainConfig's defaults and the scanners', imgclf.data).
SPLITS: tuple[str, ...] = ("training", "validation", "testing")
VAL_SPLIT = 0.1
TEST_SPLIT = 0.2
SEED = 42
# Presets: TrainConfig values that differ from the class defaults (which are the seed recipe). The measured
# reasons for each stable value are in docs/performance.md ("Recipes").
RECIPES: dict[str, dict[str, Any]] = {
    "seed": {},
    "stable": {
        "lr": 0.05,
        "schedule": "cosine",
        "warmup": 1.0,
        "nesterov": True,
        "label_smoothing": 0.1,
        "ema": 0.998,
        "balance": "weights",
    },
    # Starting from trained weights (the CLI's preset with --weights/--init-from): head-only epochs, then a
    # one-cycle schedule per phase at a lower peak rate.
    "finetune": {"lr": 0.05, "schedule": "one_cycle"},
}


@dataclass(frozen=True)
class PreprocessSpec(Settings):
    """How any image becomes the model's input tensor (stored in every model file).

    The pipeline is fixed (see :mod:`imgclf.images.preprocess`): decode → EXIF orientation → RGB → resize to
    ``height`` × ``width`` with ``interpolation`` → ``(pixel * rescale - mean) / std``.

    Attributes:
        height: Output height in pixels.
        width: Output width in pixels.
        interpolation: Pillow resampling filter. ``bilinear`` (antialiased when shrinking) is the
            default; ``nearest`` reproduces Keras' ``flow_from_directory``/``load_img``.
        rescale: Multiplier applied to 0-255 pixel values (the recipe's ``rescale=1/255``).
        mean: Per-channel value subtracted after rescaling.
        std: Per-channel divisor applied after subtracting ``mean``.
    """

    height: int = setting(
        64, "input height in pixels", flag=None, label="preprocess height", bounds=(1, MAX_SIDE)
    )
    width: int = setting(
        64, "input width in pixels", flag=None, label="preprocess width", bounds=(1, MAX_SIDE)
    )
    interpolation: Interpolation = setting(
        "bilinear", "resize filter (nearest = Keras flow_from_directory)", label="interpolation"
    )
    rescale: float = setting(
        1.0 / 255.0, "multiplier for 0-255 pixel values", default_text="1/255", bounds=(1e-12, 1e6)
    )
    mean: tuple[float, float, float] = setting((0.0, 0.0, 0.0), "per-channel mean", flag=None)
    std: tuple[float, float, float] = setting((1.0, 1.0, 1.0), "per-channel std", flag=None)

    def validated(self) -> PreprocessSpec:
        """Return self after checking mean and std (the other fields' bounds are declared with them)."""
        for name in ("mean", "std"):
            v = getattr(self, name)
            if not isinstance(v, tuple) or len(v) != 3:
                raise UsageError(
                    f"preprocess {name} must have 3 values (R, G, B)",
                    received=repr(v),
                    expected="3 numbers",
                    fix=f"give {name} one value per channel",
                )
            for x in v:
                check_number(name, x, -1e6, 1e6)
        if any(abs(s) < 1e-12 for s in self.std):
            raise UsageError(
                "preprocess std contains zero",
                received=repr(self.std),
                expected="non-zero values",
                fix="use std values such as 1.0 or 0.229",
            )
        return self

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` of the model input."""
        return (self.height, self.width)


# The default TrainConfig.preprocess, one shared (frozen) instance: a config still holding this very object
# was not given a preprocessing, so the architecture's own applies (``TrainConfig.preprocess_given``). An
# equal spec built by the caller is "given", and our own architectures' own preprocessing is this default.
ARCH_PREPROCESS = PreprocessSpec()


@dataclass(frozen=True)
class AugmentSpec(Settings):
    """Random affine augmentation applied to whole training batches (Keras ImageDataGenerator terms).

    Attributes:
        rotation: Maximum rotation in degrees (uniform in ±rotation).
        zoom: Zoom range: x and y scale independently drawn from [1 - zoom, 1 + zoom].
        width_shift: Horizontal shift as a fraction of the width (±).
        height_shift: Vertical shift as a fraction of the height (±).
        shear: Shear angle in **degrees**, as Keras reads ``shear_range`` (0.05° is nearly nothing —
            kept on purpose to reproduce the recipe).
        horizontal_flip: Flip half the images left-right.
        vertical_flip: Flip half the images upside down.
        fill: How pixels outside the image are filled: ``nearest`` (edge pixels, Keras' default),
            ``constant`` (zeros) or ``reflect``.
        enabled: Turn augmentation off entirely.
    """

    rotation: float = setting(20.0, "max rotation in degrees", bounds=(0.0, 180.0))
    zoom: float = setting(0.05, "zoom range", bounds=(0.0, 0.9))
    width_shift: float = setting(0.05, "horizontal shift fraction (--shift sets both)", bounds=(0.0, 1.0))
    height_shift: float = setting(0.05, "vertical shift fraction (--shift sets both)", bounds=(0.0, 1.0))
    shear: float = setting(0.05, "shear in degrees, Keras' meaning", bounds=(0.0, 80.0))
    horizontal_flip: bool = setting(True, "random horizontal flips", flag="--flip")
    vertical_flip: bool = setting(False, "random vertical flips")
    fill: FillMode = setting("nearest", "fill for pixels outside the image", label="augmentation fill mode")
    enabled: bool = setting(True, "augmentation on or off", flag="--augment")


@dataclass(frozen=True)
class TrainConfig(Settings):
    """Everything that defines a training run. Defaults reproduce the DL4CV malaria recipe.

    Attributes:
        arch: Registered architecture name (see ``imgclf.models.registry``).
        arch_args: Builder arguments overriding the architecture's defaults.
        epochs: Number of passes over the training split.
        batch_size: Images per optimizer step (each epoch runs ``max(1, N // batch_size)`` steps, as
            Keras' ``steps_per_epoch = N // batch`` did).
        lr: Initial SGD learning rate.
        momentum: SGD momentum.
        decay: Keras-style time decay: ``lr_t = lr / (1 + decay * step)``; ``None`` means
            ``lr / epochs`` as in the recipe (``decay=INIT_LR / NUM_EPOCHS``).
        seed: Seed for weight init, data order and augmentation.
        label_smoothing: Cross-entropy label smoothing (0 = plain categorical cross-entropy).
        preprocess: How images are turned into tensors. Left out (also from a dict given to
            ``from_dict``), the architecture's own applies: timm's pretrained configuration for
            ``timm:NAME`` (:func:`imgclf.models.timm_backbone.with_arch_preprocess`, used by the CLI and
            the Python API alike), the default spec for the others.
        augment: Training-time augmentation.
        val_split: Fraction held out for validation when the dataset has no validation folder.
        test_split: Fraction held out for testing when the dataset has no testing folder.
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``.
        precision: ``auto`` (bf16 autocast where the hardware supports it natively) | ``fp32`` | ``bf16``.
        channels_last: Use the channels-last memory layout (faster convolutions on CPU and GPU).
        compile: Use ``torch.compile`` (slow first start, faster steps).
        eval_batch_size: Batch size for validation, testing and prediction.
        keep: Which weights go into the model file: ``best`` epoch by ``monitor`` (default) or the
            ``last`` one (the recipe's behaviour). With the recipe's lr 0.1 on a small dataset, a late
            epoch can land on a spike whose batch-norm statistics lag the weights; best never saves it.
        monitor: ``val_loss``, ``val_accuracy``, ``val_balanced_accuracy`` or ``val_macro_f1``; used by
            ``keep=best`` and ``patience``. When the training classes are imbalanced (the largest more
            than 3x the smallest), ``val_loss`` and ``val_accuracy`` are judged as
            ``val_balanced_accuracy``, which always answering the majority class cannot game.
        patience: Stop after this many epochs without improvement of ``monitor`` (``None``: never).
        deterministic: Ask PyTorch for deterministic algorithms (GPU; CPU runs are deterministic).
        recipe: The preset the settings started from (``seed`` | ``stable``, see :data:`RECIPES`); build
            with :meth:`from_recipe` (or ``from_dict``), which fill unset fields from the preset.
        schedule: ``time_decay`` (Keras, above) or ``cosine``: per step, linear warm-up from 0 over
            ``warmup`` epochs, then cosine decay from ``lr`` towards 0 at the end of the last epoch.
            ``one_cycle``: per phase (the frozen epochs, then the rest), a cosine rise from ``lr / 25``
            to ``lr`` over the phase's first quarter, then a cosine fall to ``lr / 1e5`` (fastai's
            ``fit_one_cycle``).
        warmup: Warm-up length in epochs (``cosine`` only).
        nesterov: Nesterov momentum (Keras' form).
        clip_norm: Clip the gradients' global L2 norm to this value (``None``: no clipping).
        ema: Per-step decay of an exponential moving average of the weights (0: off). With it on,
            validation, ``keep`` and the saved file use the averaged weights, with batch-norm statistics
            recomputed for them on a share of the unaugmented training images (:mod:`.training.ema`);
            a backbone still frozen (head-only epochs so far) keeps its loaded statistics.
        weights: A local pretrained-weights file (:mod:`.training.pretrained`): its tensors are matched
            to the backbone by name; the old classification head is skipped.
        init_from: An imgclf model file to continue from (architecture and preprocessing must match it;
            the CLI takes them from the file).
        freeze_epochs: Epochs at the start that train only the head, with the backbone's weights and
            batch-norm statistics frozen; ``None``: 1 when starting from ``weights``/``init_from``, else 0.
        backbone_lr: With ``weights``/``init_from``, the backbone's learning rate as a fraction of the
            head's (discriminative rates, as fastai's ``fine_tune``).
        linear_probe: Train only the head for every epoch, on the backbone's embeddings of the
            unaugmented training images, computed once per run (:mod:`.training.embeddings`).
        balance: Class imbalance handling (:mod:`.training.balance`): ``none``; ``weights`` (loss
            weights inversely proportional to class frequency); ``sampler`` (each epoch draws its
            samples with every class equally likely, seeded like the usual order).
        multi_label: Each image has a set of labels (possibly empty): sigmoid outputs with binary
            cross-entropy, and per-class decision thresholds chosen on the validation split
            (:mod:`imgclf.multilabel`).
    """

    arch: str = setting("seed_resnet", "registered architecture (an unknown name lists them)")
    arch_args: dict[str, Any] = setting(factory=dict, help="architecture arguments", flag=None)
    epochs: int = setting(25, "epochs", bounds=(1, 100_000))
    batch_size: int = setting(
        32, "global batch size (images per optimizer step, split across processes)", bounds=(1, 1_000_000)
    )
    lr: float = setting(0.1, "initial learning rate", bounds=(0.0, 100.0))
    momentum: float = setting(0.9, "SGD momentum", bounds=(0.0, 0.9999))
    decay: float | None = setting(
        None, "Keras time decay per step", default_text="lr/epochs", bounds=(0.0, 1e6)
    )
    seed: int = setting(SEED, "random seed", bounds=(0, 2**63 - 1))
    label_smoothing: float = setting(0.0, "cross-entropy label smoothing", bounds=(0.0, 0.99))
    preprocess: PreprocessSpec = setting(factory=lambda: ARCH_PREPROCESS, help="preprocessing", flag=None)
    augment: AugmentSpec = setting(factory=AugmentSpec, help="augmentation", flag=None)
    val_split: float = setting(
        VAL_SPLIT, "validation share when there is no validation folder", bounds=(0.0, 0.9)
    )
    test_split: float = setting(
        TEST_SPLIT, "testing share when there is no testing folder", bounds=(0.0, 0.9)
    )
    device: str = setting("auto", "auto | cpu | cuda | cuda:N")
    precision: Precision = setting(
        "auto", "auto: bf16 autocast where the hardware supports it natively", label="precision"
    )
    channels_last: bool = setting(True, "channels-last memory layout")
    compile: bool = setting(False, "torch.compile (slow first start, faster steps)")
    eval_batch_size: int = setting(256, "batch size for evaluation", bounds=(1, 1_000_000))
    keep: Keep = setting(
        "best", "weights saved: best epoch by --monitor, or last (the recipe's)", label="--keep value"
    )
    monitor: Monitor = setting(
        "val_loss",
        "metric for --keep best and --patience (imbalanced classes: loss and accuracy are judged as "
        "val_balanced_accuracy)",
        label="--monitor value",
    )
    patience: int | None = setting(
        None, "stop after N epochs without improvement", default_text="never stop early"
    )
    deterministic: bool = setting(
        False, "on a GPU, PyTorch's deterministic algorithms (CPU runs are deterministic anyway)"
    )
    recipe: Recipe = setting(
        "seed",
        "preset: seed (the tutorial's), stable (cosine schedule with warm-up, lr 0.05, Nesterov, label "
        "smoothing 0.1, weight average 0.998, --balance weights) or finetune (one-cycle, lr 0.05; the "
        "default with --weights/--init-from); other flags override single values",
    )
    schedule: Schedule = setting(
        "time_decay", "learning-rate schedule (cosine: per-step warm-up + cosine; one_cycle: per phase)"
    )
    warmup: float = setting(0.0, "cosine warm-up in epochs", bounds=(0.0, 100_000.0))
    nesterov: bool = setting(False, "Nesterov momentum")
    clip_norm: float | None = setting(
        None, "clip the gradients' global L2 norm", default_text="off", bounds=(1e-6, 1e6)
    )
    ema: float = setting(
        0.0, "weight-average decay per step, BN statistics recomputed (0: off)", bounds=(0.0, 0.999999)
    )
    weights: str | None = setting(
        None,
        "start from these pretrained weights: model.safetensors, a .pth/.pt state dict, or an .imgclf file "
        "(a local path; the old head is replaced)",
        default_text="random init",
    )
    init_from: str | None = setting(
        None,
        "start from this imgclf model file (its architecture and preprocessing; the head is kept when "
        "the classes are the same, replaced when they differ)",
        default_text="off",
    )
    freeze_epochs: int | None = setting(
        None,
        "epochs that train only the head (backbone and its batch-norm statistics frozen)",
        default_text="1 with --weights/--init-from, else 0",
        bounds=(0, 100_000),
    )
    backbone_lr: float = setting(
        0.1, "backbone learning rate as a fraction of the head's (when fine-tuning)", bounds=(0.0, 1.0)
    )
    linear_probe: bool = setting(
        False, "train only the head, on backbone embeddings computed once (no augmentation, one process)"
    )
    multi_label: bool = setting(
        False,
        "several labels per image: sigmoid outputs, binary cross-entropy, per-class thresholds (a labels "
        "CSV with 'a|b' cells turns it on)",
    )
    balance: Balance = setting(
        "none",  # the seed recipe's; the stable preset sets weights (docs/performance.md, "Class imbalance")
        "class imbalance: loss weights inversely proportional to class frequency, or a sampler drawing "
        "every class equally often",
        label="--balance value",
    )

    @classmethod
    def from_recipe(cls, recipe: str, **overrides: Any) -> TrainConfig:
        """The preset ``recipe`` (see :data:`RECIPES`) with ``overrides`` applied."""
        return cls.from_dict({**overrides, "recipe": recipe})

    @classmethod
    def from_dict(cls, data: Any, *, where: str | None = None) -> TrainConfig:
        """As :meth:`Settings.from_dict`, but keys missing from ``data`` take its ``recipe``'s values."""
        if isinstance(data, dict) and isinstance(data.get("recipe"), str):
            data = {**RECIPES.get(data["recipe"], {}), **data}
        return super().from_dict(data, where=where)

    def validated(self) -> TrainConfig:
        """Return self after the checks that span fields (each field's bounds are declared with it)."""
        if self.val_split + self.test_split >= 0.95:
            raise UsageError(
                "val_split + test_split leaves too little training data",
                received=self.val_split + self.test_split,
                expected="a sum below 0.95",
                fix="lower --val-split or --test-split",
            )
        patience = self.patience
        if patience is not None and (
            isinstance(patience, bool) or not isinstance(patience, int) or patience < 1
        ):
            raise UsageError(
                "patience must be a positive integer",
                received=repr(self.patience),
                expected="an integer >= 1",
                fix="use --patience 5, for example",
            )
        dev = self.device
        if not isinstance(dev, str) or not (
            dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())
        ):
            raise UsageError(
                "unknown device",
                received=repr(dev),
                expected="auto | cpu | cuda | cuda:N",
                fix="pick one of the listed devices",
            )
        for name, kind in (("preprocess", PreprocessSpec), ("augment", AugmentSpec)):
            if not isinstance(getattr(self, name), kind):
                raise UsageError(
                    f"setting {name!r} has the wrong type",
                    received=type(getattr(self, name)).__name__,
                    expected=kind.__name__,
                    fix=f"build it with {kind.__name__}(...) or TrainConfig.from_dict",
                )
        return self

    @property
    def preprocess_given(self) -> bool:
        """Whether ``preprocess`` was set (else the architecture's own preprocessing applies)."""
        return self.preprocess is not ARCH_PREPROCESS

    @property
    def pretrained(self) -> bool:
        """Whether the run starts from trained weights (``weights`` or ``init_from``)."""
        return bool(self.weights or self.init_from)

    @property
    def effective_freeze_epochs(self) -> int:
        """Head-only epochs: ``freeze_epochs``, or 1 when starting from trained weights (else 0)."""
        if self.freeze_epochs is not None:
            return self.freeze_epochs
        return 1 if self.pretrained else 0

    @property
    def effective_decay(self) -> float:
        """The time-decay constant actually used (``lr / epochs`` unless set)."""
        return self.lr / self.epochs if self.decay is None else self.decay


# The most pixels an image may have (decoding it costs about 3 bytes each): the default and the ceiling
# of every max_pixels setting.
MAX_PIXELS = 64_000_000


def checked_max_pixels(value: object) -> int:
    """A caller's pixel cap, checked: an integer from 1 to ``MAX_PIXELS`` (lower it, never raise it).

    Raises:
        UsageError: If ``value`` is not such an integer.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_PIXELS:
        raise UsageError(
            "max_pixels is out of range",
            received=repr(value),
            expected=f"an integer from 1 to {MAX_PIXELS}",
            fix=f"pass a pixel count up to {MAX_PIXELS}, e.g. 16000000",
        )
    return value


@dataclass(frozen=True)
class RunOptions(Settings):
    """How and where one training runs, beside its recipe: the options of :func:`imgclf.train` and the
    ``imgclf train`` flags that are not :class:`TrainConfig` settings (declared once, here).

    Unlike the recipe, these do not change what the model learns: they name the outputs, choose how the
    data is decoded and whether an existing run continues. Paths are kept as strings.

    Attributes:
        plot_path: Where to write the training-curve plot (``None``: ``RUN_DIR/plot.png``; skipped with a
            warning when matplotlib is missing from the environment).
        run_dir: Folder for the lock, run record, checkpoints, history and reports (``None``:
            ``MODEL-run/`` next to the model file).
        skip_bad: Train without undecodable files instead of failing.
        probes_from: Also store this many validation images as self-check probes in the file.
        cache_dir: Decode-once cache folder (``None``: ``$IMGCLF_CACHE_DIR`` or ``~/.cache/imgclf``).
        use_cache: Read and fill the decode-once cache (``False``: decode into memory only).
        resume: Continue the run in ``run_dir`` from its newest intact checkpoint; the recipe must match
            the run's (:func:`imgclf.resume_run` fills it in from ``run.json``).
        force: With ``resume``, continue despite a changed recipe or dataset (with a warning); without,
            replace an existing model file and start over in a run folder that holds an unfinished run
            (its checkpoints are deleted).
        progress: Show progress on stderr (decoding bars, a bar per epoch, one line per epoch, notes and
            warnings); ``None``: when stderr is a terminal; ``False``: never.
        max_pixels: Refuse dataset images with more pixels (at most the built-in cap, the default).
    """

    plot_path: str | None = setting(
        None, "training-curve plot", flag="--plot", default_text="RUN_DIR/plot.png"
    )
    run_dir: str | None = setting(
        None,
        "run folder: lock, run.json, checkpoints/, history, reports",
        default_text="MODEL-run/ beside MODEL",
    )
    skip_bad: bool = setting(False, "train without unreadable images (listed)")
    probes_from: int = setting(
        0, "also store N validation images as self-check probes", default_text="synthetic only"
    )
    cache_dir: str | None = setting(
        None,
        "decode-once cache of preprocessed images",
        default_text="$IMGCLF_CACHE_DIR or ~/.cache/imgclf",
    )
    use_cache: bool = setting(True, "read and fill the decode-once cache", flag="--no-cache")
    resume: bool = setting(False, "continue the run in the run folder from its newest checkpoint", flag=None)
    force: bool = setting(
        False,
        "with --resume: continue although the dataset or recipe changed (warns; no exact resume); "
        "without: replace an existing model file and start over in a run folder holding an unfinished "
        "run (deletes its checkpoints)",
    )
    progress: bool | None = setting(None, "show progress on stderr", flag=None, default_text="on a terminal")
    max_pixels: int = setting(
        MAX_PIXELS,
        help="refuse images with more pixels before decoding them",
        default_text="the built-in cap",
    )

    def __post_init__(self) -> None:
        for name in ("plot_path", "run_dir", "cache_dir"):  # a pathlib.Path is welcome; run.json holds text
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                object.__setattr__(self, name, os.fspath(value))
        super().__post_init__()

    def validated(self) -> RunOptions:
        """Return self after checking ``max_pixels`` and ``probes_from``.

        Raises:
            UsageError: ``max_pixels`` above the built-in cap or below 1, ``probes_from`` negative
                (:func:`imgclf.train` also refuses more than a model file holds).
        """
        checked_max_pixels(self.max_pixels)
        # the upper bound (what a model file holds) is the model file's: training checks it
        check_integer("probes_from", self.probes_from, 0, 1_000_000)
        return self

    @classmethod
    def from_run_json(cls, record: dict[str, Any], **changes: Any) -> RunOptions:
        """The options a run folder's ``run.json`` records (``plot``, ``skip_bad``, ``probes_from``; the
        others are the caller's each time), then ``changes``."""
        recorded = {
            "plot_path": record.get("plot"),
            "skip_bad": bool(record.get("skip_bad")),
            "probes_from": int(record.get("probes_from") or 0),
        }
        return cls(**{**recorded, **changes})

    def updated(self, changes: dict[str, Any]) -> RunOptions:
        """A copy with ``changes`` (keyword arguments of :func:`imgclf.train`) applied.

        Raises:
            TypeError: A key that is no option (as for any unknown keyword argument).
        """
        names = [f.name for f in dataclasses.fields(self)]
        unknown = [key for key in changes if key not in names]
        if unknown:
            raise TypeError(f"unknown run option {unknown[0]!r}{did_you_mean(unknown[0], names)}")
        return dataclasses.replace(self, **changes) if changes else self
