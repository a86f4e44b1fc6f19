"""The training loop: data resident on the device, batched augmentation, Keras-style SGD time decay.

The ``stable`` recipe's parts also run here: the schedule per step (:mod:`.schedule`), gradient
clipping, and a weight average (:mod:`.ema`) that validation and the saved file use.

``fit`` never prints; progress goes to callbacks (the CLI draws a progress bar with one). The run's
position lives in :class:`~imgclf.training.state.TrainState`, so it can stop after any step and resume
exactly. History records hold only deterministic numbers; wall-clock times go to ``timings``.

Usage::

    state = create_state(config, num_classes=2)                       # imgclf.training.state
    state = fit(config, state, train_split, val_split, callbacks=[MyCallback()])
    model = state.model
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from imgclf.config import TrainConfig
from imgclf.data.decode import DecodedSplit
from imgclf.errors import UsageError
from imgclf.images.preprocess import to_tensor
from imgclf.training.augment import affine_matrices, augment_batch, sample_params
from imgclf.training.balance import class_weights, keep_monitor, num_classes_of, sampler_order
from imgclf.training.determinism import deterministic_algorithms
from imgclf.training.device import resolve_precision, stage_images
from imgclf.training.ema import averaged_weights, bn_images, update_average
from imgclf.training.embeddings import EmbeddingCache, Embeddings
from imgclf.training.finetune import frozen_bn, set_phase
from imgclf.training.schedule import lr_at, steps_per_epoch
from imgclf.training.state import PartialEpoch, TrainState
from imgclf.training.validate import evaluate_split

if TYPE_CHECKING:
    from imgclf.training.distributed import Group


class Callback:
    """Hooks ``fit`` calls; override the ones you need. None of them may change the run."""

    def on_train_begin(
        self, config: TrainConfig, state: TrainState, steps: int, device: torch.device
    ) -> None:
        """Before the first epoch (also after a resume)."""

    def on_epoch_begin(self, epoch: int, steps: int) -> None:
        """Before each epoch; ``epoch`` is 1-based."""

    def on_step_end(self, step: int, steps: int, loss: float | None) -> None:
        """After each optimizer step; ``loss`` is ``None`` where reading it would stall the GPU."""

    def on_epoch_end(self, state: TrainState, record: dict[str, float]) -> None:
        """After each epoch's validation, with the epoch's history record."""

    def on_train_end(self, state: TrainState) -> None:
        """After the last epoch (or early stop)."""


def _improved(key: str, value: float, best: float | None) -> bool:
    if best is None or math.isnan(best):
        return not math.isnan(value)
    return value < best if key.endswith("loss") else value > best


def fit(
    config: TrainConfig,
    state: TrainState,
    train: DecodedSplit,
    val: DecodedSplit | None = None,
    *,
    callbacks: Sequence[Callback] = (),
    should_stop: Callable[[], bool] | None = None,
    group: Group | None = None,
    embedding_cache: EmbeddingCache | None = None,
) -> TrainState:
    """Train ``state`` for the remaining epochs of ``config``; return the updated state.

    Args:
        config: The run's settings.
        state: From :func:`create_state` (or restored from a checkpoint, possibly mid-epoch).
        train: Decoded training split.
        val: Decoded validation split (may be empty or ``None``: then the monitored metric falls
            back to the training loss/accuracy).
        callbacks: Progress and checkpoint hooks.
        should_stop: Polled after each step and between epochs; when it returns True, ``fit`` finishes
            the current step and returns with ``state.interrupted`` set and, inside an epoch,
            ``state.in_epoch`` recording how far it got (the last step of an epoch is always followed
            by its validation, so an interruption there leaves a complete epoch).
        group: The process group of a multi-process run (:mod:`.distributed`), else ``None``: each
            rank trains on its share of every global batch (batch norm over the global batch, unless
            the group's ``sync_bn`` is off), validation is sharded and summed, and a stop request seen
            by any rank stops all of them at the same step.
        embedding_cache: Where a linear probe (``config.linear_probe``) finds and keeps the backbone's
            embeddings (``None``: computed for this call only).

    Raises:
        UsageError: With ``config.deterministic``, if an operation has no deterministic kernel.
    """
    device = next(state.model.parameters()).device
    with deterministic_algorithms(config.deterministic, device):
        try:
            return _fit(config, state, train, val, callbacks, should_stop, group, embedding_cache)
        finally:
            if group is not None:  # the model leaves fit with its own batch-norm layers
                group.unwrap()


def _fit(
    config: TrainConfig,
    state: TrainState,
    train: DecodedSplit,
    val: DecodedSplit | None,
    callbacks: Sequence[Callback],
    should_stop: Callable[[], bool] | None,
    group: Group | None,
    embedding_cache: EmbeddingCache | None = None,
) -> TrainState:
    if len(train) == 0:
        raise UsageError(
            "no training images", received=0, expected="at least one image", fix="check the dataset"
        )
    epochs = _Epochs(config, state, train, group, embedding_cache)
    monitor = keep_monitor(config, train.labels, num_classes_of(train.labels))
    state.interrupted = False
    for cb in callbacks:
        cb.on_train_begin(config, state, epochs.steps, epochs.device)

    votes = [0]

    def stop_requested() -> bool:
        asked = should_stop is not None and should_stop()
        if group is None:
            return asked
        # Every rank must stop at the same step: they vote (an all-reduce) every ``report_every`` calls
        # (every step on the CPU, every 25th on a GPU, where reading the result waits for the GPU).
        votes[0] += 1
        return group.any_(asked) if votes[0] % epochs.report_every == 0 else False

    state.model.train()
    while state.epoch < config.epochs and not state.stopped_early:
        if stop_requested():
            state.interrupted = True
            break
        epoch = state.epoch + 1
        for cb in callbacks:
            cb.on_epoch_begin(epoch, epochs.steps)
        started = time.perf_counter()
        record = epochs.run(epoch, callbacks, stop_requested)
        if record is None:  # interrupted inside the epoch
            break
        if group is not None:  # one model on every rank: rank 0 saves what all of them judge
            group.average_buffers(state.model)
        with _judged_weights(config, state, train, epochs.memory, epoch):
            if val is not None and len(val):
                record["val_loss"], record["val_accuracy"] = evaluate_split(
                    state.model if group else epochs.net, val, config, epochs.device, group, record
                )
                state.model.train()
            _track_best(config, state, record, monitor)
        state.history.append(record)
        state.timings.append({"epoch": epoch, "seconds": time.perf_counter() - started})
        state.epoch = epoch
        for cb in callbacks:
            cb.on_epoch_end(state, record)
    for cb in callbacks:
        cb.on_train_end(state)
    return state


class _Epochs:
    """One ``fit`` call's set-up (device, precision, staged images, batch geometry) and its epochs."""

    def __init__(
        self,
        config: TrainConfig,
        state: TrainState,
        train: DecodedSplit,
        group: Group | None = None,
        embedding_cache: EmbeddingCache | None = None,
    ) -> None:
        self.config, self.state, self.train, self.group = config, state, train, group
        self.device = device = next(state.model.parameters()).device
        self.dtype = resolve_precision(config.precision, device)
        if device.type == "cuda" and not config.deterministic:
            torch.backends.cudnn.benchmark = True
        self.steps, self.batch = steps_per_epoch(len(train), config.batch_size)
        model = state.model
        if group is not None:
            group.check_batch(self.batch)
            model = group.wrap(model)
        self.net: Callable[[torch.Tensor], torch.Tensor] = torch.compile(model) if config.compile else model
        self.x_all = stage_images(train.images, device)
        self.y_all = torch.from_numpy(train.labels).to(device)
        self.class_weight: torch.Tensor | None = None  # --balance weights: set at the first step
        self.memory = torch.channels_last if config.channels_last else torch.contiguous_format
        self.report_every = 1 if device.type == "cpu" else 25
        self.frozen: list[torch.nn.Parameter] = []
        self.probe = (
            _probe(config, state.model, train, device, group, embedding_cache)
            if config.linear_probe
            else None
        )

    def batch_images(self, idx: torch.Tensor) -> torch.Tensor:
        if self.x_all is not None:
            return self.x_all[idx]
        # Streaming from a memory-mapped cache: gather this batch's rows on the host.
        rows = np.take(self.train.images, idx.cpu().numpy(), axis=0)
        return torch.from_numpy(rows).to(self.device, non_blocking=True)

    def train_step(self, idx: torch.Tensor, mats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        config, optimizer, dtype = self.config, self.state.optimizer, self.dtype
        yb = self.y_all[idx]
        if self.probe is not None:  # the head alone, on the backbone's stored embeddings
            logits = self.probe.logits(idx)
        else:
            x = augment_batch(to_tensor(self.batch_images(idx), config.preprocess), config.augment, mats)
            x = x.contiguous(memory_format=self.memory)
            with torch.autocast(self.device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                logits = self.net(x)
        loss = self.loss(logits.float(), yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for p in self.frozen:  # head-only epochs under DDP (set_phase): the backbone does not move
            p.grad = None
        if config.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.state.model.parameters(), config.clip_norm, foreach=True)
        optimizer.step()
        if config.multi_label:  # an image is right when all its labels are
            return loss.detach(), ((logits.detach() > 0) == (yb > 0.5)).all(1).sum()
        return loss.detach(), (logits.detach().argmax(1) == yb).sum()

    def loss(self, logits: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        """Cross-entropy (multi-label: binary cross-entropy per class), class-weighted with
        ``--balance weights`` (the weights from the training labels, at the first step)."""
        config = self.config
        if config.balance == "weights" and self.class_weight is None:
            self.class_weight = class_weights(self.train.labels, logits.shape[-1]).to(self.device)
        if config.multi_label:
            return F.binary_cross_entropy_with_logits(logits, yb, pos_weight=self.class_weight)
        if self.class_weight is None:
            return F.cross_entropy(logits, yb, label_smoothing=config.label_smoothing)
        # Each image weighted by its class's weight. Not cross_entropy(weight=...): with label smoothing
        # that also weighs the smoothing term of every image by every class's weight, which pushes all
        # images towards a rare class (a model answering only the minority class).
        # Divided by the batch's image count, not by its weights' sum (PyTorch's weighted mean): the weights
        # average 1 over the training set, so each batch's loss is then an unbiased estimate of the
        # class-balanced loss. Dividing by the sum shrinks the rare class's share in every batch that holds
        # few of its images, to well under half of the gradient when most batches hold none or one.
        per_image = F.cross_entropy(logits, yb, label_smoothing=config.label_smoothing, reduction="none")
        w = self.class_weight[yb]
        return (w * per_image).sum() / len(w)

    def run(
        self, epoch: int, callbacks: Sequence[Callback], stop_requested: Callable[[], bool]
    ) -> dict[str, Any] | None:
        """Train one epoch (from where an interrupted one stopped); its record, or ``None`` if stopped."""
        config, state, device, steps, batch = self.config, self.state, self.device, self.steps, self.batch
        spec, aug = config.preprocess, config.augment
        self.frozen = set_phase(state.model, config, epoch, toggle_grad=self.group is None)
        # The generators hold the epoch's starting states: keep them to rewind to on interruption.
        gen_states = state.order_gen.get_state(), state.aug_gen.get_state()
        if config.balance == "sampler":
            labels = self.train.labels
            perm = sampler_order(labels, num_classes_of(labels), steps * batch, state.order_gen).to(device)
        else:
            perm = torch.randperm(len(self.train), generator=state.order_gen)[: steps * batch].to(device)
        mats = affine_matrices(sample_params(steps * batch, aug, state.aug_gen), spec.height, spec.width)
        mats = mats.to(device=device, dtype=torch.float32)
        resumed, state.in_epoch = state.in_epoch, None
        world = self.group
        if world is not None:  # each rank trains on its rows of every global batch
            perm = world.local(perm.view(steps, batch).T).T.reshape(-1)
            mats = world.local(mats.view(steps, batch, 6).transpose(0, 1)).transpose(0, 1)
            mats = mats.reshape(-1, 2, 3)
        # An interrupted epoch's sums are the whole world's (see below): rank 0 carries them on.
        carried = resumed is not None and (world is None or world.world.is_main)
        loss_sum = resumed.loss_sum.to(device) if carried else torch.zeros((), device=device)
        correct = resumed.correct.to(device) if carried else torch.zeros((), device=device, dtype=torch.long)
        batch = batch // world.size if world is not None else batch
        lr = lr_at(config, state.step, steps)
        for i in range(min(resumed.step, steps) if resumed else 0, steps):
            lr = lr_at(config, state.step, steps)
            for group in state.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            sl = slice(i * batch, (i + 1) * batch)
            loss, hits = self.train_step(perm[sl], mats[sl])
            loss_sum += loss
            correct += hits
            state.step += 1
            if state.ema is not None:
                update_average(state.ema, state.model, config.ema, state.step)
            shown = loss.item() if (i + 1) % self.report_every == 0 or i + 1 == steps else None
            for cb in callbacks:
                cb.on_step_end(i + 1, steps, shown)
            if i + 1 < steps and stop_requested():
                state.order_gen.set_state(gen_states[0])
                state.aug_gen.set_state(gen_states[1])
                loss_sum, correct = self._world_sums(loss_sum, correct)
                state.in_epoch = PartialEpoch(i + 1, loss_sum.detach().cpu(), correct.detach().cpu())
                state.interrupted = True
                return None
        loss_sum, correct = self._world_sums(loss_sum, correct)
        ranks = world.size if world is not None else 1
        return {
            "epoch": epoch,
            "loss": loss_sum.item() / (steps * ranks),  # each rank's loss is the mean of its rows
            "accuracy": correct.item() / (steps * batch * ranks),
            "lr": lr,
        }

    def _world_sums(self, loss_sum: torch.Tensor, correct: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The epoch's running sums added over all ranks (unchanged in a single process)."""
        return (loss_sum, correct) if self.group is None else tuple(self.group.sum_(loss_sum, correct))


def _probe(
    config: TrainConfig,
    model: torch.nn.Module,
    train: DecodedSplit,
    device: torch.device,
    group: Group | None,
    cache: EmbeddingCache | None = None,
) -> Embeddings:
    """The linear probe's embeddings (:mod:`.embeddings`); one process only (its head step bypasses DDP)."""
    if group is not None:
        raise UsageError(
            "--linear-probe runs in one process",
            received=f"{group.size} processes",
            expected="a single process",
            fix="drop --nproc / torchrun for a linear probe (it trains only the head)",
        )
    memory = torch.channels_last if config.channels_last else torch.contiguous_format
    size = config.eval_batch_size
    return Embeddings(model, train, config, device, cache=cache, batch_size=size, memory_format=memory)


@contextlib.contextmanager
def _judged_weights(
    config: TrainConfig, state: TrainState, train: DecodedSplit, memory: torch.memory_format, epoch: int
) -> Iterator[None]:
    """The weights an epoch is judged and kept by: the training weights, or (with EMA) the average.

    With EMA, the averaged weights with their recomputed batch-norm statistics are also kept in
    ``state.averaged``; the training weights are back, bit for bit, after the block. While the backbone
    is still frozen (head-only epochs so far), its batch-norm statistics stay as loaded.
    """
    if state.ema is None:
        yield
        return
    with averaged_weights(
        state.model,
        state.ema,
        bn_images(train.images),
        config.preprocess,
        batch_size=config.batch_size,
        memory_format=memory,
        keep_bn=frozen_bn(state.model, config, epoch),
    ):
        state.averaged = {k: v.detach().clone() for k, v in state.model.state_dict().items()}
        yield


def _track_best(config: TrainConfig, state: TrainState, record: dict[str, Any], monitor: str) -> None:
    """Update best metric/epoch/weights and the early-stopping counter after an epoch.

    ``monitor`` is the key judged by (:func:`.balance.keep_monitor`); without validation data the
    training loss or accuracy stands in.
    """
    wanted = (monitor, config.monitor, monitor.replace("val_", ""), config.monitor.replace("val_", ""))
    key = next((k for k in wanted if k in record), "loss")
    value = float(record[key])
    if _improved(key, value, state.best_metric):
        state.best_metric, state.best_epoch, state.bad_epochs = value, record["epoch"], 0
        if config.keep == "best":
            state.best_state = {k: v.detach().clone() for k, v in state.model.state_dict().items()}
    else:
        state.bad_epochs += 1
        if config.patience is not None and state.bad_epochs >= config.patience:
            state.stopped_early = True
