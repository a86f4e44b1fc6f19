"""Fine-tuning: head-only epochs leave the backbone (and its batch-norm statistics) exactly as loaded, the
backbone then trains at a fraction of the head's rate on a one-cycle schedule, and a run interrupted or
killed on either side of the freeze/unfreeze boundary resumes to the identical file."""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path

import pytest
import torch
from test_resume import SignalAt, assert_same_run, child

import imgclf
from helpers import make_classifier, make_dataset, tiny_train_config
from imgclf import modelfile
from imgclf.errors import Interrupted
from imgclf.models.timm_backbone import head_names
from imgclf.training import checkpoint as ckpt
from imgclf.training.finetune import is_frozen, param_groups
from imgclf.training.pipeline import resume_run, train
from imgclf.training.schedule import lr_at


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(
        tmp_path_factory.mktemp("ft") / "data", {"training": 12, "validation": 4, "testing": 4}
    )


@pytest.fixture(scope="module")
def parent(tmp_path_factory) -> Path:
    """An imgclf model of other classes (x, y, z) to start from: random weights, non-trivial BN stats."""
    path = tmp_path_factory.mktemp("parent") / "parent.imgclf"
    modelfile.save(make_classifier(("x", "y", "z"), args={"widths": [8, 16]}, size=32, seed=3), path)
    return path


def _config(parent: Path, **changes):
    return tiny_train_config(**{"init_from": str(parent), "epochs": 3, "schedule": "one_cycle", **changes})


