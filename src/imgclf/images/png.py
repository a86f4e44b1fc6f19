"""PNG chunk headers checked before Pillow parses a file: metadata chunks Pillow would read whole are
refused by their length field.

Usage::

    check_png_chunks(data, "cell.png")     # raises ImageError for a 250 MB tEXt chunk
"""

from __future__ import annotations

import struct

from imgclf.errors import ImageError

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHUNK = struct.Struct(">I4s")
_PNG_IMAGE_DATA = (b"IDAT", b"fdAT")  # streamed through the decoder, never held whole
_PNG_TEXT = (b"tEXt", b"zTXt", b"iTXt")
MAX_PNG_TEXT_CHUNK = 1 << 20  # Pillow's own MAX_TEXT_CHUNK, applied before the chunk is read
MAX_PNG_OTHER_CHUNK = 16 << 20  # ICC profiles, EXIF and unknown chunks: Pillow reads each in full
MAX_PNG_CHUNKS = 1_000_000  # real encoders write at most thousands


def check_png_chunks(data: bytes, label: str) -> None:
    """Refuse a PNG whose metadata chunks are too large, by their headers alone.

    Pillow reads every non-image chunk (text, ICC profile, unknown ones, also those after the image
    data) into memory in full before judging it, at several times the chunk's size (docs/performance.md,
    "Memory"). Non-PNG data passes.

    Raises:
        ImageError: ``PNG chunk too large`` or ``PNG has too many chunks``.
    """
    if not data.startswith(_PNG_SIGNATURE):
        return
    pos, count = len(_PNG_SIGNATURE), 0
    while pos + 8 <= len(data):
        length, kind = _PNG_CHUNK.unpack_from(data, pos)
        count += 1
        if count > MAX_PNG_CHUNKS:
            raise ImageError(
                "PNG has too many chunks",
                received=f"{label} (more than {MAX_PNG_CHUNKS})",
                expected=f"at most {MAX_PNG_CHUNKS} chunks",
                fix="re-save the image with a standard encoder",
            )
        cap = MAX_PNG_TEXT_CHUNK if kind in _PNG_TEXT else MAX_PNG_OTHER_CHUNK
        if kind not in _PNG_IMAGE_DATA and length > cap:
            raise ImageError(
                "PNG chunk too large",
                received=f"{label} ({kind.decode('latin-1')!r} chunk of {length} bytes)",
                expected=f"metadata chunks of at most {cap} bytes",
                fix="strip the metadata, e.g. re-save the image without text or profile",
            )
        if kind == b"IEND":
            return
        pos += 12 + length
