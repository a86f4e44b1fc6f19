"""Frozen, validated settings: how images are preprocessed, augmented and trained on.

Each dataclass round-trips through plain JSON-able dicts; ``from_dict`` rejects unknown keys and wrong
types so a settings dict from a file can never smuggle in anything unexpected (the shared machinery is
in :mod:`imgclf._settings`).

Usage::

    spec = PreprocessSpec(height=64, width=64, interpolation="nearest")
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    cfg = TrainConfig(epochs=5).validated()
    stable = TrainConfig.from_recipe("stable", epochs=30)   # a preset, then overrides
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from imgclf._settings import Settings, check_integer, check_number
from imgclf.errors import UsageError

__all__ = ["PreprocessSpec", "AugmentSpec", "TrainConfig", "INTERPOLATIONS", "FILL_MODES", "RECIPES"]

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")
FILL_MODES = ("nearest", "constant", "reflect")
MAX_SIDE = 4096
SCHEDULES = ("time_decay", "cosine")
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
    },
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

    height: int = 64
    width: int = 64
    interpolation: str = "bilinear"
    rescale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def validated(self) -> PreprocessSpec:
        """Return self after checking every bound; raise :class:`UsageError` otherwise."""
        for name in ("height", "width"):
            check_integer(name, getattr(self, name), 1, MAX_SIDE, label=f"preprocess {name}")
        if self.interpolation not in INTERPOLATIONS:
            raise UsageError(
                "unknown interpolation",
                received=repr(self.interpolation),
                expected=" | ".join(INTERPOLATIONS),
                fix="pick one of the listed filters",
            )
        check_number("rescale", self.rescale, 1e-12, 1e6)
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

    rotation: float = 20.0
    zoom: float = 0.05
    width_shift: float = 0.05
    height_shift: float = 0.05
    shear: float = 0.05
    horizontal_flip: bool = True
    vertical_flip: bool = False
    fill: str = "nearest"
    enabled: bool = True

    def validated(self) -> AugmentSpec:
        """Return self after checking every bound; raise :class:`UsageError` otherwise."""
        check_number("rotation", self.rotation, 0.0, 180.0)
        check_number("zoom", self.zoom, 0.0, 0.9)
        check_number("width_shift", self.width_shift, 0.0, 1.0)
        check_number("height_shift", self.height_shift, 0.0, 1.0)
        check_number("shear", self.shear, 0.0, 80.0)
        if self.fill not in FILL_MODES:
            raise UsageError(
                "unknown augmentation fill mode",
                received=repr(self.fill),
                expected=" | ".join(FILL_MODES),
                fix="pick one of the listed fill modes",
            )
        return self


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
        preprocess: How images are turned into tensors.
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
        monitor: ``val_loss`` or ``val_accuracy``; used by ``keep=best`` and ``patience``.
        patience: Stop after this many epochs without improvement of ``monitor`` (``None``: never).
        deterministic: Ask PyTorch for deterministic algorithms (GPU; CPU runs are deterministic).
        recipe: The preset the settings started from (``seed`` | ``stable``, see :data:`RECIPES`); build
            with :meth:`from_recipe` (or ``from_dict``), which fill unset fields from the preset.
        schedule: ``time_decay`` (Keras, above) or ``cosine``: per step, linear warm-up from 0 over
            ``warmup`` epochs, then cosine decay from ``lr`` towards 0 at the end of the last epoch.
        warmup: Warm-up length in epochs (``cosine`` only).
        nesterov: Nesterov momentum (Keras' form).
        clip_norm: Clip the gradients' global L2 norm to this value (``None``: no clipping).
        ema: Per-step decay of an exponential moving average of the weights (0: off). With it on,
            validation, ``keep`` and the saved file use the averaged weights, with batch-norm statistics
            recomputed for them on the (unaugmented) training images.
    """

    arch: str = "seed_resnet"
    arch_args: dict[str, Any] = field(default_factory=dict)
    epochs: int = 25
    batch_size: int = 32
    lr: float = 0.1
    momentum: float = 0.9
    decay: float | None = None
    seed: int = 42
    label_smoothing: float = 0.0
    preprocess: PreprocessSpec = field(default_factory=PreprocessSpec)
    augment: AugmentSpec = field(default_factory=AugmentSpec)
    val_split: float = 0.1
    test_split: float = 0.2
    device: str = "auto"
    precision: str = "auto"
    channels_last: bool = True
    compile: bool = False
    eval_batch_size: int = 256
    keep: str = "best"
    monitor: str = "val_loss"
    patience: int | None = None
    deterministic: bool = False
    recipe: str = "seed"  # preset the settings started from: seed | stable
    schedule: str = "time_decay"  # learning-rate schedule: time_decay | cosine (per-step warm-up + cosine)
    warmup: float = 0.0  # cosine warm-up, in epochs
    nesterov: bool = False  # Nesterov momentum
    clip_norm: float | None = None  # clip the gradients' global L2 norm (None: off)
    ema: float = 0.0  # weight EMA decay per step (0: off); BN statistics recomputed for the average

    @classmethod
    def from_recipe(cls, recipe: str, **overrides: Any) -> TrainConfig:
        """The preset ``recipe`` (see :data:`RECIPES`) with ``overrides`` applied, validated."""
        return cls.from_dict({**overrides, "recipe": recipe})

    @classmethod
    def from_dict(cls, data: Any, *, where: str | None = None) -> TrainConfig:
        """As :meth:`Settings.from_dict`, but keys missing from ``data`` take its ``recipe``'s values."""
        if isinstance(data, dict) and isinstance(data.get("recipe"), str):
            data = {**RECIPES.get(data["recipe"], {}), **data}
        return super().from_dict(data, where=where)

    def validated(self) -> TrainConfig:
        """Return self after checking every bound; raise :class:`UsageError` otherwise."""
        for name, lo, hi in (
            ("epochs", 1, 100_000),
            ("batch_size", 1, 1_000_000),
            ("eval_batch_size", 1, 1_000_000),
            ("seed", 0, 2**63 - 1),
        ):
            check_integer(name, getattr(self, name), lo, hi)
        check_number("lr", self.lr, 0.0, 100.0)
        check_number("momentum", self.momentum, 0.0, 0.9999)
        if self.decay is not None:
            check_number("decay", self.decay, 0.0, 1e6)
        check_number("label_smoothing", self.label_smoothing, 0.0, 0.99)
        check_number("val_split", self.val_split, 0.0, 0.9)
        check_number("test_split", self.test_split, 0.0, 0.9)
        if self.val_split + self.test_split >= 0.95:
            raise UsageError(
                "val_split + test_split leaves too little training data",
                received=self.val_split + self.test_split,
                expected="a sum below 0.95",
                fix="lower --val-split or --test-split",
            )
        if self.precision not in ("auto", "fp32", "bf16"):
            raise UsageError(
                "unknown precision",
                received=repr(self.precision),
                expected="auto | fp32 | bf16",
                fix="pick one of the listed precisions",
            )
        if self.keep not in ("last", "best"):
            raise UsageError(
                "unknown --keep value",
                received=repr(self.keep),
                expected="last | best",
                fix="use --keep best or --keep last",
            )
        if self.monitor not in ("val_loss", "val_accuracy"):
            raise UsageError(
                "unknown --monitor value",
                received=repr(self.monitor),
                expected="val_loss | val_accuracy",
                fix="use one of the listed metrics",
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
        self._validate_recipe_fields()
        self.preprocess.validated()
        self.augment.validated()
        return self

    def _validate_recipe_fields(self) -> None:
        for name, value, allowed in (
            ("recipe", self.recipe, tuple(RECIPES)),
            ("schedule", self.schedule, SCHEDULES),
        ):
            if value not in allowed:
                raise UsageError(
                    f"unknown {name}",
                    received=repr(value),
                    expected=" | ".join(allowed),
                    fix=f"pick one of the listed {name}s",
                )
        check_number("warmup", self.warmup, 0.0, 100_000.0)
        check_number("ema", self.ema, 0.0, 0.999999)
        if self.clip_norm is not None:
            check_number("clip_norm", self.clip_norm, 1e-6, 1e6)

    @property
    def effective_decay(self) -> float:
        """The time-decay constant actually used (``lr / epochs`` unless set)."""
        return self.lr / self.epochs if self.decay is None else self.decay
