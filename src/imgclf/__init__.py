"""imgclf: train an image classifier from a folder, save one safe file, classify anywhere.

This module is the public API: the names in ``__all__`` are the supported ones (the README uses only
these); everything else is internal and may move. ``import imgclf`` is light: each name is imported
on first use, so loading and predicting never import training, plotting, server or ONNX code.

Usage::

    import imgclf
    result = imgclf.train("dataset", "model.imgclf", imgclf.TrainConfig(epochs=25))
    clf = imgclf.load("model.imgclf")                # or an .onnx from `imgclf export`: no torch needed
    print(clf.predict(["cell.png"])[0].label)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from imgclf._version import __version__

__all__ = [
    "__version__",
    # training
    "train",
    "resume_run",
    "TrainConfig",
    "PreprocessSpec",
    "AugmentSpec",
    "Callback",
    "EpochProgress",
    "TrainResult",
    # the model file
    "load",
    "save",
    "verify",
    "inspect",
    # predicting and evaluating
    "Classifier",
    "Prediction",
    "evaluate_dataset",
    "Evaluation",
    "ShardedPrediction",
    # errors
    "ImgclfError",
    "UsageError",
    "DatasetError",
    "ImageError",
    "ModelFileError",
    "StorageError",
    "ResumeError",
    "RunFinished",
    "Interrupted",
    "PartialFailure",
    "ExportError",
    "OutOfMemory",
    "DistributedError",
]

# name -> the module that defines it (imported on first use of the name).
_HOME = {
    "train": "imgclf.training.pipeline",
    "resume_run": "imgclf.training.pipeline",
    "TrainResult": "imgclf.training.pipeline",
    "Callback": "imgclf.training.loop",
    "EpochProgress": "imgclf.training.progress",  # the stderr progress display (a Callback)
    "TrainConfig": "imgclf.config",
    "PreprocessSpec": "imgclf.config",
    "AugmentSpec": "imgclf.config",
    "load": "imgclf.loading",  # .imgclf or .onnx, told apart by the file's first bytes
    "save": "imgclf.modelfile",
    "verify": "imgclf.loading",
    "inspect": "imgclf.loading",
    "Classifier": "imgclf.classifier",
    "Prediction": "imgclf.classifier",
    "evaluate_dataset": "imgclf.dataset_evaluation",
    "Evaluation": "imgclf.evaluation",
    "ShardedPrediction": "imgclf.sharding",  # one input list across processes, parts checked and merged
    "ImgclfError": "imgclf.errors",
    "UsageError": "imgclf.errors",
    "DatasetError": "imgclf.errors",
    "ImageError": "imgclf.errors",
    "ModelFileError": "imgclf.errors",
    "StorageError": "imgclf.errors",
    "ResumeError": "imgclf.errors",
    "RunFinished": "imgclf.errors",
    "Interrupted": "imgclf.errors",
    "PartialFailure": "imgclf.errors",
    "ExportError": "imgclf.errors",
    "OutOfMemory": "imgclf.errors",
    "DistributedError": "imgclf.errors",
}

if TYPE_CHECKING:  # pragma: no cover
    from imgclf.classifier import Classifier, Prediction
    from imgclf.config import AugmentSpec, PreprocessSpec, TrainConfig
    from imgclf.dataset_evaluation import evaluate_dataset
    from imgclf.errors import (
        DatasetError,
        DistributedError,
        ExportError,
        ImageError,
        ImgclfError,
        Interrupted,
        ModelFileError,
        OutOfMemory,
        PartialFailure,
        ResumeError,
        RunFinished,
        StorageError,
        UsageError,
    )
    from imgclf.evaluation import Evaluation
    from imgclf.loading import inspect, load, verify
    from imgclf.modelfile import save
    from imgclf.sharding import ShardedPrediction
    from imgclf.training.loop import Callback
    from imgclf.training.pipeline import TrainResult, resume_run, train
    from imgclf.training.progress import EpochProgress


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'imgclf' has no attribute {name!r}")
    # Static imports only: the package's safety test forbids importing modules by a computed name.
    if home == "imgclf.training.pipeline":
        from imgclf.training import pipeline as mod
    elif home == "imgclf.training.loop":
        from imgclf.training import loop as mod
    elif home == "imgclf.training.progress":
        from imgclf.training import progress as mod
    elif home == "imgclf.config":
        from imgclf import config as mod
    elif home == "imgclf.loading":
        from imgclf import loading as mod
    elif home == "imgclf.modelfile":
        from imgclf import modelfile as mod
    elif home == "imgclf.classifier":
        from imgclf import classifier as mod
    elif home == "imgclf.evaluation":
        from imgclf import evaluation as mod
    elif home == "imgclf.dataset_evaluation":
        from imgclf import dataset_evaluation as mod
    elif home == "imgclf.sharding":
        from imgclf import sharding as mod
    else:
        from imgclf import errors as mod
    value = getattr(mod, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
