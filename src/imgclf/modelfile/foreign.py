"""Say what a file that is not an imgclf model looks like, from a few bytes at its start and end.

Used only to word the error when a model file is refused: "not an imgclf model file: it looks like a
Python pickle". Nothing here parses the file beyond its magic bytes and zip member names (read from
bounded slices), and nothing is ever unpickled, unzipped or imported.

Usage::

    print(describe(first_4k, last_64k, "model.pt"))  # "a PyTorch torch.save archive (zip holding a pickle)"
"""

from __future__ import annotations

import os
import struct

HEAD_BYTES = 4096
TAIL_BYTES = 65536
UNKNOWN = "not a safetensors file"
# The safetensors metadata key of imgclf's training checkpoints (imgclf.training.checkpoint uses it).
CHECKPOINT_KEY = "imgclf.training.checkpoint"

_MAGIC = [
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file (a Keras .h5 model?)"),
    (b"7z\xbc\xaf\x27\x1c", "a 7z archive"),
    (b"\x1f\x8b\x08", "a gzip file"),
    (b"BZh", "a bzip2 file"),
    (b"\xfd7zXZ\x00", "an xz file"),
    (b"\x28\xb5\x2f\xfd", "a zstd file"),
    (b"Rar!", "a RAR archive"),
    (b"\x89PNG", "a PNG image, not a model"),
    (b"\xff\xd8\xff", "a JPEG image, not a model"),
    (b"GIF8", "a GIF image, not a model"),
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"\x7fELF", "an executable (ELF) file"),
    (b"MZ", "a Windows executable"),
    (b"%PDF", "a PDF document"),
    (b"ORT_", "an ONNX Runtime (.ort) model"),
    (b"GGUF", "a GGUF (llama.cpp) model"),
]
# Pickle opcodes a protocol 0/1 stream can start with (MARK, lists, dicts, ints, strings, globals).
_PICKLE_START = set(b"(]}lIKLFSVXcNTUJG")


def _zip_names(head: bytes, tail: bytes) -> list[str]:
    """Member names from the first local header and the central directory found in ``tail``."""
    names = []
    if head.startswith(b"PK\x03\x04") and len(head) >= 30:
        (length,) = struct.unpack_from("<H", head, 26)
        names.append(head[30 : 30 + length].decode("utf-8", "replace"))
    start = tail.find(b"PK\x01\x02")
    while 0 <= start and start + 46 <= len(tail) and len(names) < 1000:
        (length,) = struct.unpack_from("<H", tail, start + 28)
        names.append(tail[start + 46 : start + 46 + length].decode("utf-8", "replace"))
        start = tail.find(b"PK\x01\x02", start + 46)
    return names


def _describe_zip(head: bytes, tail: bytes, path: str) -> str:
    names = _zip_names(head, tail)
    base = {n.rsplit("/", 1)[-1] for n in names}
    if "data.pkl" in base:
        return "a PyTorch torch.save archive (zip holding a pickle)"
    if "config.json" in base and ("model.weights.h5" in base or "metadata.json" in base):
        return "a Keras .keras archive (zip)"
    if path.lower().endswith(".keras"):
        return "a Keras .keras archive (zip)"
    if names and all(n.endswith(".npy") for n in names):
        return "a NumPy .npz archive (zip)"
    if "saved_model.pb" in base:
        return "a zipped TensorFlow SavedModel"
    return "a zip archive"


def _looks_onnx(head: bytes) -> bool:
    # ModelProto starts with field 1 (ir_version, varint: 0x08 <3..15>) followed by another known field tag.
    return (
        len(head) >= 3
        and head[0] == 0x08
        and 3 <= head[1] <= 15
        and head[2] in b"\x12\x1a\x22\x28\x32\x3a\x42"
    )


def describe(head: bytes, tail: bytes = b"", path: str | os.PathLike = "") -> str:
    """Describe what a non-imgclf file looks like ("a Python pickle", "a zip archive", ...).

    Args:
        head: The file's first bytes (a few KiB is plenty).
        tail: The file's last bytes (lets zip member names and a pickle's final STOP be seen).
        path: The file name, whose extension settles a few ambiguous cases.

    Returns:
        A short noun phrase, or ``UNKNOWN`` when nothing matches.
    """
    name = os.fspath(path)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return _describe_zip(head, tail, name) if head[2:4] == b"\x03\x04" else "an empty zip archive"
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    if head.startswith(b"\x80\x02\x8a\x0al\xfc\x9c"):
        return "a legacy PyTorch torch.save file (a pickle; loading it could run code)"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "a Python pickle (loading it could run code; imgclf never unpickles)"
    if len(head) > 262 and head[257:262] == b"ustar":
        return "a tar archive (legacy torch.save?)"
    if len(head) >= 8 and head[4:8] == b"TFL3":
        return "a TensorFlow Lite model"
    if _looks_onnx(head) or name.lower().endswith(".onnx"):
        return "an ONNX model (protobuf)"
    # A protocol 0/1 pickle ends with the STOP opcode, "." as the very last byte (text rarely does).
    if head[:1] and head[0] in _PICKLE_START and (tail or head).endswith(b"."):
        return "a Python pickle (protocol 0/1; loading it could run code; imgclf never unpickles)"
    stripped = head.lstrip()
    if stripped[:1] in (b"{", b"["):
        return "a JSON or text file"
    if head and all(32 <= b < 127 or b in b"\t\r\n" for b in head[:512]):
        return "a text file"
    return UNKNOWN


def describe_checkpoint(path: str | os.PathLike) -> tuple[str, str]:
    """``(what it is, how to get a model file)`` for one of imgclf's own training checkpoints."""
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    run_dir = os.path.dirname(folder) if os.path.basename(folder) == "checkpoints" else "RUN_DIR"
    return (
        "it is an imgclf training checkpoint (weights and optimizer state of a run, not a model file)",
        f"get the model file from its run: imgclf train --resume {run_dir} (a finished run names the "
        "model file it wrote)",
    )
