"""Resuming a run: interrupted or killed, then resumed, it ends bitwise identical to an uninterrupted run.

In-process tests send SIGINT/SIGTERM to this very process from a training callback (fast); the tests
marked slow run ``imgclf train`` in child processes and kill them (SIGKILL inside an epoch, right after an
epoch's checkpoint, at a random moment; SIGINT/SIGTERM for the real exit codes). Every run uses one CPU
thread, so float summation order is the same in all of them.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import imgclf
from helpers import (
    assert_same_tensors,
    flip_file,
    make_dataset,
    run_cli,
    save_image,
    shape_image,
    tiny_train_config,
)
from imgclf.data.folders import scan_dataset
from imgclf.errors import Interrupted, ResumeError, StorageError, UsageError
from imgclf.fileio.writing import TMP_SUFFIX
from imgclf.training import checkpoint as ckpt
from imgclf.training.loop import Callback
from imgclf.training.pipeline import resume_run, train
from imgclf.training.resume import plan_resume

CONFIG = tiny_train_config(epochs=3, keep="best")  # tiny_dataset: 24 training images, 3 steps per epoch


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(
        tmp_path_factory.mktemp("resume") / "data", {"training": 12, "validation": 4, "testing": 4}
    )


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory):
    """The uninterrupted run: (model path, run dir)."""
    model = tmp_path_factory.mktemp("reference") / "m.imgclf"
    train(dataset, model, CONFIG)
    return model, model.with_name("m-run")


class SignalAt(Callback):
    """Sends ``sig`` to this process ``times`` times after step ``step`` of epoch ``epoch``."""

    def __init__(self, epoch: int, step: int, sig: int = signal.SIGINT, times: int = 1) -> None:
        self.at, self.sig, self.times, self.epoch = (epoch, step), sig, times, 0

    def on_epoch_begin(self, epoch: int, steps: int) -> None:
        self.epoch = epoch

    def on_step_end(self, step: int, steps: int, loss: float | None) -> None:
        if (self.epoch, step) == self.at:
            for _ in range(self.times):
                os.kill(os.getpid(), self.sig)


def assert_same_run(model_a: Path, run_a: Path, model_b: Path, run_b: Path) -> None:
    """Bitwise-equal weights, equal history, equal final checkpoint state (but for run id and clocks)."""
    a, b = imgclf.load(model_a), imgclf.load(model_b)
    assert_same_tensors(a.model.state_dict(), b.model.state_dict())
    assert (
        imgclf.inspect(model_a)["integrity"]["tensors_sha256"]
        == imgclf.inspect(model_b)["integrity"]["tensors_sha256"]
    )
    assert (run_a / "history.json").read_text() == (run_b / "history.json").read_text()
    pa, pb = a.manifest["provenance"], b.manifest["provenance"]
    assert (pa["epoch"], pa["history"], pa["metrics"]) == (pb["epoch"], pb["history"], pb["metrics"])
    last_a, last_b = (ckpt.read_checkpoint(ckpt.list_checkpoints(r)[0]) for r in (run_a, run_b))
    assert last_a.name == last_b.name
    # Python's and NumPy's global generators are never seeded (training does not use them), so two
    # processes start them differently; they are restored exactly (tested in test_checkpoint.py).
    skip = {"run_id", "created", "timings", "rng"}
    assert {k: v for k, v in last_a.state.items() if k not in skip} == {
        k: v for k, v in last_b.state.items() if k not in skip
    }
    assert_same_tensors(last_a.tensors, last_b.tensors)


@pytest.mark.parametrize(
    "epoch, step, expected",
    [(2, 1, "epoch-0002-step-0001"), (1, 2, "epoch-0001-step-0002"), (2, 3, "epoch-0002")],
    ids=["inside-epoch-2", "inside-epoch-1", "last-step-of-epoch-2"],
)
def test_sigint_writes_a_checkpoint_and_resuming_ends_identical(
    epoch, step, expected, dataset, reference, tmp_path
):
    model = tmp_path / "m.imgclf"
    with pytest.raises(Interrupted) as info:
        train(dataset, model, CONFIG, callbacks=[SignalAt(epoch, step)])
    assert info.value.exit_code == 130
    message = str(info.value)
    assert "Ctrl-C" in message and f"{expected}.safetensors" in message
    assert f"resume with: imgclf train --resume {tmp_path / 'm-run'}" in message
    assert not model.exists()  # no model file from an unfinished run
    newest = ckpt.read_checkpoint(ckpt.list_checkpoints(tmp_path / "m-run")[0])
    assert newest.name == f"{expected}.safetensors"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    assert not (tmp_path / "m-run" / "lock").exists()
    result = resume_run(tmp_path / "m-run")
    assert result.model_path == str(model)
    assert_same_run(model, tmp_path / "m-run", *reference)


def test_sigterm_exits_143_with_a_checkpoint(dataset, reference, tmp_path):
    with pytest.raises(Interrupted) as info:
        train(dataset, tmp_path / "m.imgclf", CONFIG, callbacks=[SignalAt(3, 1, signal.SIGTERM)])
    assert info.value.exit_code == 143 and "SIGTERM" in str(info.value)
    assert (
        os.path.basename(ckpt.list_checkpoints(tmp_path / "m-run")[0]) == "epoch-0003-step-0001.safetensors"
    )
    resume_run(tmp_path / "m-run")
    assert_same_run(tmp_path / "m.imgclf", tmp_path / "m-run", *reference)


def test_a_second_ctrl_c_aborts_at_once_leaving_the_last_checkpoint(dataset, reference, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        train(dataset, tmp_path / "m.imgclf", CONFIG, callbacks=[SignalAt(2, 2, times=2)])
    names = [os.path.basename(p) for p in ckpt.list_checkpoints(tmp_path / "m-run")]
    assert names == ["epoch-0001.safetensors"]  # no checkpoint of the aborted epoch, the old one intact
    assert not (tmp_path / "m-run" / "lock").exists()
    resume_run(tmp_path / "m-run")
    assert_same_run(tmp_path / "m.imgclf", tmp_path / "m-run", *reference)


def test_a_second_ctrl_c_during_the_checkpoint_write_leaves_no_partial_file(
    dataset, reference, tmp_path, monkeypatch
):
    real = ckpt.atomic_write_bytes

    def write_then_interrupt(path, data):
        if "step" in os.path.basename(path):  # the interruption's own checkpoint: Ctrl-C again mid-write
            from imgclf.fileio.writing import atomic_open

            with atomic_open(path, "wb") as fh:
                fh.write(data[: len(data) // 2])
                os.kill(os.getpid(), signal.SIGINT)
                fh.write(data[len(data) // 2 :])
            return
        real(path, data)

    monkeypatch.setattr(ckpt, "atomic_write_bytes", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(dataset, tmp_path / "m.imgclf", CONFIG, callbacks=[SignalAt(2, 1)])
    folder = tmp_path / "m-run" / "checkpoints"
    assert sorted(os.listdir(folder)) == ["epoch-0001.safetensors"]  # no temp file, no partial file
    assert not any(name.endswith(TMP_SUFFIX) for name in os.listdir(tmp_path / "m-run"))
    monkeypatch.undo()
    resume_run(tmp_path / "m-run")
    assert_same_run(tmp_path / "m.imgclf", tmp_path / "m-run", *reference)


def test_a_corrupt_newest_checkpoint_falls_back_and_still_ends_identical(dataset, reference, tmp_path):
    with pytest.raises(Interrupted):
        train(dataset, tmp_path / "m.imgclf", CONFIG, callbacks=[SignalAt(3, 2)])
    newest = ckpt.list_checkpoints(tmp_path / "m-run")[0]
    assert newest.endswith("epoch-0003-step-0002.safetensors")
    flip_file(newest, -5, 0xFF)
    notes: list[str] = []
    resume_run(tmp_path / "m-run", log=notes.append)
    assert any("epoch-0003-step-0002.safetensors is unusable" in n for n in notes), notes
    assert any("older checkpoint epoch-0002.safetensors" in n for n in notes), notes
    assert_same_run(tmp_path / "m.imgclf", tmp_path / "m-run", *reference)


def test_a_full_disk_mid_run_costs_one_epoch_at_most(dataset, reference, tmp_path, monkeypatch):
    """ENOSPC while writing epoch 2's checkpoint: exit 5, epoch 1's checkpoint intact, no temp file."""
    import errno

    from imgclf.fileio.writing import atomic_open

    real = ckpt.atomic_write_bytes

    def disk_full_at_epoch_2(path, data):
        if os.path.basename(path) != "epoch-0002.safetensors":
            return real(path, data)
        with atomic_open(path, "wb") as fh:
            fh.write(data[:100])
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "atomic_write_bytes", disk_full_at_epoch_2)
    with pytest.raises(StorageError, match="No space left on device") as info:
        train(dataset, tmp_path / "m.imgclf", CONFIG)
    assert info.value.exit_code == 5 and "free disk space" in str(info.value)
    assert sorted(os.listdir(tmp_path / "m-run" / "checkpoints")) == ["epoch-0001.safetensors"]
    assert not (tmp_path / "m-run" / "lock").exists()
    monkeypatch.undo()
    resume_run(tmp_path / "m-run")
    assert_same_run(tmp_path / "m.imgclf", tmp_path / "m-run", *reference)


def test_the_stable_recipe_interrupted_in_an_epoch_resumes_to_the_identical_file(dataset, tmp_path):
    """The weight average and the averaged weights travel through the checkpoint; keep=last saves them."""
    from imgclf.config import RECIPES

    stable = CONFIG.replace(recipe="stable", **RECIPES["stable"], keep="last")
    reference = tmp_path / "ref" / "m.imgclf"
    reference.parent.mkdir()
    train(dataset, reference, stable)
    model = tmp_path / "m.imgclf"
    with pytest.raises(Interrupted):
        train(dataset, model, stable, callbacks=[SignalAt(2, 1)])
    newest = ckpt.read_checkpoint(ckpt.list_checkpoints(tmp_path / "m-run")[0])
    assert any(k.startswith("ema.") for k in newest.tensors)
    notes: list[str] = []
    ds = scan_dataset(dataset, val_split=stable.val_split, test_split=stable.test_split, seed=stable.seed)
    plan_resume(tmp_path / "m-run", stable.replace(epochs=5), ds, force=False, log=notes.append)
    assert notes == [
        "note: training for 5 epochs instead of 3; the cosine schedule is re-planned over 5 epochs, "
        "so the learning rate jumps where it resumes"
    ]
    resume_run(tmp_path / "m-run")
    assert_same_run(model, tmp_path / "m-run", reference, reference.with_name("m-run"))
    assert imgclf.load(model).manifest["provenance"]["training"]["recipe"] == "stable"


@pytest.fixture
def interrupted(dataset, tmp_path):
    """A private copy of the dataset and a run of it interrupted in epoch 2: (dataset, model, run dir)."""
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    model = tmp_path / "m.imgclf"
    with pytest.raises(Interrupted):
        train(data, model, CONFIG, callbacks=[SignalAt(2, 1)])
    return data, model, tmp_path / "m-run"


def _add_image(folder: Path, name: str) -> None:
    import numpy as np

    save_image(shape_image(folder.name, np.random.default_rng(5)), folder / name, "RGB")


@pytest.mark.parametrize(
    "change, diff",
    [
        (lambda d: _add_image(d / "training" / "ring", "new.png"), "1 file(s) added (training/ring/new.png)"),
        (lambda d: os.unlink(d / "training" / "ring" / "ring_000.png"), "1 file(s) removed"),
        (
            lambda d: shutil.copy(
                d / "training" / "square" / "square_001.png", d / "training/ring/ring_001.png"
            ),
            "1 file(s) changed content (training/ring/ring_001.png)",
        ),
        (lambda d: os.rename(d / "testing" / "ring" / "ring_000.png", d / "testing/square/x.png"), "added"),
    ],
    ids=["added", "removed", "content", "moved"],
)
def test_a_changed_dataset_is_refused_with_a_diff_and_force_overrides(change, diff, interrupted):
    data, model, run_dir = interrupted
    change(data)
    with pytest.raises(ResumeError) as info:
        resume_run(run_dir)
    assert info.value.exit_code == 6
    assert str(info.value).startswith("resume refused: dataset changed:") and diff in str(info.value)
    assert "--force" in str(info.value)
    notes: list[str] = []
    result = resume_run(run_dir, force=True, log=notes.append)
    assert result.epoch == 3 and any("despite changes (--force)" in n for n in notes)


def test_a_changed_class_set_is_refused(interrupted):
    data, _, run_dir = interrupted
    for split in ("training", "validation", "testing"):
        os.rename(data / split / "square", data / split / "squares")
    with pytest.raises(ResumeError, match=r"classes changed: removed \['square'\], added \['squares'\]"):
        resume_run(run_dir)


def test_a_changed_recipe_is_refused_but_operational_settings_may_change(interrupted):
    _, _, run_dir = interrupted
    with pytest.raises(ResumeError, match="recipe changed: lr 0.1 → 0.05, augment.rotation 20.0 → 5.0"):
        resume_run(run_dir, lr=0.05, augment=CONFIG.augment.replace(rotation=5.0))
    with pytest.raises(ResumeError, match=r"recipe changed: arch_args \{widths: \[8, 16\], reg: 0.0001\} → "):
        resume_run(run_dir, arch_args={"widths": [8, 8]})
    with pytest.raises(ResumeError, match="weights do not fit"):  # even --force cannot make them fit
        resume_run(run_dir, arch_args={"widths": [8, 8]}, force=True)
    notes: list[str] = []
    resume_run(run_dir, eval_batch_size=7, channels_last=False, log=notes.append)
    assert any("eval_batch_size 256 → 7" in n and "channels_last True → False" in n for n in notes), notes


def test_more_epochs_continue_the_same_schedule(interrupted, tmp_path):
    _, model, run_dir = interrupted
    with pytest.raises(UsageError, match="below the epochs already trained"):
        resume_run(run_dir, epochs=1)  # epoch 1 is done and epoch 2 started: 2 at least
    notes: list[str] = []
    result = resume_run(run_dir, epochs=5, log=notes.append)
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4, 5]
    assert any("decay stays" in n for n in notes)
    straight = train(
        interrupted[0], tmp_path / "s.imgclf", CONFIG.replace(epochs=5, decay=CONFIG.effective_decay)
    )
    assert straight.history == result.history


def test_cli_resume_needs_only_the_run_folder_and_refuses_changes_with_exit_6(interrupted, reference):
    data, model, run_dir = interrupted
    code, out, err = run_cli("train", "--resume", run_dir, "--lr", "0.01")
    assert code == 6 and out == ""
    assert err.strip().splitlines() == [err.strip()] and "recipe changed: lr 0.1 → 0.01" in err
    code, out, err = run_cli("train", "--resume", run_dir, "--run-dir", data)
    assert code == 2 and "different folders" in err
    code, out, err = run_cli("train", "--resume", run_dir)
    assert code == 0, err
    assert "resuming in epoch 2 after step 1" in err and out.startswith(" " * 5)  # the report on stdout
    assert_same_run(model, run_dir, *reference)
    code, _, err = run_cli("train", "--resume", run_dir.parent / "nowhere")
    assert code == 6 and "does not exist" in err


def test_resume_of_a_finished_run_changes_nothing_and_more_epochs_continue(dataset, tmp_path):
    model, run_dir = tmp_path / "m.imgclf", tmp_path / "m-run"
    train(dataset, model, tiny_train_config(epochs=1))
    files = [model, *(p for p in run_dir.rglob("*") if p.is_file())]
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}
    code, out, err = run_cli("train", "--resume", run_dir)
    assert code == 0 and out == ""
    assert "note: the run in" in err and "is finished (1 of 1 epochs" in err
    assert "--epochs N with N > 1" in err
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files} == before
    with pytest.raises(ResumeError, match="is finished"):
        resume_run(run_dir)
    result = resume_run(run_dir, epochs=2)
    assert [r["epoch"] for r in result.history] == [1, 2]


def test_cli_train_without_dataset_or_resume_is_a_usage_error():
    code, _, err = run_cli("train", "--model", "m.imgclf")
    assert code == 2 and "needs --dataset" in err


def test_cli_help_documents_checkpoints_and_resuming():
    code, text, _ = run_cli("train", "--help")
    assert code == 0
    for flag in ("--resume", "--force", "--run-dir", "--keep", "--monitor", "--patience", "--deterministic"):
        assert flag in text
    assert "imgclf train --resume malaria-run" in text and "130 / 143" in text and "bitwise" in text


# --- real processes, real signals --------------------------------------------------------------------------

CHILD = r"""
import os, sys, time
import torch
torch.set_num_threads(1)
import imgclf.training.interrupts as interrupts
import imgclf.training.display as progress
from imgclf.cli.main import main

