"""Request bodies → encoded images: raw bytes, multipart forms and JSON base64 (v2 bodies: ``v2_inputs``).

Only the *container* is parsed here; each image's bytes go to ``Classifier.predict`` untouched, so the
one decode path (with its format allowlist and pixel cap) judges every image. Every problem becomes a
:class:`HTTPProblem` whose message has the library's form (what was received, expected, how to fix).

Usage::

    images = await read_images(request, max_images=64)       # [(file name or None, bytes), ...]
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from imgclf.errors import ImgclfError, UsageError


class HTTPProblem(Exception):
    """An error answered as ``{"error": message}`` with ``status`` (and optional headers)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def problem(status: int, what: str, *, received: object, expected: object, fix: str) -> HTTPProblem:
    """An :class:`HTTPProblem` whose message reads like every imgclf error."""
    return HTTPProblem(status, str(UsageError(what, received=received, expected=expected, fix=fix)))


def from_error(status: int, exc: ImgclfError) -> HTTPProblem:
    """An :class:`HTTPProblem` carrying a library error's one-line message."""
    return HTTPProblem(status, str(exc))


def too_many(count: int, max_images: int) -> HTTPProblem:
    """413 for a request holding more than ``max_images`` images."""
    return problem(
        413,
        "too many images in one request",
        received=f"{count} images",
        expected=f"at most {max_images} (--max-images-per-request)",
        fix="split the images over several requests",
    )


def parse_top_k(text: str | None) -> int:
    """The ``top_k`` query parameter (default 1)."""
    if text is None:
        return 1
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise problem(
            400,
            "top_k must be a positive integer",
            received=repr(text),
            expected=">= 1",
            fix="use ?top_k=1 or more",
        )
    return value


def parse_json(body: bytes) -> Any:
    """Strict JSON (no NaN/Infinity); malformed or absurdly nested documents are a 400."""

    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(body, parse_constant=no_constants)
    except (ValueError, UnicodeDecodeError) as exc:
        received = f"{type(exc).__name__}: {str(exc)[:80]}"
    except RecursionError:
        received = "a document nested too deeply"
    raise problem(
        400,
        "request body is not valid JSON",
        received=received,
        expected="a JSON object",
        fix="send Content-Type: application/json with a JSON object",
    )


def decode_base64(text: Any, what: str) -> bytes:
    """Standard base64 (padding required, no stray characters) → bytes."""
    if not isinstance(text, str):
        raise problem(
            400,
            f"{what} is not a base64 string",
            received=type(text).__name__,
            expected="a base64 string",
            fix="encode each image with base64",
        )
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise problem(
            400,
            f"{what} is not valid base64",
            received=f"{len(text)} characters",
            expected="standard base64 with padding",
            fix="encode with base64.b64encode",
        ) from None


def _json_images(body: bytes, max_images: int) -> list[tuple[str | None, bytes]]:
    doc = parse_json(body)
    items = doc.get("images") if isinstance(doc, dict) else None
    if not isinstance(items, list) or not items:
        raise problem(
            400,
            "JSON body needs a non-empty list 'images'",
            received=shape_of(doc),
            expected='{"images": ["<base64>", ...]}',
            fix="put base64-encoded images in 'images'",
        )
    if len(items) > max_images:
        raise too_many(len(items), max_images)
    names = doc.get("names")
    if names is not None and (
        not isinstance(names, list) or len(names) != len(items) or not all(isinstance(n, str) for n in names)
    ):
        raise problem(
            400,
            "'names' must list one string per image",
            received=shape_of(names),
            expected=f"{len(items)} strings",
            fix="drop 'names' or give one per image",
        )
    return [(names[i] if names else None, decode_base64(x, f"images[{i}]")) for i, x in enumerate(items)]


def shape_of(value: Any) -> str:
    """What a JSON value is, for an error message: its type, or an object's first keys."""
    if isinstance(value, dict):
        return f"an object with keys {sorted(value)[:5]}"
    return type(value).__name__


async def _multipart_images(request: Any, max_images: int) -> list[tuple[str | None, bytes]]:
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException

    try:
        form = await request.form(max_files=max_images, max_fields=max_images)
    except HTTPException as exc:  # Starlette reports multipart problems (bad boundary, limits) so
        if "Too many files" in str(exc.detail):
            raise too_many(max_images + 1, max_images) from None
        raise problem(
            400,
            "malformed multipart body",
            received=str(exc.detail)[:120],
            expected="multipart/form-data with image files",
            fix="send files with curl -F file=@cell.png",
        ) from None
    try:
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if not files:
            raise problem(
                400,
                "multipart body holds no files",
                received=f"{len(form)} text fields",
                expected="one or more image files",
                fix="send files with curl -F file=@cell.png",
            )
        return [(f.filename or None, await f.read()) for f in files]
    finally:
        await form.close()


async def read_images(request: Any, max_images: int) -> list[tuple[str | None, bytes]]:
    """The images of a ``/v1`` predict request: ``[(file name or None, encoded bytes), ...]``.

    Raises:
        HTTPProblem: 400 for a malformed body, 413 for too many images, 415 for a text body.
    """
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        return await _multipart_images(request, max_images)
    body = await request.body()
    if not body:
        raise problem(
            400,
            "empty request body",
            received="0 bytes",
            expected="an image, a form or JSON",
            fix="curl --data-binary @cell.png URL",
        )
    if ctype == "application/json":
        return _json_images(body, max_images)
    if ctype.startswith("text/"):
        raise problem(
            415,
            "unsupported content type",
            received=ctype,
            expected="an image, application/octet-stream, multipart/form-data or application/json",
            fix="send the image's bytes: curl --data-binary @cell.png URL",
        )
    return [(None, body)]  # raw image (curl --data-binary sends it as form-urlencoded: accepted)
