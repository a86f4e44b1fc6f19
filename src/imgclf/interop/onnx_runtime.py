"""An .onnx written by ``imgclf export``, run with onnxruntime and NumPy: load, predict, verify, inspect.

Nothing here imports torch: the image path (decode → orient → RGB → resize → scale) is the NumPy one of
:mod:`imgclf.images.preprocess`, and :class:`OnnxClassifier` keeps the :class:`imgclf.Classifier`
interface (``predict``, ``predict_proba``, ``iter_predict``, ``class_names``, ``preprocess``,
``manifest``), so the CLI and the server use it unchanged.

Checking such a file (``verify_onnx``, ``inspect_onnx``) is :mod:`imgclf.interop.onnx_verify`.

Usage::

    clf = load_onnx("malaria.onnx")
    print(clf.predict(["cell.png"])[0].label)
"""

from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import threading
from typing import Any

import numpy as np

from imgclf.classifier import MAX_BATCH_PIXELS, Classifier
from imgclf.errors import ModelFileError, StorageError, UsageError
from imgclf.fileio.reading import os_reason, read_bounded
from imgclf.images.preprocess import to_array
from imgclf.images.read import MAX_PIXELS, checked_max_pixels
from imgclf.interop.onnx_meta import OnnxManifest, parse_metadata

MAX_ONNX_BYTES = 2 * 1024**3  # protobuf's limit for one message: larger models need external data
MAX_CAPTURED_BYTES = 64 * 1024
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
log = logging.getLogger("imgclf.onnx")
_IMPORT_LOCK = threading.Lock()


def read_onnx_bytes(path: str | os.PathLike) -> bytes:
    """Read an .onnx file (regular, at most ``MAX_ONNX_BYTES``), non-blocking and bounded.

    Raises:
        ModelFileError: If the file is missing, not a regular file, unreadable or too large.
    """
    name = os.fspath(path)
    try:
        return read_bounded(name, MAX_ONNX_BYTES, "ONNX model file")
    except StorageError as exc:  # opened, but not a regular file of a supported size (or it grew)
        raise ModelFileError(
            "not a regular model file of a supported size",
            received=f"{name} ({os_reason(exc)})",
            expected=f"a regular file of at most {MAX_ONNX_BYTES} bytes",
            fix="pass the .onnx file itself",
        ) from None
    except OSError as exc:
        raise ModelFileError(
            "cannot open model file",
            received=f"{name} ({exc.strerror or exc})",
            expected="a readable file",
            fix="check the path and permissions",
        ) from None


def import_onnxruntime() -> Any:
    """``import onnxruntime``, with what its native code writes to stderr routed to logging instead.

    onnxruntime's static initialisation logs at warning level before any option can lower it (on many
    Linux hosts: a coloured "GPU device discovery failed" line), straight to file descriptor 2. The first
    import therefore runs with descriptor 2 pointed at a temporary file whose lines go to the
    ``imgclf.onnx`` logger at debug level; afterwards the default logger is set to errors only.

    Raises:
        ImportError: If onnxruntime is not installed.
    """
    with _IMPORT_LOCK:  # descriptor 2 is process-wide: one redirection at a time
        if "onnxruntime" in sys.modules:  # imported already (by us, or before us by someone else)
            loaded = sys.modules["onnxruntime"]
            loaded.set_default_logger_severity(3)
            return loaded
        with tempfile.TemporaryFile() as sink:
            sys.stderr.flush()
            try:
                saved = os.dup(2)
            except OSError:  # no stderr at all (a daemon): nothing to protect
                saved = -1
            else:
                os.dup2(sink.fileno(), 2)
            try:
                import onnxruntime as ort
            finally:
                if saved >= 0:
                    sys.stderr.flush()
                    os.dup2(saved, 2)
                    os.close(saved)
            sink.seek(0)
            said = sink.read(MAX_CAPTURED_BYTES).decode("utf-8", "replace")
    for line in said.splitlines():
        if line.strip():
            log.debug("onnxruntime: %s", _ANSI.sub("", line).strip())
    ort.set_default_logger_severity(3)  # errors only, for sessions and the default logger alike
    return ort


def new_session(data: bytes, path: str, threads: int | None = None) -> Any:
    """An onnxruntime CPU session (default graph optimisations) over the model in ``data``.

    Raises:
        ModelFileError: If onnxruntime is missing or cannot load the model (truncated, corrupt, too new).
    """
    try:
        ort = import_onnxruntime()
    except ImportError:
        raise UsageError(  # a missing package, not a bad file: the usage exit code, as for every extra
            "onnxruntime is not installed",
            received=path,
            expected="the onnx extra",
            fix="in the imgclf checkout: pip install '.[onnx]' (torch-free: pip install ./runtime)",
        ) from None
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: warnings would go to stderr on every load
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - any runtime refusal of untrusted bytes is an invalid file
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(
            f"invalid model file {str(path)!r}: cannot load ONNX model "
            "(truncated, corrupt or from a newer ONNX)",
            received=f"{path} ({detail})",
            expected="a complete .onnx file onnxruntime can load",
            fix="export the model again with `imgclf export MODEL --format onnx`",
        ) from None


