"""Steps 1-3 of the preprocessing path: read a file, decode it safely, orient it (step 4, the RGB rule:
:mod:`imgclf.images.rgb`).

Internal to :mod:`imgclf.images.preprocess`, which documents the whole rule and is the public entry point: the
bounded read (regular files within ``MAX_FILE_BYTES``; a FIFO never blocks), the decode restricted to
``ALLOWED_FORMATS`` with the pixel cap checked before any pixel is decoded, and the EXIF orientation.

Usage::

    img = open_image(read_bytes("cell.png"), "cell.png", MAX_PIXELS, None)
    for op in orientation(img, "cell.png"):                # what the EXIF tag asks for
        img = img.transpose(op)
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import warnings
from collections.abc import Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

# The pixel cap and its check live with the settings (config); read from here by the decoding callers.
from imgclf.config import MAX_PIXELS as MAX_PIXELS
from imgclf.config import checked_max_pixels as checked_max_pixels
from imgclf.errors import ImageError
from imgclf.fileio.reading import open_for_reading
from imgclf.images.png import check_png_chunks

ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
)
MAX_FILE_BYTES = 256 * 1024 * 1024

_ORIENT = {
    2: (Image.Transpose.FLIP_LEFT_RIGHT,),
    3: (Image.Transpose.ROTATE_180,),
    4: (Image.Transpose.FLIP_TOP_BOTTOM,),
    5: (Image.Transpose.TRANSPOSE,),
    6: (Image.Transpose.ROTATE_270,),
    7: (Image.Transpose.TRANSVERSE,),
    8: (Image.Transpose.ROTATE_90,),
}


def describe_source(source: object) -> str:
    """Short human description of an image source, for error messages."""
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    if isinstance(source, np.ndarray):
        return f"<array shape={tuple(source.shape)} dtype={source.dtype}>"
    if isinstance(source, Image.Image):
        return f"<PIL image mode={source.mode} size={source.size}>"
    return f"<{type(source).__name__}>"


def read_bytes(path: str | os.PathLike, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """Read an image file's bytes after checking it is a regular file within the size cap.

    The file is opened once, non-blocking (a FIFO never hangs the caller), and checked with
    ``fstat`` on that descriptor (:func:`imgclf.fileio.reading.open_for_reading`).

    Raises:
        ImageError: If the path is missing, not a regular file, unreadable or too large.
    """
    name = os.fspath(path)
    try:
        fd, st = open_for_reading(name)
    except OSError as exc:
        denied = isinstance(exc, PermissionError)
        raise ImageError(
            "cannot read image" if denied else "cannot open image",
            received=f"{name} ({exc.strerror or exc})",
            expected="a readable file" if denied else "an existing, readable image file",
            fix="check the file's permissions" if denied else "check the path",
        ) from None
    try:
        if not stat.S_ISREG(st.st_mode):
            raise ImageError(
                "not a regular file",
                received=name,
                expected="an image file",
                fix="pass image files or folders of them",
            )
        if st.st_size > max_bytes:
            raise _too_large(f"{name} ({st.st_size} bytes)", max_bytes)
        # Read to the end (a file that grew since fstat is caught by the cap, never truncated).
        parts, size = [], 0
        while size <= max_bytes:
            part = os.read(fd, max(st.st_size + 1 - size, 1 << 16))
            if not part:
                break
            parts.append(part)
            size += len(part)
    except OSError as exc:
        raise ImageError(
            "cannot read image",
            received=f"{name} ({exc.strerror or exc})",
            expected="a readable file",
            fix="check the file's permissions",
        ) from None
    finally:
        os.close(fd)
    if size > max_bytes:
        raise _too_large(f"{name} (> {max_bytes} bytes)", max_bytes)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _too_large(received: str, max_bytes: int) -> ImageError:
    return ImageError(
        "image file too large",
        received=received,
        expected=f"at most {max_bytes} bytes",
        fix="shrink the image first",
    )


def check_pixels(label: str, width: int, height: int, max_pixels: int) -> None:
    """The pixel cap and the empty-image check, for every kind of source.

    Raises:
        ImageError: ``image too large`` or ``image has no pixels``.
    """
    if width < 1 or height < 1 or width * height > max_pixels:
        raise ImageError(
            "image too large" if width * height > max_pixels else "image has no pixels",
            received=f"{label} ({width}x{height} = {width * height} pixels)",
            expected=f"between 1 and {max_pixels} pixels",
            fix="downscale or replace the image",
        )


@contextlib.contextmanager
def warnings_named(label: str) -> Iterator[None]:
    """Re-issue every warning raised inside (Pillow's "Corrupt EXIF data"...) prefixed with ``label``.

    Pillow's ``DecompressionBombWarning`` is dropped: the pixel cap (lower than Pillow's warning
    threshold) refuses such images with an error that names the file.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            pending = list(caught)
    for w in pending:
        if issubclass(w.category, Image.DecompressionBombWarning):
            continue
        text = str(w.message)
        warnings.warn(text if text.startswith(f"{label}: ") else f"{label}: {text}", w.category, stacklevel=3)


def open_image(data: bytes, label: str, max_pixels: int, draft: int | None) -> Image.Image:
    """Open and fully decode the first frame of ``data``, enforcing the allowlist and pixel cap."""
    check_png_chunks(data, label)
    try:
        img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        raise ImageError(
            "not a supported image",
            received=label,
            expected="a PNG, JPEG, BMP, GIF, TIFF or WebP image",
            fix="convert the file to PNG or JPEG, or remove it",
        ) from None
    except Image.DecompressionBombError:
        raise ImageError(
            "image too large",
            received=label,
            expected=f"at most {max_pixels} pixels",
            fix="downscale the image before classifying it",
        ) from None
    except Exception as exc:  # noqa: BLE001 - untrusted bytes: every decoder failure is a bad image
        raise ImageError(
            "cannot decode image",
            received=f"{label} ({type(exc).__name__}: {exc})",
            expected="a valid image file",
            fix="re-export or remove the file",
        ) from None
    w, h = img.size
    check_pixels(label, w, h, max_pixels)
    try:
        if draft and img.format == "JPEG" and min(w, h) >= 2 * draft:
            img.draft(None, (draft, draft))
        img.load()
    except Exception as exc:  # noqa: BLE001 - see above
        raise ImageError(
            "cannot decode image",
            received=f"{label} ({type(exc).__name__}: {exc})",
            expected="a complete, valid image file",
            fix="re-export the file (it may be truncated or corrupt) or remove it",
        ) from None
    return img


def orientation(img: Image.Image, label: str) -> tuple[Image.Transpose, ...]:
    """The transpositions the EXIF orientation tag asks for; malformed EXIF is ignored with a warning."""
    try:
        value = img.getexif().get(0x0112, 1)
    except Exception:  # noqa: BLE001 - malformed EXIF must not make an image unusable
        warnings.warn(f"{label}: unreadable EXIF data ignored (no rotation applied)", stacklevel=3)
        return ()
    return (_ORIENT.get(value) or ()) if isinstance(value, int) else ()
