"""Linear probe: the frozen backbone's embeddings of the training images, computed once, and the head
trained on them.

A head on a frozen backbone only needs the backbone's output for each training image once: the whole
network runs once in eval mode over the unaugmented images, a hook keeps what enters the head, and every
training step then runs the head alone on rows of that table. Validation and the saved file use the whole
network, whose output on the same image equals the head applied to the stored embedding.

The table is kept per process, keyed by the digest of the model's weights and of the images, so a
resumed run or a second fit of the same backbone on the same data in this process reuses it.

Usage::

    probe = Embeddings(model, train.images, config.preprocess, device, batch_size=256)
    logits = probe.logits(idx)       # idx: a batch of row indices into the training images
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import nn

from imgclf.config import PreprocessSpec
from imgclf.errors import UsageError
from imgclf.images.preprocess import to_tensor
from imgclf.models.timm_backbone import head_module, head_names

_CACHE: dict[str, torch.Tensor] = {}  # one table: a probe's embeddings can be large


def _key(model: nn.Module, images: np.ndarray, spec: PreprocessSpec) -> str:
    """Digest of the backbone's weights (not the head's: it does not change the table), images, spec."""
    h = hashlib.sha256(repr(sorted(spec.to_dict().items())).encode())
    head = head_names(model)
    for name, t in model.state_dict().items():
        if name in head:
            continue
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(np.ascontiguousarray(images).data)
    return h.hexdigest()


class Embeddings:
    """What enters the head for each training image, with the head to train on it.

    Args:
        model: The network (its head gets a new classifier for the dataset's classes).
        images: The training images, uint8 (N, H, W, 3).
        spec: The preprocessing.
        device: Where the table lives and the head trains.
        batch_size: Images per forward pass while computing the table.
        memory_format: The layout the model runs in.

    Raises:
        UsageError: The model has no linear head to train.
    """

    def __init__(
        self,
        model: nn.Module,
        images: np.ndarray,
        spec: PreprocessSpec,
        device: torch.device,
        *,
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
        key = _key(model, images, spec)
        if key not in _CACHE:
            _CACHE.clear()
            _CACHE[key] = self._compute(model, images, spec, device, batch_size, memory_format)
        self.features = _CACHE[key].to(device)

    def _compute(
        self,
        model: nn.Module,
        images: np.ndarray,
        spec: PreprocessSpec,
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
                    x = to_tensor(images[start : start + batch_size], spec, device=device)
                    model(x.contiguous(memory_format=memory_format))
        finally:
            hook.remove()
            model.train(was_training)
        return torch.cat(rows)

    def logits(self, idx: torch.Tensor) -> torch.Tensor:
        """The head's output for the training images ``idx``."""
        return self.head(self.features[idx])
