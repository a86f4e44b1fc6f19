"""imgclf's error hierarchy and its documented exit codes.

Every error says what was received, what was expected and how to fix it, on one line, so the CLI can
print ``str(error)`` and exit with ``error.exit_code``.

Usage::

    from imgclf.errors import DatasetError
    raise DatasetError("class folder is empty", received="dataset/training/cats (0 files)",
                       expected="at least one image per class", fix="add images or remove the folder")

Exit codes (also in the README):

====  ==========================================================
0     success
1     unexpected internal error (a bug: please report it)
2     usage error: bad flag, bad option value
3     invalid model file
4     invalid image (also: some images in a batch failed)
5     I/O or disk error (unwritable folder, disk full)
6     resume refused: checkpoint does not match the run
7     invalid dataset folder
8     export failed (e.g. the ONNX model disagrees with the PyTorch one); no file written
9     out of memory
10    distributed run failed: a rank did not join or stopped answering
130   interrupted by SIGINT (Ctrl-C)
143   interrupted by SIGTERM
====  ==========================================================
"""

from __future__ import annotations

MAX_LISTED = 8


def _clip(text: object, limit: int = 300) -> str:
    """Render ``text`` on one line, escaping control characters and clipping its length."""
    s = str(text)
    s = "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in s)
    return s if len(s) <= limit else s[: limit - 3] + "..."


def safe_text(text: object) -> str:
    """Escape control characters (ANSI sequences, newlines, RTL overrides) for terminal output."""
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in str(text))


def listed(items: list[str], limit: int = MAX_LISTED) -> str:
    """The first ``limit`` items joined by ``; `` and, if there are more, how many: ``a; b; and 3 more``."""
    more = f"; and {len(items) - limit} more" if len(items) > limit else ""
    return "; ".join(items[:limit]) + more


class ImgclfError(Exception):
    """Base class of every error imgclf raises on purpose.

    Args:
        problem: What went wrong, in a few words ("class folder is empty").
        received: What imgclf got (a value, a path, a count).
        expected: What it needed instead.
        fix: What the user can do about it.
    """

    exit_code: int = 1

    def __init__(
        self,
        problem: str,
        *,
        received: object | None = None,
        expected: object | None = None,
        fix: str | None = None,
    ) -> None:
        self.problem = problem
        self.received = received
        self.expected = expected
        self.fix = fix
        super().__init__(self._render())

    def _render(self) -> str:
        parts = [_clip(self.problem, 2000)]
        if self.received is not None:
            parts.append(f"received {_clip(self.received)}")
        if self.expected is not None:
            parts.append(f"expected {_clip(self.expected)}")
        text = "; ".join(parts)
        if self.fix:
            text += f". Fix: {_clip(self.fix)}"
        return text.replace("\n", " ")


class UsageError(ImgclfError, ValueError):
    """A bad option, flag or argument value (exit code 2)."""

    exit_code = 2


class ModelFileError(ImgclfError, ValueError):
    """The model file is missing, corrupt, tampered with or not an imgclf file (exit code 3)."""

    exit_code = 3


class ImageError(ImgclfError, ValueError):
    """An image cannot be decoded or is not acceptable (exit code 4)."""

    exit_code = 4


class PartialFailure(ImgclfError):
    """Some inputs of a batch failed while the rest succeeded (exit code 4)."""

    exit_code = 4


class StorageError(ImgclfError, OSError):
    """Reading or writing a file failed: permissions, missing folder, full disk (exit code 5)."""

    exit_code = 5


class ResumeError(ImgclfError):
    """A checkpoint cannot be resumed for this run (exit code 6)."""

    exit_code = 6


class RunFinished(ResumeError):
    """``resume`` on a run that already trained every epoch asked for: nothing to do (exit code 0).

    The CLI prints it as a note and changes nothing; pass more epochs to train longer.
    """

    exit_code = 0


class DatasetError(ImgclfError, ValueError):
    """The dataset folder cannot be used for training or evaluation (exit code 7)."""

    exit_code = 7


class ExportError(ImgclfError):
    """An export was refused, e.g. its parity check failed; no file was written (exit code 8)."""

    exit_code = 8


class OutOfMemory(ImgclfError):
    """The work needs more memory than the machine (or its limit) gives (exit code 9)."""

    exit_code = 9


class DistributedError(ImgclfError):
    """A multi-process (torchrun) run failed: a rank did not join or stopped answering (exit code 10)."""

    exit_code = 10