def _backbone(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    head = head_names(model)
    return {k: v for k, v in model.state_dict().items() if k not in head}


def test_defaults_freeze_one_epoch_only_when_starting_from_weights():
    assert tiny_train_config().effective_freeze_epochs == 0
    assert tiny_train_config(weights="w.pth").effective_freeze_epochs == 1
    assert tiny_train_config(init_from="p.imgclf", freeze_epochs=0).effective_freeze_epochs == 0
    config = tiny_train_config(weights="w.pth", freeze_epochs=2)
    assert [is_frozen(config, e) for e in (1, 2, 3)] == [True, True, False]


def test_the_backbone_gets_its_fraction_of_the_learning_rate():
    model = make_classifier(args={"widths": [8, 16]}).model
    groups = param_groups(model, tiny_train_config(weights="w.pth", backbone_lr=0.25))
    head = {id(model.head.weight), id(model.head.bias)}
    for g in groups:
        assert g["lr_scale"] == (1.0 if all(id(p) in head for p in g["params"]) else 0.25)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert {g["lr_scale"] for g in param_groups(model, tiny_train_config())} == {1.0}


def test_one_cycle_runs_one_cycle_per_phase():
    config = tiny_train_config(epochs=3, schedule="one_cycle", lr=0.1, weights="w.pth")
    steps = 4  # 4 steps per epoch: the frozen phase is steps 0-3, the second phase steps 4-11
    lrs = [lr_at(config, s, steps) for s in range(12)]
    assert lrs[0] == pytest.approx(0.1 / 25) and lrs[4] == pytest.approx(0.1 / 25)  # each phase starts low
    assert max(lrs[:4]) == pytest.approx(0.1) and max(lrs[4:]) == pytest.approx(0.1)
    assert lrs[3] < lrs[1] and lrs[11] < lrs[6]
    plain = tiny_train_config(epochs=3, schedule="one_cycle", lr=0.1)
    assert [lr_at(plain, s, steps) for s in range(12)].count(pytest.approx(0.1)) == 1  # one cycle in all


def test_head_only_epochs_leave_the_backbone_and_its_statistics_as_loaded(dataset, parent, tmp_path):
    result = train(dataset, tmp_path / "m.imgclf", _config(parent, epochs=1, keep="last"))
    start = imgclf.load(parent).model
    after = _backbone(result.classifier.model)
    assert after.keys() == _backbone(start).keys()
    for k, v in _backbone(start).items():
        assert torch.equal(after[k], v), k  # weights, running means/variances, batch counters
    assert result.classifier.model.head.out_features == 2  # a new head for ring/square
    assert not torch.equal(result.classifier.model.head.weight, imgclf.load(parent).model.head.weight[:2])


def test_the_backbone_trains_after_the_frozen_epochs_and_the_file_records_the_start(
    dataset, parent, tmp_path
):
    result = train(dataset, tmp_path / "m.imgclf", _config(parent, epochs=2, keep="last"))
    start = _backbone(imgclf.load(parent).model)
    after = _backbone(result.classifier.model)
    assert any(not torch.equal(after[k], start[k]) for k in start)
    prov = imgclf.load(tmp_path / "m.imgclf").manifest["provenance"]
    started = prov["started_from"]
    assert started["kind"] == "init_from" and started["head"] == "new"
    assert started["parent_tensors_sha256"] == imgclf.inspect(parent)["integrity"]["tensors_sha256"]
    assert started["parent_classes"] == ["x", "y", "z"] and len(started["sha256"]) == 64
    assert prov["training"]["init_from"] == str(parent) and prov["training"]["schedule"] == "one_cycle"
    run = json.loads((tmp_path / "m-run" / "run.json").read_text())
    assert run["started_from"] == started


@pytest.mark.parametrize("epoch, step", [(1, 1), (2, 1)], ids=["in-the-frozen-epoch", "after-unfreezing"])
def test_an_interrupted_fine_tune_resumes_bitwise_identical(dataset, parent, tmp_path, epoch, step):
    config = _config(parent)
    ref = tmp_path / "ref" / "m.imgclf"
    ref.parent.mkdir()
    train(dataset, ref, config)
    model = tmp_path / "m.imgclf"
    with pytest.raises(Interrupted):
        train(dataset, model, config, callbacks=[SignalAt(epoch, step)])
    resume_run(tmp_path / "m-run")
    assert_same_run(model, tmp_path / "m-run", ref, ref.with_name("m-run"))
    assert imgclf.load(model).manifest["provenance"]["started_from"]["head"] == "new"


FT = ["--arch-arg", "widths=[8,16]", "--size", "32", "--batch-size", "8", "--precision", "fp32"]
FT += ["--device", "cpu", "--seed", "1", "--epochs", "3", "--keep", "best", "--schedule", "one_cycle"]


@pytest.mark.slow
def test_a_fine_tune_killed_at_a_random_moment_resumes_bitwise_identical(dataset, parent, tmp_path):
    """The kill-at-random resume test on the fine-tuning path (--init-from, a frozen epoch, one-cycle)."""
    base = ["train", "--dataset", dataset, "--init-from", parent, *FT]
    ref = tmp_path / "ref" / "m.imgclf"
    ref.parent.mkdir()
    code, _, err = child([*base, "--model", ref])
    assert code == 0, err
    seed = random.randrange(10**6)
    delay = random.Random(seed).uniform(0.0, 1.0)
    model = tmp_path / "m.imgclf"
    code, _, _ = child(
        [*base, "--model", model], pause_at="slow", send=signal.SIGKILL, delay=delay, seconds=0.12
    )
    if code == 0:
        pytest.skip(f"the child finished before the kill (seed {seed}, delay {delay:.2f} s)")
    if not ckpt.list_checkpoints(tmp_path / "m-run"):
        code, _, err = child([*base, "--model", model, "--force"])
    else:
        code, _, err = child(["train", "--resume", tmp_path / "m-run"])
    assert code == 0, err
    try:
        assert_same_run(model, tmp_path / "m-run", ref, ref.with_name("m-run"))
    except AssertionError as exc:
        raise AssertionError(f"seed {seed}, delay {delay:.2f} s: {exc}") from exc


def test_a_linear_probe_trains_the_head_as_frozen_training_without_augmentation_does(
    dataset, parent, tmp_path
):
    from imgclf.config import AugmentSpec
    from imgclf.training.embeddings import embeddings_folder

    frozen = _config(parent, epochs=2, freeze_epochs=2, keep="last", augment=AugmentSpec(enabled=False))
    slow = train(dataset, tmp_path / "a.imgclf", frozen)
    probe = train(dataset, tmp_path / "b.imgclf", frozen.replace(linear_probe=True), cache_dir=tmp_path / "c")
    assert len(list(embeddings_folder(tmp_path / "c").glob("*.npy"))) == 1  # computed once for the run
    a, b = slow.classifier.model.state_dict(), probe.classifier.model.state_dict()
    start = _backbone(imgclf.load(parent).model)
    for k in start:
        assert torch.equal(b[k], start[k]), k  # the backbone is as loaded
    for k in ("head.weight", "head.bias"):
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-6)
    for x, y in zip(slow.history, probe.history, strict=True):
        assert x["loss"] == pytest.approx(y["loss"], rel=1e-5) and x["val_loss"] == pytest.approx(
            y["val_loss"]
        )


