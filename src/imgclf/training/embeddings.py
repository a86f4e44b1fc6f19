"""Linear probe: the frozen backbone's embeddings of the training images, computed once, and the head
trained on them.

A head on a frozen backbone only needs the backbone's output for each training image once: the whole
network runs once in eval mode over the unaugmented images, a hook keeps what enters the head, and every
training step then runs the head alone on rows of that table. Validation and the saved file use the whole
network, whose output on the same image equals the head applied to the stored embedding.

The table is kept on disk next to the decode-once cache (``<cache folder>/embeddings/v1/<key>.npy``), so a
second run, a resumed run or another process on the same backbone and data reuses it. The key hashes the
architecture and its builder arguments, the backbone's tensors (not the head's: they do not change the
table), the preprocessing spec with the decode rule and Pillow version, the split's file list and content
digests, and the torch version, device type and memory layout the table was computed with, so a hit gives
the very bits a fresh computation would. Tables are written atomically, read bounded, checked (dtype, shape,
row count) and recomputed with a note when damaged; the least recently used are evicted past a size bound.
``imgclf cache info|clear`` counts and clears them with the decoded images.

Usage::

    cache = EmbeddingCache(default_cache_dir(), log=print)
    probe = Embeddings(model, train, config, device, cache=cache, batch_size=256)
    logits = probe.logits(idx)       # idx: a batch of row indices into the training images
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from imgclf.config import TrainConfig
from imgclf.data.decode import DecodedSplit
from imgclf.errors import UsageError
from imgclf.fileio.reading import read_bounded
from imgclf.fileio.writing import atomic_write_bytes
from imgclf.images.preprocess import DECODE_RULE, to_tensor
from imgclf.models.timm_backbone import head_module, head_names

EMBEDDINGS_VERSION = 1
DEFAULT_MAX_BYTES = 4 * 1024**3
_NPY_HEADER_SLACK = 1 << 16  # an .npy header is a few hundred bytes; anything past this is not ours


def embeddings_folder(root: str | os.PathLike) -> Path:
    """Where the tables live under a cache folder (``root/embeddings/v<N>``)."""
    return Path(root) / "embeddings" / f"v{EMBEDDINGS_VERSION}"


def table_key(
    config: TrainConfig,
    model: nn.Module,
    train: DecodedSplit,
    device: torch.device,
    memory_format: torch.memory_format,
) -> str:
    """Digest of everything the table depends on (see the module docstring)."""
    import PIL

    facts = {
        "arch": config.arch,
        "arch_args": config.arch_args,
        "spec": config.preprocess.to_dict(),
        "rule": DECODE_RULE,
        "pillow": PIL.__version__,
        "torch": torch.__version__,
        "device": device.type,
        "memory_format": str(memory_format),
    }
    h = hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode())
    head = head_names(model)
    for name, t in model.state_dict().items():
        if name in head:
            continue
        h.update(f"\x00{name}\x00{t.dtype}\x00{tuple(t.shape)}\x00".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    h.update(f"\x00{len(train.paths)}\x00".encode())
    for path in train.paths:
        h.update(os.path.abspath(path).encode("utf-8", "surrogateescape") + b"\x00")
    if len(train.digests) == len(train.paths) and all(train.digests):
        h.update("\x00".join(train.digests).encode())
    else:  # splits made in memory carry no file digests: their pixels are the data
        h.update(np.ascontiguousarray(train.images).data)
    return h.hexdigest()


class EmbeddingCache:
    """The on-disk tables of a cache folder.

    Args:
        root: The cache folder (the decode-once cache's, :func:`~imgclf.data.decode_cache.default_cache_dir`).
        log: Where notes go (a damaged table, a hit, a write that failed).
        max_bytes: Size bound for all tables; the least recently used are evicted beyond it.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        log: Callable[[str], None] | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.folder = embeddings_folder(root)
        self.log = log or (lambda _msg: None)
        self.max_bytes = max_bytes
        self.hits = 0
        self.computed = 0

    def path(self, key: str) -> Path:
        """The table file of ``key``."""
        return self.folder / f"{key}.npy"

    def load(self, key: str, rows: int, width: int | None) -> torch.Tensor | None:
        """The stored table of ``key`` if there and sound (float32, ``rows`` rows of ``width``), else None."""
        path = self.path(key)
        if not path.exists():
            return None
        cap = rows * (width or 1 << 16) * 4 + _NPY_HEADER_SLACK
        try:
            data = read_bounded(path, cap, "embedding cache file")
            table = np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)  # never unpickles
            if table.dtype != np.float32 or table.ndim < 2 or len(table) != rows:
                raise ValueError(f"holds {table.dtype} {table.shape}, expected float32 with {rows} rows")
            if width is not None and table.shape[-1] != width:
                raise ValueError(f"rows of {table.shape[-1]} values, expected {width}")
        except (OSError, ValueError, EOFError) as exc:
            self.log(f"note: ignoring the damaged embedding cache file {path} ({exc}); recomputing it")
            return None
        with contextlib.suppress(OSError):
            os.utime(path)  # recency for eviction
        self.hits += 1
        self.log(f"linear probe: reusing the backbone's embeddings from {path}")
        return torch.from_numpy(table.copy())

    def store(self, key: str, table: torch.Tensor) -> None:
        """Write ``table`` atomically (a failed write only costs the next run a recomputation)."""
        buf = io.BytesIO()
        np.save(buf, table.detach().cpu().numpy().astype(np.float32, copy=False), allow_pickle=False)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.path(key), buf.getvalue())
            self._evict(keep=self.path(key))
        except OSError as exc:
            self.log(
                f"note: could not store the embeddings in {self.folder} ({exc}); the next run recomputes them"
            )

    def _evict(self, keep: Path) -> None:
        tables = []
        for f in self.folder.glob("*.npy"):
            with contextlib.suppress(OSError):
                st = f.stat()
                tables.append((st.st_mtime, st.st_size, f))
        total = sum(size for _, size, _ in tables)
        for _, size, f in sorted(tables):
            if total <= self.max_bytes:
                break
            if f != keep:
                with contextlib.suppress(OSError):
                    f.unlink()
                total -= size


