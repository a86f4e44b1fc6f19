"""``imgclf predict --explain DIR``: a Grad-CAM overlay PNG per classified image, written as results stream.

Usage::

    from imgclf.cli.main import main
    main(["predict", "--model", "m.imgclf", "--images", "cells/", "--explain", "heatmaps/"])
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import Any

from imgclf.errors import UsageError

SUFFIX = ".gradcam.png"


def check_explain(model_path: str, folder: str, sharded: bool) -> None:
    """Refuse ``--explain`` where it cannot work, before any image is read.

    Raises:
        UsageError: An .onnx model (no gradients), a sharded run, or a path that is a file.
    """
    if sharded:
        raise UsageError(
            "--explain does not combine with a sharded run",
            received="--explain with --shard or torchrun",
            expected="one process",
            fix="run predict --explain on the images of interest without sharding",
        )
    from imgclf.loading import file_kind

    if file_kind(model_path) == "onnx":
        raise UsageError(
            "--explain needs the .imgclf model file (Grad-CAM needs gradients, an .onnx has none)",
            received=model_path,
            expected="an .imgclf file",
            fix="pass the .imgclf the .onnx was exported from",
        )
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise UsageError(
            "--explain names a folder for the overlays",
            received=f"{folder} (a file)",
            expected="a folder (created if missing)",
            fix="pass a folder name",
        )


def _unique(folder: str, source: str, taken: set[str]) -> str:
    stem = os.path.splitext(os.path.basename(source))[0] or "image"
    name, n = stem + SUFFIX, 1
    while name in taken:  # the same file name in two class folders
        n += 1
        name = f"{stem}-{n}{SUFFIX}"
    taken.add(name)
    return os.path.join(folder, name)


def with_overlays(
    clf: Any, predictions: Iterable[Any], folder: str, overlays: dict[str, str]
) -> Iterator[Any]:
    """Yield ``predictions`` unchanged; for each classified image write its overlay into ``folder`` first.

    ``overlays`` receives ``source -> overlay file`` (the montage shows the overlay instead of the image).
    """
    from PIL import Image

    from imgclf.errors import ImageError
    from imgclf.fileio.writing import atomic_write_bytes

    os.makedirs(folder, exist_ok=True)
    taken: set[str] = set()
    written = 0
    for p in predictions:
        if p.error is None:
            try:
                e = clf.explain(p.source)
            except ImageError:  # changed since it was classified: the prediction stands, no overlay
                yield p
                continue
            import io

            buf = io.BytesIO()
            Image.fromarray(e.overlay).save(buf, format="PNG")
            path = _unique(folder, p.source, taken)
            atomic_write_bytes(path, buf.getvalue())
            overlays[p.source] = path
            written += 1
        yield p
    print(f"imgclf: wrote {written} Grad-CAM overlay(s) to {folder}", file=sys.stderr)