class Interrupted(ImgclfError):
    """Work was interrupted by a signal; ``exit_code`` is 130 (SIGINT) or 143 (SIGTERM)."""

    def __init__(self, problem: str, *, exit_code: int = 130, fix: str | None = None) -> None:
        self.exit_code = exit_code
        super().__init__(problem, fix=fix)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised by the CLI's handler (exit code 143).

    A ``KeyboardInterrupt``, so every cleanup that runs for Ctrl-C runs for it too, and no
    ``except Exception`` (a decoder's "bad image") can swallow it.
    """


def limit_error(exc: BaseException) -> ImgclfError | None:
    """The clear error for an exception that is a machine limit rather than a bug, else ``None``.

    ``MemoryError`` and torch's allocator failures ("DefaultCPUAllocator: can't allocate memory",
    "CUDA out of memory") become :class:`OutOfMemory` (exit 9); ``RecursionError`` (an input nested
    too deeply for Python's parsers) becomes a :class:`UsageError` (exit 2).
    """
    text = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, RecursionError):
        return UsageError(
            "input nested too deeply to process",
            received=text,
            expected="input (JSON, arguments) nested at most a few dozen levels",
            fix="simplify the input; run with --debug to see which",
        )
    lowered = str(exc).lower()
    if isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError) and ("can't allocate memory" in lowered or "out of memory" in lowered)
    ):
        return OutOfMemory(
            "out of memory",
            received=text,
            expected="work that fits in the memory available",
            fix="use a smaller --batch-size or --size, a lower --max-pixels, or free memory",
        )
    return None


EXIT_CODES: dict[str, int] = {
    "ok": 0,
    "internal": 1,
    "usage": UsageError.exit_code,
    "invalid_model": ModelFileError.exit_code,
    "invalid_image": ImageError.exit_code,
    "storage": StorageError.exit_code,
    "resume": ResumeError.exit_code,
    "dataset": DatasetError.exit_code,
    "export_failed": ExportError.exit_code,
    "memory": OutOfMemory.exit_code,
    "distributed": DistributedError.exit_code,
    "sigint": 130,
    "sigterm": 143,
}


# Optional packages → (the install that provides them, what they are for). imgclf is installed from its
# checkout (it is on no package index), so every hint is a command run in the checkout's folder.
_FULL = "the full install, in the imgclf checkout: pip install ."
_ONNX = "pip install '.[onnx]' (torch-free: pip install ./runtime)"
_SERVE = ("pip install '.[serve]' (torch-free: pip install './runtime[serve]')", "the serve extra")
OPTIONAL_PACKAGES: dict[str, tuple[str, str]] = {
    "torch": (_FULL, "PyTorch (training, .imgclf files, export)"),
    "onnx": (_ONNX, "the onnx extra"),
    "onnxruntime": (_ONNX, "the onnx extra"),
    "onnxscript": ("pip install '.[onnx]'", "the onnx extra (export)"),
    "onnx_ir": ("pip install '.[onnx]'", "the onnx extra (export)"),
    "fastapi": _SERVE,
    "uvicorn": _SERVE,
    "starlette": _SERVE,
    "multipart": _SERVE,
    "python_multipart": _SERVE,
    "prometheus_client": _SERVE,
    "h5py": ("pip install '.[keras]'", "the keras extra"),
    "matplotlib": ("pip install matplotlib (part of the full install)", "matplotlib (plots)"),
    "sklearn": ("pip install scikit-learn", "scikit-learn"),
    "timm": ("pip install timm", "timm (pretrained backbones)"),
}


def missing_package_error(exc: BaseException, needed_for: str) -> UsageError | None:
    """The usage error for an ``ImportError`` of an optional package, naming the install that provides it.

    ``None`` when ``exc`` is not a missing optional package (a bug, or a broken install of a required one).

    Args:
        exc: The exception an import raised.
        needed_for: What needed it, e.g. ``imgclf export``.
    """
    if not isinstance(exc, ImportError):
        return None
    top = str(exc.name or "").split(".")[0]
    if top not in OPTIONAL_PACKAGES:
        return None
    install, what = OPTIONAL_PACKAGES[top]
    return UsageError(
        f"{needed_for} needs {what}, which is not installed",
        received=f"no module named {exc.name!r}",
        expected=f"{top} installed",
        fix=install,
    )