@pytest.mark.parametrize("probe", [False, True], ids=["frozen-epochs", "linear-probe"])
def test_a_weight_average_keeps_a_frozen_backbones_batch_norm_statistics(dataset, parent, tmp_path, probe):
    """EMA's batch-norm recomputation leaves the layers no epoch has trained (they are as loaded)."""
    from imgclf.config import AugmentSpec

    config = _config(
        parent, epochs=2, freeze_epochs=2, ema=0.9, keep="last", augment=AugmentSpec(enabled=False)
    )
    saved = train(dataset, tmp_path / "m.imgclf", config.replace(linear_probe=probe)).classifier.model
    start = _backbone(imgclf.load(parent).model)
    assert any("running_mean" in k for k in start)
    for k, v in _backbone(saved).items():
        assert torch.equal(v, start[k]), k


def test_a_weight_average_recomputes_the_batch_norm_statistics_once_the_backbone_trains(
    dataset, parent, tmp_path
):
    config = _config(parent, epochs=2, freeze_epochs=1, ema=0.9, keep="last")
    saved = _backbone(train(dataset, tmp_path / "m.imgclf", config).classifier.model)
    start = _backbone(imgclf.load(parent).model)
    assert any(not torch.equal(saved[k], start[k]) for k in start if "running_mean" in k)


def test_a_linear_probe_is_refused_with_several_processes():
    from types import SimpleNamespace

    from imgclf.errors import UsageError
    from imgclf.training.loop import _probe

    with pytest.raises(UsageError, match="--linear-probe runs in one process"):
        _probe(tiny_train_config(linear_probe=True), None, None, torch.device("cpu"), SimpleNamespace(size=2))


@pytest.mark.slow
def test_head_only_epochs_under_two_processes_leave_the_backbone_as_loaded(dataset, parent, tmp_path):
    """Under DDP the backbone keeps requiring gradients (its buckets are fixed): they are dropped instead."""
    import os
    import subprocess
    import sys

    model = tmp_path / "m.imgclf"
    args = ["-m", "imgclf", "train", "--dataset", dataset, "--model", model, "--init-from", parent, *FT]
    args = [str(a) for a in args] + [
        "--epochs",
        "1",
        "--keep",
        "last",
        "--nproc",
        "2",
        "--dist-timeout",
        "120",
    ]
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join([str(Path(imgclf.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]),
    )
    proc = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = imgclf.load(model)
    assert saved.manifest["provenance"]["distributed"]["world_size"] == 2
    after, start = _backbone(saved.model), _backbone(imgclf.load(parent).model)
    for k, v in start.items():
        assert torch.equal(after[k], v), k


def test_head_only_epochs_need_a_linear_head():
    from imgclf.errors import UsageError
    from imgclf.training.finetune import set_phase

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    with pytest.raises(UsageError, match="head-only epochs need a model with a linear head"):
        set_phase(model, tiny_train_config(weights="w.pth"), 1)
    assert set_phase(model, tiny_train_config(), 1) == []  # nothing frozen: nothing asked of the model


def test_an_interrupted_timm_model_resumes_bitwise_identical(dataset, tmp_path):
    """Issue 24's resume check for a timm backbone (timm's own tiny test ResNet at 32x32)."""
    from imgclf.models import timm_backbone

    timm_backbone.require_timm()
    config = tiny_train_config(arch="timm:test_resnet", arch_args={}, epochs=2)
    ref = tmp_path / "ref" / "m.imgclf"
    ref.parent.mkdir()
    train(dataset, ref, config)
    model = tmp_path / "m.imgclf"
    with pytest.raises(Interrupted):
        train(dataset, model, config, callbacks=[SignalAt(2, 1)])
    resume_run(tmp_path / "m-run")
    assert_same_run(model, tmp_path / "m-run", ref, ref.with_name("m-run"))
    assert imgclf.load(model).arch == "timm:test_resnet"