kind, _, where = os.environ.get("PAUSE_AT", "").partition(":")


def pause(tag):
    print("PAUSED " + tag, flush=True)
    time.sleep(float(os.environ.get("PAUSE_SECONDS", "3")))


if kind == "step":
    epoch_at, step_at = map(int, where.split(":"))
    begin, end = progress.EpochProgress.on_epoch_begin, progress.EpochProgress.on_step_end

    def on_epoch_begin(self, epoch, steps):
        self.test_epoch = epoch
        begin(self, epoch, steps)

    def on_step_end(self, step, steps, loss):
        end(self, step, steps, loss)
        if (self.test_epoch, step) == (epoch_at, step_at):
            pause(f"epoch {epoch_at} step {step_at}")

    progress.EpochProgress.on_epoch_begin = on_epoch_begin
    progress.EpochProgress.on_step_end = on_step_end
elif kind == "checkpoint":
    write = interrupts.write_checkpoint

    def write_checkpoint(run_dir, state, config, info):
        path = write(run_dir, state, config, info)
        if state.in_epoch is None and state.epoch == int(where):
            pause(os.path.basename(path))
        return path

    interrupts.write_checkpoint = write_checkpoint
elif kind == "slow":  # every step takes PAUSE_SECONDS longer: a wide window for a kill at a random time
    end = progress.EpochProgress.on_step_end

    def on_step_end(self, step, steps, loss):
        end(self, step, steps, loss)
        if not getattr(self, "test_started", False):
            self.test_started = True
            print("PAUSED training", flush=True)
        time.sleep(float(os.environ["PAUSE_SECONDS"]))

    progress.EpochProgress.on_step_end = on_step_end