class Embeddings:
    """What enters the head for each training image, with the head to train on it.

    Args:
        model: The network (its head gets a new classifier for the dataset's classes).
        train: The training split (its unaugmented images are embedded).
        config: The run's settings (architecture, builder arguments, preprocessing).
        device: Where the table lives and the head trains.
        cache: The on-disk tables (``None``: compute the table for this run only).
        batch_size: Images per forward pass while computing the table.
        memory_format: The layout the model runs in.

    Raises:
        UsageError: The model has no linear head to train.
    """

    def __init__(
        self,
        model: nn.Module,
        train: DecodedSplit,
        config: TrainConfig,
        device: torch.device,
        *,
        cache: EmbeddingCache | None = None,
        batch_size: int = 256,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> None:
        head = head_module(model)
        if head is None:
            raise UsageError(
                "--linear-probe needs a model with a linear head",
                received=type(model).__name__,
                expected="an architecture ending in a linear layer",
                fix="train without --linear-probe",
            )
        self.head = head
        table = None
        if cache is not None:
            key = table_key(config, model, train, device, memory_format)
            width = head.in_features if isinstance(head, nn.Linear) else None
            table = cache.load(key, len(train.images), width)
        if table is None:
            table = self._compute(model, train.images, config, device, batch_size, memory_format)
            if cache is not None:
                cache.computed += 1
                cache.store(key, table)
        self.features = table.to(device)

    def _compute(
        self,
        model: nn.Module,
        images: np.ndarray,
        config: TrainConfig,
        device: torch.device,
        batch_size: int,
        memory_format: torch.memory_format,
    ) -> torch.Tensor:
        rows: list[torch.Tensor] = []
        hook = self.head.register_forward_pre_hook(lambda _m, args: rows.append(args[0].detach().float()))
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                for start in range(0, len(images), batch_size):
                    x = to_tensor(images[start : start + batch_size], config.preprocess, device=device)
                    model(x.contiguous(memory_format=memory_format))
        finally:
            hook.remove()
            model.train(was_training)
        return torch.cat(rows)

    def logits(self, idx: torch.Tensor) -> torch.Tensor:
        """The head's output for the training images ``idx``."""
        return self.head(self.features[idx])
