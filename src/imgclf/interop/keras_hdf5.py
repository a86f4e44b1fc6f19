"""Check a Keras weights HDF5 file's structure before any of its data is read.

HDF5 can make a dataset's bytes come from elsewhere: *external storage* (raw bytes of any file named in
the dataset's creation properties, e.g. ``/etc/passwd``), *virtual datasets* (mappings onto datasets of
other HDF5 files), *external links* (a name in this file that opens an object of another file) and soft
links. Reading such a dataset would copy a host file's bytes into the imported model, which is then
shared. Filters run decompression (and, for an unknown filter ID, HDF5 loads a plugin from
``HDF5_PLUGIN_PATH``) on the file's bytes, and a small compressed file can declare gigabytes.

:func:`check_storage` walks every link of the file with h5py's low-level property lists (metadata only,
no dataset is read) and refuses, naming the object:

- any link that is not a hard link inside the file (soft, external or user-defined links: Keras writes
  none);
- any dataset whose layout is virtual or that has external storage;
- any filter outside ``ALLOWED_FILTERS`` (gzip, shuffle, fletcher32, and h5py's lzf: what h5py itself
  writes without plugins), and chunks over ``MAX_CHUNK_BYTES``;
- datasets of variable-length data or references, whose size their shape does not bound (Keras
  writes numbers only);
- declared sizes (shape × item size, summed over every dataset) over ``max_total`` or over
  ``EXPANSION`` × the file's size + ``EXPANSION_SLACK``, so decompression can never allocate more than
  that, whatever the compressed size.

Usage::

    check_storage("model.h5", h5py.File(io.BytesIO(blob), "r"), len(blob), MAX_WEIGHT_BYTES)
"""

from __future__ import annotations

import math
from typing import Any

from imgclf.interop.keras_zip import refused

# HDF5 filter IDs: 1 deflate (gzip), 2 shuffle, 3 fletcher32 (built into libhdf5), 32000 lzf (in h5py).
ALLOWED_FILTERS = {1: "gzip", 2: "shuffle", 3: "fletcher32", 32000: "lzf"}
MAX_OBJECTS = 100_000
MAX_DEPTH = 32
MAX_CHUNK_BYTES = 64 << 20
EXPANSION = 8  # declared bytes per file byte a compressed file may unpack to
EXPANSION_SLACK = 16 << 20
_FIX = "save the model again with Keras (model.save('model.keras')), without external or virtual storage"


def _dataset(path: str, ds: Any, name: str) -> int:
    """Refuse a dataset whose bytes come from outside the file or pass through an unknown filter; its
    declared size in bytes."""
    import h5py

    dcpl = ds.id.get_create_plist()
    layout = dcpl.get_layout()
    if layout == h5py.h5d.VIRTUAL:
        problem = f"dataset {name!r} is an HDF5 virtual dataset (its data lives in other files)"
        raise refused(path, problem, fix=_FIX)
    if dcpl.get_external_count():
        first = dcpl.get_external(0)[0].decode("utf-8", "replace")
        raise refused(
            path,
            f"dataset {name!r} uses HDF5 external storage (its data is read from another file)",
            repr(first)[:120],
            _FIX,
        )
    if layout not in (h5py.h5d.COMPACT, h5py.h5d.CONTIGUOUS, h5py.h5d.CHUNKED):
        raise refused(path, f"dataset {name!r} has an unknown storage layout", layout, _FIX)
    for i in range(dcpl.get_nfilters()):
        code, _, _, label = dcpl.get_filter(i)
        if code not in ALLOWED_FILTERS:
            raise refused(
                path,
                f"dataset {name!r} uses HDF5 filter {code} ({label.decode('utf-8', 'replace')[:40]}), "
                f"not one of {', '.join(ALLOWED_FILTERS.values())}",
                fix=_FIX,
            )
    dtype = ds.dtype
    if dtype.hasobject:  # h5py's form of variable-length data and references: sizes not declared
        raise refused(
            path, f"dataset {name!r} holds variable-length data or references", str(dtype)[:60], _FIX
        )
    if layout == h5py.h5d.CHUNKED:
        chunk = math.prod(dcpl.get_chunk()) * dtype.itemsize
        if chunk > MAX_CHUNK_BYTES:
            raise refused(path, f"dataset {name!r} declares chunks over the size limit", f"{chunk} bytes")
    return math.prod(ds.shape or (0,)) * dtype.itemsize


def check_storage(path: str, h5: Any, file_bytes: int, max_total: int) -> None:
    """Walk every link of ``h5`` and check each dataset's storage (see the module docstring).

    Args:
        path: The imported file (for messages).
        h5: The open h5py file.
        file_bytes: The size of the HDF5 bytes ``h5`` was opened from.
        max_total: The cap on the declared size of all datasets together.

    Raises:
        ModelFileError: A link leaves the file, a dataset's data is external, virtual, filtered by a
            filter outside the allowed set or not numbers, or the declared sizes exceed the limit.
    """
    import h5py

    limit = min(max_total, EXPANSION * file_bytes + EXPANSION_SLACK)
    seen: set[tuple[int, int]] = set()
    total = count = 0
    stack: list[tuple[Any, str, int]] = [(h5, "", 0)]
    while stack:
        group, prefix, depth = stack.pop()
        for key in group:
            name = f"{prefix}/{key}"
            count += 1
            if count > MAX_OBJECTS or depth >= MAX_DEPTH:
                raise refused(path, "too many or too deeply nested HDF5 objects", name[:120])
            link = group.get(key, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                raise refused(
                    path,
                    f"{name!r} is an HDF5 external link (to another file)",
                    f"{link.filename}:{link.path}"[:120],
                    _FIX,
                )
            if not isinstance(link, h5py.HardLink):
                kind = "soft" if isinstance(link, h5py.SoftLink) else "user-defined"
                target = getattr(link, "path", type(link).__name__)
                raise refused(
                    path, f"{name!r} is an HDF5 {kind} link, not an object of its own", target, _FIX
                )
            obj = group[key]
            info = h5py.h5o.get_info(obj.id)
            if (info.fileno, info.addr) in seen:
                continue
            seen.add((info.fileno, info.addr))
            if isinstance(obj, h5py.Group):
                stack.append((obj, name, depth + 1))
            elif isinstance(obj, h5py.Dataset):
                total += _dataset(path, obj, name)
                if total > limit:
                    raise refused(
                        path,
                        f"the datasets up to {name!r} exceed the size limit",
                        f"{total} bytes declared (uncompressed) in {file_bytes} bytes of HDF5",
                        f"at most {limit} bytes: save the weights without extreme compression",
                    )
