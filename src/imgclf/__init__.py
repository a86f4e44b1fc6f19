"""imgclf: train an image classifier from a folder, save one safe file, classify anywhere.

``import imgclf`` is light: the training loop, plotting and reports are imported only when used.

Usage::

    import imgclf
    clf = imgclf.load("model.imgclf")
    print(clf.predict(["cell.png"])[0].label)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imgclf._version import __version__

__all__ = [
    "__version__",
    "load",
    "save",
    "verify",
    "inspect",
    "Classifier",
    "Prediction",
    "TrainConfig",
    "PreprocessSpec",
    "AugmentSpec",
    "train",
    "Callback",
    "EpochProgress",
]

_LAZY = {
    "load": ("imgclf.modelfile", "load"),
    "save": ("imgclf.modelfile", "save"),
    "verify": ("imgclf.modelfile", "verify"),
    "inspect": ("imgclf.modelfile", "inspect"),
    "Classifier": ("imgclf.classifier", "Classifier"),
    "Prediction": ("imgclf.classifier", "Prediction"),
    "TrainConfig": ("imgclf.config", "TrainConfig"),
    "PreprocessSpec": ("imgclf.config", "PreprocessSpec"),
    "AugmentSpec": ("imgclf.config", "AugmentSpec"),
    "train": ("imgclf.training.pipeline", "train"),
    "Callback": ("imgclf.training.loop", "Callback"),  # training hooks: imgclf.train(callbacks=[...])
    "EpochProgress": ("imgclf.training.progress", "EpochProgress"),  # the stderr progress display
}

if TYPE_CHECKING:  # pragma: no cover
    from imgclf.classifier import Classifier, Prediction
    from imgclf.config import AugmentSpec, PreprocessSpec, TrainConfig
    from imgclf.modelfile import inspect, load, save, verify
    from imgclf.training.loop import Callback
    from imgclf.training.pipeline import train
    from imgclf.training.progress import EpochProgress


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        # Static imports only: the package's safety test forbids importing modules by a computed name.
        if module == "imgclf.modelfile":
            from imgclf import modelfile as mod
        elif module == "imgclf.classifier":
            from imgclf import classifier as mod
        elif module == "imgclf.config":
            from imgclf import config as mod
        elif module == "imgclf.training.loop":
            from imgclf.training import loop as mod
        elif module == "imgclf.training.progress":
            from imgclf.training import progress as mod
        else:
            from imgclf.training import pipeline as mod
        value = getattr(mod, attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'imgclf' has no attribute {name!r}")
