"""The run record: one typed account of a training run, written three ways from the same facts.

``run.json`` in the run folder (what ``--resume`` continues from), the run-level facts in every checkpoint
and the provenance in the model file all come from one :class:`RunRecord`, so they cannot disagree. The
JSON keys are the ones earlier versions wrote: files written before still load and resume. Everything is
names and JSON (registry names, config dicts), never module paths.

Usage::

    record = RunRecord.start(ds, decoded, files, fingerprint, config, model_path="m.imgclf", plot=None,
                             skip_bad=False, probes_from=0, device=device)
    write_record(run_dir, record.run_json())                  # imgclf.training.runfolder
    fit_with_checkpoints(..., info=record.checkpoint_info())
    classifier.manifest["provenance"] = record.provenance(state, epoch=epoch, metrics=metrics)
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from typing import Any

import torch

from imgclf._version import versions
from imgclf.config import TrainConfig
from imgclf.data.decode import DecodedSplit
from imgclf.data.folders import Dataset
from imgclf.models import registry
from imgclf.training.state import TrainState


@dataclass
class RunRecord:
    """The facts of one training run.

    Attributes:
        run_id: Random hex id, kept across resumes (checkpoints of another run are ignored).
        dataset: Absolute path of the dataset folder (or of its labels CSV).
        model: Absolute path of the model file.
        plot: The plot path the user asked for (``None``: the run folder's default).
        skip_bad: Whether undecodable files were skipped.
        probes_from: Validation images stored as extra probes.
        config: The recipe the run trains with.
        class_names: In index order.
        layout: The dataset's layout (``split`` or ``flat``).
        data_fingerprint: Digest of the file table (names, labels, content).
        files: The file table per split (see :func:`imgclf.data.identity.file_table`).
        counts: Images per split and class.
        skipped: Files skipped as undecodable.
        device: Where training runs, e.g. ``cpu``.
        resumed_from: The checkpoint's file name when the run was resumed.
        distributed: A multi-process run's world size, backend, global and per-rank batch, ``sync_bn``
            (:meth:`imgclf.training.distributed.Group.facts`); ``None`` for one process.
        versions: Versions of everything that can change a model's outputs.
        started_from: What the first weights came from (``--weights``/``--init-from``: path, SHA-256, tensors
            loaded and skipped; :func:`imgclf.training.pretrained.start_weights`), else ``None``.
    """

    run_id: str
    dataset: str
    model: str
    plot: str | None
    skip_bad: bool
    probes_from: int
    config: TrainConfig
    class_names: list[str]
    layout: str
    data_fingerprint: str
    files: dict[str, list]
    counts: dict[str, dict[str, int]]
    skipped: int
    device: str
    resumed_from: str | None = None
    distributed: dict[str, Any] | None = None
    versions: dict[str, str] = field(default_factory=versions)
    started_from: dict[str, Any] | None = None

    @classmethod
    def start(
        cls,
        ds: Dataset,
        decoded: dict[str, DecodedSplit],
        files: dict[str, list],
        fingerprint: str,
        config: TrainConfig,
        *,
        model_path: str,
        plot: str | None,
        skip_bad: bool,
        probes_from: int,
        device: torch.device,
        resumed: tuple[str, str] | None = None,
        distributed: dict[str, Any] | None = None,
        started_from: dict[str, Any] | None = None,
    ) -> RunRecord:
        """The record of a run about to train; ``resumed`` is ``(run_id, checkpoint name)`` on resume."""
        names = ds.class_names
        return cls(
            run_id=resumed[0] if resumed else secrets.token_hex(8),
            dataset=os.path.abspath(ds.labels_file or ds.root),
            model=os.path.abspath(model_path),
            plot=plot,
            skip_bad=skip_bad,
            probes_from=probes_from,
            config=config,
            class_names=list(names),
            layout=ds.layout,
            data_fingerprint=fingerprint,
            files=files,
            counts={split: _per_class(d, names) for split, d in decoded.items()},
            skipped=sum(len(d.skipped) for d in decoded.values()),
            device=str(device),
            resumed_from=resumed[1] if resumed else None,
            distributed=distributed,
            started_from=started_from,
        )

    def run_json(self, status: str = "training") -> dict[str, Any]:
        """``run.json``'s content (``status``: ``training`` or ``finished``)."""
        return {
            "run_id": self.run_id,
            "status": status,
            "dataset": self.dataset,
            "model": self.model,
            "plot": self.plot,
            "skip_bad": self.skip_bad,
            "probes_from": self.probes_from,
            "config": self.config.to_dict(),
            "class_names": self.class_names,
            "data_fingerprint": self.data_fingerprint,
            "versions": self.versions,
            "files": self.files,
            **({"started_from": self.started_from} if self.started_from else {}),
        }

    def checkpoint_info(self) -> dict[str, Any]:
        """The run-level facts every checkpoint stores beside the training state."""
        return {
            "run_id": self.run_id,
            "class_names": self.class_names,
            "architecture": {
                "name": self.config.arch,
                "args": registry.resolve_args(self.config.arch, self.config.arch_args),
            },
            "data_fingerprint": self.data_fingerprint,
            "device": self.device,
            "distributed": self.distributed or self._one_process(),
        }

    def _one_process(self) -> dict[str, Any]:
        batch = self.config.batch_size
        return {
            "world_size": 1,
            "backend": None,
            "global_batch": batch,
            "per_rank_batch": batch,
            "sync_bn": False,
        }

    def provenance(self, state: TrainState, *, epoch: int, metrics: dict[str, Any]) -> dict[str, Any]:
        """The model file's ``provenance``: how the saved weights (those of ``epoch``) came about."""
        return {
            "training": self.config.to_dict(),
            "epoch": epoch,
            "epochs_run": state.epoch,
            "seed": self.config.seed,
            "device": self.device,
            "stopped_early": state.stopped_early,
            "metrics": metrics,
            "deterministic": self.config.deterministic,
            "resumed_from": self.resumed_from,
            "distributed": self.distributed or self._one_process(),
            "data": {
                "fingerprint": self.data_fingerprint,
                "layout": self.layout,
                "counts": self.counts,
                "skipped": self.skipped,
            },
            "history": state.history,
            **({"started_from": self.started_from} if self.started_from else {}),
        }


def _per_class(split: DecodedSplit, class_names: list[str]) -> dict[str, int]:
    if split.labels.ndim == 2:  # multi-label: images carrying each label
        return {name: int(split.labels[:, i].sum()) for i, name in enumerate(class_names)}
    return {name: int((split.labels == i).sum()) for i, name in enumerate(class_names)}
