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

import sys
from typing import TYPE_CHECKING, Any

from imgclf._version import __version__

# The one list of imgclf's public names: each name -> the module that defines it (imported on first use of
# the name). ``__all__`` is derived from it; tests/test_api.py checks that the TYPE_CHECKING imports below
# (which type checkers read) name the same objects, and that each name is defined where it says.
_HOME = {
    "train": "imgclf.training.pipeline",
    "resume_run": "imgclf.training.pipeline",
    "TrainResult": "imgclf.training.job",
    "Callback": "imgclf.training.loop",
    "EpochProgress": "imgclf.training.display",  # the stderr progress display (a Callback)
    "TrainConfig": "imgclf.config",
    "RunOptions": "imgclf.config",  # where and how a training runs (run folder, cache, resume, ...)
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

__all__ = ["__version__", *_HOME]

if TYPE_CHECKING:  # pragma: no cover
    # `X as X`: an explicit re-export, so a strict type checker lets users write imgclf.X; grouped by module
    # (ruff's import sorting would put each on a line of its own).
    from imgclf.classifier import Classifier as Classifier, Prediction as Prediction  # noqa: I001
    from imgclf.config import (
        AugmentSpec as AugmentSpec,
        PreprocessSpec as PreprocessSpec,
        RunOptions as RunOptions,
        TrainConfig as TrainConfig,
    )
    from imgclf.dataset_evaluation import evaluate_dataset as evaluate_dataset
    from imgclf.errors import (
        DatasetError as DatasetError,
        DistributedError as DistributedError,
        ExportError as ExportError,
        ImageError as ImageError,
        ImgclfError as ImgclfError,
        Interrupted as Interrupted,
        ModelFileError as ModelFileError,
        OutOfMemory as OutOfMemory,
        PartialFailure as PartialFailure,
        ResumeError as ResumeError,
        RunFinished as RunFinished,
        StorageError as StorageError,
        UsageError as UsageError,
    )
    from imgclf.evaluation import Evaluation as Evaluation
    from imgclf.loading import inspect as inspect, load as load, verify as verify
    from imgclf.modelfile import save as save
    from imgclf.sharding import ShardedPrediction as ShardedPrediction
    from imgclf.training.display import EpochProgress as EpochProgress
    from imgclf.training.job import TrainResult as TrainResult
    from imgclf.training.loop import Callback as Callback
    from imgclf.training.pipeline import resume_run as resume_run, train as train


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'imgclf' has no attribute {name!r}")
    # Static imports only (the package's safety test forbids importing a module by a computed name); each
    # puts its module in sys.modules.
    if home == "imgclf.training.pipeline":
        import imgclf.training.pipeline
    elif home == "imgclf.training.job":
        import imgclf.training.job
    elif home == "imgclf.training.loop":
        import imgclf.training.loop
    elif home == "imgclf.training.display":
        import imgclf.training.display
    elif home == "imgclf.config":
        import imgclf.config
    elif home == "imgclf.loading":
        import imgclf.loading
    elif home == "imgclf.sharding":
        import imgclf.sharding
    elif home == "imgclf.modelfile":
        import imgclf.modelfile
    elif home == "imgclf.classifier":
        import imgclf.classifier
    elif home == "imgclf.evaluation":
        import imgclf.evaluation
    elif home == "imgclf.dataset_evaluation":
        import imgclf.dataset_evaluation
    else:
        import imgclf.errors  # noqa: F401 - read back from sys.modules below
    value = getattr(sys.modules[home], name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