def run_session(session: Any, x: np.ndarray) -> np.ndarray:
    """Probabilities (N, C) float32 from the exported graph for the float input ``x`` (N, 3, H, W)."""
    return np.asarray(session.run(None, {session.get_inputs()[0].name: x})[0], dtype=np.float32)


class OnnxClassifier(Classifier):
    """A classifier backed by an onnxruntime session: the object ``imgclf.load("m.onnx")`` returns.

    Args:
        session: The onnxruntime session (its graph ends with the softmax).
        manifest: The validated imgclf metadata of the file.
        path: The file it came from (for messages).
    """

    def __init__(  # noqa: D107
        self, session: Any, manifest: OnnxManifest, path: str = "", *, max_pixels: int = MAX_PIXELS
    ) -> None:
        # No super().__init__: that builds a torch module; everything the predict methods use is here.
        self.max_pixels = checked_max_pixels(max_pixels)
        self.session = session
        self.path = path
        self.class_names = list(manifest.class_names)
        self.preprocess = manifest.preprocess
        self.arch = manifest.arch
        self.arch_args = manifest.arch_args
        self.manifest = {k: v for k, v in manifest.raw.items() if k != "probes"}
        self.device = "cpu"
        self.model = None  # no torch module: callers use predict_proba_input, not model(x)

    def __repr__(self) -> str:
        spec = self.preprocess
        return (
            f"OnnxClassifier(arch={self.arch!r}, classes={self.class_names!r}, "
            f"input={spec.height}x{spec.width}, interpolation={spec.interpolation!r}, file={self.path!r})"
        )

    def predict_proba_input(self, x: np.ndarray) -> np.ndarray:
        """Probabilities (N, C) for an already-scaled float32 input (N, 3, H, W), via onnxruntime."""
        return run_session(self.session, np.ascontiguousarray(x, dtype=np.float32))

    def predict_proba_uint8(self, images: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
        """Probabilities (N, C) for already-preprocessed uint8 images (N, H, W, 3), via onnxruntime."""
        spec = self.preprocess
        step = max(1, min(batch_size, MAX_BATCH_PIXELS // (spec.height * spec.width)))
        parts = [
            run_session(self.session, to_array(images[i : i + step], spec))
            for i in range(0, len(images), step)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, self.num_classes), dtype=np.float32)


def open_onnx(
    path: str | os.PathLike, threads: int | None = None
) -> tuple[bytes, Any, OnnxManifest, dict[str, str]]:
    """Read, load and check an imgclf .onnx: ``(bytes, session, manifest, metadata properties)``.

    Raises:
        ModelFileError: If the file is unreadable, not loadable, without imgclf metadata, or its graph's
            input or output shape does not match its metadata.
    """
    name = os.fspath(path)
    data = read_onnx_bytes(name)
    session = new_session(data, name, threads)
    props = dict(session.get_modelmeta().custom_metadata_map)
    m = parse_metadata(props, name)
    inputs, outputs = session.get_inputs(), session.get_outputs()
    spec = m.preprocess
    want_in = [3, spec.height, spec.width]
    if (
        len(inputs) != 1
        or len(outputs) != 1
        or list(inputs[0].shape[1:]) != want_in
        or outputs[0].shape[-1] != len(m.class_names)
    ):
        raise ModelFileError(
            "invalid imgclf ONNX file: the graph does not match its metadata",
            received=f"{name} (inputs {[i.shape for i in inputs]}, outputs {[o.shape for o in outputs]})",
            expected=f"one input [N, {', '.join(map(str, want_in))}], one output [N, {len(m.class_names)}]",
            fix="export the model again with `imgclf export MODEL --format onnx`",
        )
    names = {"input": inputs[0].name, "output": outputs[0].name}
    for role, want in (("input", m.raw["graph"]["input"]), ("output", m.raw["graph"]["output"])):
        if names[role] != want:
            raise ModelFileError(
                f"invalid imgclf ONNX file: the graph's {role} is named {names[role]!r}, its metadata says "
                f"{want!r}",
                received=name,
                expected=f"the graph's {role} named as in the imgclf metadata",
                fix="export the model again with `imgclf export MODEL --format onnx`",
            )
    return data, session, m, props


def load_onnx(
    path: str | os.PathLike, *, threads: int | None = None, max_pixels: int = MAX_PIXELS
) -> OnnxClassifier:
    """Load an .onnx written by ``imgclf export`` (onnxruntime, no torch).

    Args:
        path: The .onnx file.
        threads: onnxruntime intra-op threads (default: its own choice).

    Raises:
        ModelFileError: If the file is unreadable, truncated, without imgclf metadata or inconsistent.
    """
    _, session, m, _ = open_onnx(path, threads)
    return OnnxClassifier(session, m, os.fspath(path), max_pixels=max_pixels)
