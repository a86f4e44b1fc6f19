"""imgclf: train an image classifier from a folder, save one safe file, classify anywhere.

``import imgclf`` is light: the training loop, plotting and reports are imported only when used.

Usage::

    import imgclf
    clf = imgclf.load("model.imgclf")                # or an .onnx from `imgclf export`: no torch needed
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
]

_LAZY = {
    "load": ("imgclf.interop.files", "load"),  # .imgclf or .onnx, told apart by the file's first bytes
    "save": ("imgclf.modelfile", "save"),
    "verify": ("imgclf.interop.files", "verify"),
    "inspect": ("imgclf.interop.files", "inspect"),
    "Classifier": ("imgclf.classifier", "Classifier"),
    "Prediction": ("imgclf.classifier", "Prediction"),
    "TrainConfig": ("imgclf.config", "TrainConfig"),
    "PreprocessSpec": ("imgclf.config", "PreprocessSpec"),
    "AugmentSpec": ("imgclf.config", "AugmentSpec"),
    "train": ("imgclf.training.pipeline", "train"),
}

if TYPE_CHECKING:  # pragma: no cover
    from imgclf.classifier import Classifier, Prediction
    from imgclf.config import AugmentSpec, PreprocessSpec, TrainConfig
    from imgclf.interop.files import inspect, load, verify
    from imgclf.modelfile import save
    from imgclf.training.pipeline import train


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        # Static imports only: the package's safety test forbids importing modules by a computed name.
        if module == "imgclf.interop.files":
            from imgclf.interop import files as mod
        elif module == "imgclf.modelfile":
            from imgclf import modelfile as mod
        elif module == "imgclf.classifier":
            from imgclf import classifier as mod
        elif module == "imgclf.config":
            from imgclf import config as mod
        else:
            from imgclf.training import pipeline as mod
        value = getattr(mod, attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'imgclf' has no attribute {name!r}")