sys.exit(main(sys.argv[1:]))
"""

TINY = ["--arch", "small_cnn", "--arch-arg", "widths=[8,16]", "--size", "32", "--batch-size", "8"]
TINY += ["--precision", "fp32", "--device", "cpu", "--seed", "1", "--epochs", "3", "--keep", "best"]


def child(args: list, *, pause_at: str = "", send: int | None = None, delay: float = 0.0, seconds: float = 3):
    """Run ``imgclf`` in a child; at its pause point (after ``delay``) send it ``send``.

    Returns:
        (exit status, stdout, stderr).
    """
    env = {**os.environ, "PAUSE_AT": pause_at, "PAUSE_SECONDS": str(seconds)}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    if send is not None:
        line = proc.stdout.readline()
        assert line.startswith("PAUSED"), (line, proc.stderr.read() if proc.poll() is not None else "")
        time.sleep(delay)
        proc.send_signal(send)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


@pytest.fixture(scope="module")
def child_reference(dataset, tmp_path_factory):
    """An uninterrupted run in a child process: (model, run dir)."""
    model = tmp_path_factory.mktemp("child-reference") / "m.imgclf"
    code, _, err = child(["train", "--dataset", dataset, "--model", model, *TINY])
    assert code == 0, err
    return model, model.with_name("m-run")


def _resume_in_child(run_dir: Path) -> str:
    code, out, err = child(["train", "--resume", run_dir])
    assert code == 0, err
    assert "precision" in out  # the classification report
    return err


@pytest.mark.slow
@pytest.mark.parametrize(
    "pause_at, newest",
    [
        ("step:2:2", "epoch-0001.safetensors"),  # SIGKILL inside epoch 2: back to epoch 1's checkpoint
        ("checkpoint:2", "epoch-0002.safetensors"),  # SIGKILL right after epoch 2's checkpoint
    ],
    ids=["inside-an-epoch", "at-an-epoch-boundary"],
)
def test_sigkill_then_resume_ends_bitwise_identical(pause_at, newest, dataset, child_reference, tmp_path):
    model = tmp_path / "m.imgclf"
    code, _, _ = child(["train", "--dataset", dataset, "--model", model, *TINY], pause_at=pause_at, send=9)
    assert code == -signal.SIGKILL
    assert os.path.basename(ckpt.list_checkpoints(tmp_path / "m-run")[0]) == newest
    assert json.loads((tmp_path / "m-run" / "lock").read_text())["pid"]  # left behind by the killed process
    err = _resume_in_child(tmp_path / "m-run")
    assert "stale lock" in err
    assert_same_run(model, tmp_path / "m-run", *child_reference)


@pytest.mark.slow
def test_sigkill_at_a_random_moment_then_resume_ends_bitwise_identical(dataset, child_reference, tmp_path):
    seed = random.randrange(10**6)
    delay = random.Random(seed).uniform(0.0, 1.0)  # 9 steps of >= 0.12 s follow the first step's end
    model = tmp_path / "m.imgclf"
    args = ["train", "--dataset", dataset, "--model", model, *TINY]
    code, _, _ = child(args, pause_at="slow", send=9, delay=delay, seconds=0.12)
    if code == 0:
        pytest.skip(f"the child finished before the kill (seed {seed}, delay {delay:.2f} s)")
    if not ckpt.list_checkpoints(tmp_path / "m-run"):  # killed in epoch 1: nothing to resume, start over
        assert "nothing to resume" in child(["train", "--resume", tmp_path / "m-run"])[2]
        code, _, err = child(args + ["--force"])
        assert code == 0, err
    else:
        _resume_in_child(tmp_path / "m-run")
    try:
        assert_same_run(model, tmp_path / "m-run", *child_reference)
    except AssertionError as exc:  # say which kill to replay
        raise AssertionError(f"seed {seed}, delay {delay:.2f} s: {exc}") from exc


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signalled_process_exits_130_or_143_with_a_valid_checkpoint(
    sig, code, dataset, child_reference, tmp_path
):
    model = tmp_path / "m.imgclf"
    rc, out, err = child(
        ["train", "--dataset", dataset, "--model", model, *TINY], pause_at="step:2:1", send=sig, seconds=2
    )
    assert rc == code, err
    assert out == ""
    last = err.strip().splitlines()[-1]
    assert last.startswith("imgclf: error: interrupted by") and "epoch-0002-step-0001.safetensors" in last
    assert last.endswith(f"resume with: imgclf train --resume {tmp_path / 'm-run'}")
    newest = ckpt.read_checkpoint(ckpt.list_checkpoints(tmp_path / "m-run")[0])  # validates
    assert (newest.epoch, newest.epoch_step) == (1, 1)
    assert not (tmp_path / "m-run" / "lock").exists()
    _resume_in_child(tmp_path / "m-run")
    assert_same_run(model, tmp_path / "m-run", *child_reference)
