"""Training under torchrun on the CPU (gloo, 2 processes, tiny data): the same maths as one process on the
same global batch (batch norm included: it normalises with the global batch), epoch by epoch, exact
sharded metrics, a rank that never joins, and a SIGKILLed worker restarted by torchrun that ends bitwise
equal to an uninterrupted run.

Every multi-process run is a subprocess bounded by a timeout (``dist_worker.py`` beside this file).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import dist_worker  # noqa: F401 - registers the "nobn" test architecture in this process too
import pytest
import torch
from safetensors import safe_open

from helpers import make_dataset, run_cli
from imgclf.errors import UsageError
from imgclf.training.distributed import DistOptions, Group, _shard, start_group
from imgclf.world import World

WORKER = Path(__file__).with_name("dist_worker.py")
SRC = Path(__file__).resolve().parents[2] / "src"
# Two processes each sum half a batch's gradients (and batch-norm statistics) and DDP averages the
# halves, where one process sums the whole batch: the same numbers added in another order, a few float32
# ulps per step, carried on by momentum. The tolerances leave room for BLAS differences between machines
# while still catching a wrong split or per-rank batch norm, which move weights and validation losses by
# orders of magnitude more (the measured gaps are in docs/distributed.md).
ATOL = 1e-5
VAL_LOSS_TOL = 1e-5
EPOCHS = 3


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))


def _run(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=_env(), timeout=timeout, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _torchrun(*args: str, restarts: int = 0, timeout: float = 240) -> subprocess.CompletedProcess:
    return _run(
        [
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            f"--max-restarts={restarts}",
            str(WORKER),
            *args,
        ],
        timeout=timeout,
    )


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iteration


def _odd_dataset(root: Path) -> Path:
    """20 training images; 5 validation and 5 testing images (do not divide by 2 ranks)."""
    data = make_dataset(root, {"training": 10, "validation": 3, "testing": 3})
    (data / "validation" / "ring" / "ring_002.png").unlink()
    (data / "testing" / "square" / "square_002.png").unlink()
    return data


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory):
    """The same recipe (small_cnn, with batch norm) trained by 1 and by 2 processes."""
    base = tmp_path_factory.mktemp("dist")
    data = _odd_dataset(base / "data")
    recipe = ["--arch", "small_cnn", "--epochs", str(EPOCHS)]
    _run([str(WORKER), str(data), str(base / "one.imgclf"), *recipe])
    _torchrun(str(data), str(base / "two.imgclf"), *recipe)
    return base, data


def test_two_processes_train_as_one_on_the_global_batch(one_and_two):
    base, _ = one_and_two
    one, two = _tensors(base / "one.imgclf"), _tensors(base / "two.imgclf")
    weights = [k for k in one if k.startswith("model.")]
    assert weights and set(weights) <= set(two)
    for k in weights:
        torch.testing.assert_close(two[k], one[k], rtol=0, atol=ATOL, msg=k)
    h1 = json.loads((base / "one-run" / "history.json").read_text())
    h2 = json.loads((base / "two-run" / "history.json").read_text())
    for a, b in zip(h1, h2, strict=True):
        assert a["lr"] == b["lr"] and a["epoch"] == b["epoch"]
        assert round(a["accuracy"] * 20) == round(b["accuracy"] * 20)  # the epoch's 20 images, counted
        assert round(a["val_accuracy"] * 5) == round(b["val_accuracy"] * 5)
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)


def test_two_processes_validate_as_one_epoch_by_epoch(one_and_two):
    """Issue 30: a 2-process run judged only by its final accuracy hid a validation loss of 1e3 (batch
    norm normalised each rank's half batch, so the run was another run). Every epoch's validation loss
    must be the 1-process one."""
    base, _ = one_and_two
    h1 = json.loads((base / "one-run" / "history.json").read_text())
    h2 = json.loads((base / "two-run" / "history.json").read_text())
    assert len(h1) == len(h2) == EPOCHS
    for a, b in zip(h1, h2, strict=True):
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=0, abs=VAL_LOSS_TOL), (a, b)


def test_sharded_metrics_are_exact_when_the_split_does_not_divide(one_and_two):
    import imgclf
    from imgclf.dataset_evaluation import evaluate_dataset

    base, data = one_and_two
    report = json.loads((base / "two-run" / "report.json").read_text())
    single = evaluate_dataset(imgclf.load(base / "two.imgclf"), data, split="testing", use_cache=False)
    assert report == json.loads(json.dumps(single.to_dict()))  # same weights, one process: same report
    assert sum(map(sum, report["confusion_matrix"])) == 5  # every testing image counted exactly once


def test_the_model_file_and_checkpoints_record_the_world(one_and_two):
    from imgclf.training.checkpoint import list_checkpoints, read_checkpoint

    base, _ = one_and_two
    manifest = imgclf_manifest(base / "two.imgclf")
    facts = manifest["provenance"]["distributed"]
    assert (facts["world_size"], facts["backend"], facts["per_rank_batch"], facts["sync_bn"]) == (
        2,
        "gloo",
        4,
        True,
    )
    assert imgclf_manifest(base / "one.imgclf")["provenance"]["distributed"]["world_size"] == 1
    newest = read_checkpoint(list_checkpoints(base / "two-run")[0])
    assert newest.state["distributed"]["world_size"] == 2
    leftovers = [p.name for p in (base / "two-run").rglob("*") if ".tmp" in p.name]
    assert leftovers == []  # rank 0 wrote every file atomically; the others wrote none


def test_inspect_shows_the_world_a_model_was_trained_by(one_and_two):
    """Issue 30: the world size was in the provenance, but neither inspect nor inspect --json showed it."""
    base, _ = one_and_two
    code, out, _ = run_cli("inspect", base / "two.imgclf")
    assert code == 0
    line = "processes       2 (gloo), global batch 8 = 4 per rank, batch norm over the global batch"
    assert line in out.splitlines()
    code, out, _ = run_cli("inspect", base / "two.imgclf", "--json")
    facts = json.loads(out)["distributed"]
    assert {k: facts[k] for k in ("world_size", "backend", "global_batch", "per_rank_batch", "sync_bn")} == {
        "world_size": 2,
        "backend": "gloo",
        "global_batch": 8,
        "per_rank_batch": 4,
        "sync_bn": True,
    }
    code, out, _ = run_cli("inspect", base / "one.imgclf")
    assert "processes       1 (batch 8)" in out.splitlines()
    code, out, _ = run_cli("inspect", base / "one.imgclf", "--json")
    assert json.loads(out)["distributed"]["world_size"] == 1


def imgclf_manifest(path: Path) -> dict:
    import imgclf

    return imgclf.load(path).manifest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_rank_that_never_joins_ends_the_run_within_the_timeout(tmp_path):
    data = make_dataset(tmp_path / "data", {"training": 2, "validation": 1, "testing": 1})
    env = dict(_env(), RANK="0", WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()))
    model = tmp_path / "m.imgclf"
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "imgclf", "train", "--dataset", str(data), "--model", str(model)]
        + ["--arch", "small_cnn", "--size", "16", "--device", "cpu", "--dist-timeout", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 10, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("imgclf: error: rank 1 did not join within --dist-timeout 2 s"), last
    assert time.monotonic() - started < 60  # 2 s of waiting plus start-up, never a hang
    assert not model.exists() and not (tmp_path / "m-run").exists()


@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_ends_bitwise_equal(tmp_path):
    """SIGKILL rank 0 after step 1 of epoch 2 (of 2); torchrun restarts the group once, it resumes from
    epoch 1's checkpoint, and the model equals an uninterrupted 2-process run bit for bit (batch norm
    included: its statistics are those of the global batch, equal on every rank)."""
    data = _odd_dataset(tmp_path / "data")
    _torchrun(str(data), str(tmp_path / "whole.imgclf"), "--arch", "small_cnn")
    killed = _torchrun(
        str(data), str(tmp_path / "killed.imgclf"), "--arch", "small_cnn", "--kill-at", "2:1", restarts=1
    )
    assert "exitcode: -9" in killed.stderr  # the first attempt really was killed
    whole, again = _tensors(tmp_path / "whole.imgclf"), _tensors(tmp_path / "killed.imgclf")
    assert set(whole) == set(again)
    assert all(torch.equal(whole[k], again[k]) for k in whole)
    h1 = json.loads((tmp_path / "whole-run" / "history.json").read_text())
    h2 = json.loads((tmp_path / "killed-run" / "history.json").read_text())
    assert h1 == h2


def test_the_global_batch_must_divide_by_the_world():
    group = Group(World(rank=1, size=3), "gloo", DistOptions(), store=None, device=torch.device("cpu"))
    assert group.check_batch(12) == 4
    assert group.local(torch.arange(12)).tolist() == [4, 5, 6, 7]
    with pytest.raises(UsageError, match="the global batch 32 does not divide by the 3 processes"):
        group.check_batch(32)


@pytest.mark.parametrize("n", [0, 1, 5, 7, 8])
def test_shards_cover_every_item_once_without_padding(n):
    parts = [list(range(n))[_shard(n, 3, r)] for r in range(3)]
    assert sum(parts, []) == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_one_process_has_no_group():
    assert start_group(World(), torch.device("cpu"), DistOptions()) is None


def test_nproc_starts_torchrun_with_the_same_command():
    from imgclf.cli.torchrun import launcher_command

    argv = ["train", "--dataset", "d", "--nproc", "2", "--model", "m", "--max-restarts=3"]
    cmd = launcher_command(argv, 2, 3)
    assert cmd[0] == sys.executable
    assert cmd[1:] == [
        "-m",
        "imgclf.cli.torchrun",  # torch's launcher, run by us (see tests/cli/test_torchrun.py)
        "--standalone",
        "--nproc-per-node=2",
        "--max-restarts=3",
        "-m",
        "imgclf",
        "train",
        "--dataset",
        "d",
        "--model",
        "m",
    ]


def test_bad_nproc_is_a_usage_error():
    code, _, err = run_cli("train", "--dataset", "d", "--model", "m", "--nproc", "0")
    assert code == 2 and "expected 1 or more, got 0" in err


def test_a_torchrun_restart_resumes_only_its_own_launch(tmp_path, monkeypatch):
    from imgclf.training.distributed import restart_resume

    notes: list[str] = []
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    assert restart_resume(str(tmp_path), False, False, notes.append) == (False, False)  # first attempt
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    # Killed before the first checkpoint: start over in its own run folder (force), say so.
    assert restart_resume(str(tmp_path), False, False, notes.append) == (False, True)
    assert notes == ["note: torchrun restart 1: no checkpoint yet, starting the run over"]


def test_resuming_with_another_world_size_warns():
    from imgclf.training.distributed import note_world_change

    notes: list[str] = []
    group = Group(World(rank=0, size=2), "gloo", DistOptions(), store=None, device=torch.device("cpu"))
    note_world_change({"distributed": {"world_size": 2}}, group, notes.append)
    assert notes == []
    note_world_change({"distributed": {"world_size": 2}}, None, notes.append)
    note_world_change({}, group, notes.append)  # a checkpoint from before: one process
    assert [n.split(":")[0] for n in notes] == ["warning", "warning"]
    assert "written by a run of 2 process(es), this one has 1" in notes[0]
    assert "written by a run of 1 process(es), this one has 2" in notes[1]


@pytest.mark.slow
def test_train_nproc_runs_two_workers_and_rank_0_alone_reports(tmp_path):
    data = _odd_dataset(tmp_path / "data")
    model = tmp_path / "m.imgclf"
    proc = _run(
        ["-m", "imgclf", "train", "--dataset", str(data), "--model", str(model), "--nproc", "2"]
        + ["--arch", "small_cnn", "--arch-arg", "widths=[4,8]", "--size", "16", "--epochs", "1"]
        + ["--batch-size", "8", "--device", "cpu", "--precision", "fp32", "--dist-timeout", "60"]
    )
    assert proc.stdout.count("macro avg") == 1  # one classification report: rank 0's
    assert proc.stderr.count("wrote model:") == 1
    assert imgclf_manifest(model)["provenance"]["distributed"]["world_size"] == 2


@pytest.mark.slow
def test_the_seed_resnet_on_two_processes_reaches_the_one_process_accuracy(tmp_path):
    # The issue asks for the demo data; the seed ResNet needs ~20 epochs at 64x64 there (18 min of CPU
    # for both runs on 2 cores: measured by hand, 0.97 vs 0.97, see docs/distributed.md). The synthetic
    # shapes are learned in 6 epochs at 32x32, so the same comparison fits the suite. It compares only
    # the final accuracy of the epoch --keep best picked, on easy data, so it did not catch issue 30
    # (per-rank batch norm, a validation loss of 1e3 in other epochs): the epoch-by-epoch comparison
    # (test_two_processes_validate_as_one_epoch_by_epoch) does.
    data = make_dataset(tmp_path / "data", {"training": 40, "validation": 8, "testing": 20})
    flags = ["--size", "32", "--epochs", "6", "--batch-size", "16", "--device", "cpu", "--precision", "fp32"]
    accuracy = {}
    for nproc in (1, 2):
        model = tmp_path / f"m{nproc}.imgclf"
        extra = ["--nproc", "2", "--dist-timeout", "120"] if nproc == 2 else []
        command = ["-m", "imgclf", "train", "--dataset", str(data), "--model", str(model), "--no-cache"]
        _run(command + flags + extra)
        report = json.loads((tmp_path / f"m{nproc}-run" / "report.json").read_text())
        accuracy[nproc] = report["report"]["accuracy"]
    assert accuracy[1] >= 0.85, accuracy  # the recipe learned the shapes at all
    assert accuracy[2] >= accuracy[1] - 0.05, accuracy  # two of 40 test images' leeway: BN sees half batches


BN_WORKER = Path(__file__).with_name("bn_worker.py")


def test_evaluation_after_the_epoch_end_sync_equals_one_process(tmp_path):
    """Issue 30: after the epoch-end synchronisation, the model every rank holds (and rank 0 saves)
    must judge in evaluation mode as one process trained on the same global batches does. The two
    ranks' halves differ in brightness: per-rank batch norm (normalising, and estimating the running
    variance, from each half) is off by far more than float noise."""
    import bn_worker

    out = tmp_path / "two.safetensors"
    _run(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(BN_WORKER), str(out)])
    two = _tensors(out)
    one = bn_worker.train_and_judge(None)
    assert bool(two["plain_bn"])  # the model leaves training with its own batch-norm layers
    for key in ("model.features.1.running_mean", "model.features.1.running_var"):
        torch.testing.assert_close(two[key], one[key], rtol=1e-5, atol=1e-6, msg=key)
    torch.testing.assert_close(two["logits"], one["logits"], rtol=1e-5, atol=1e-5)
