"""Launching several processes (issue 30): what can be checked before any worker or process group
starts fails once, with one line and the documented exit code; the launcher ends with the failed
worker's exit code instead of torch's traceback; each worker gets our threads setting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import make_dataset, run_cli
from imgclf.cli import torchrun

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """10 training images (5 per class)."""
    counts = {"training": 5, "validation": 1, "testing": 1}
    return make_dataset(tmp_path_factory.mktemp("launch") / "data", counts)


@pytest.fixture
def no_launch(monkeypatch):
    """Fail the test if a launcher would start."""
    started = []
    monkeypatch.setattr(torchrun.subprocess, "call", lambda *a, **k: started.append(a) or 0)
    return started


TINY = ["--arch", "small_cnn", "--size", "16", "--epochs", "1", "--device", "cpu"]


@pytest.mark.parametrize(
    ("flags", "code", "message"),
    [
        (["--nproc", "2", "--batch-size", "5"], 2, "error: the global batch 5 does not divide by the 2"),
        (["--nproc", "64"], 2, "error: 64 processes for 10 training image(s)"),
        (["--nproc", "4", "--batch-size", "10"], 2, "error: the global batch 10 does not divide by the 4"),
    ],
)
def test_nproc_checks_the_launch_before_starting_anything(tmp_path, data, no_launch, flags, code, message):
    model = tmp_path / "m.imgclf"
    got, out, err = run_cli("train", "--dataset", data, "--model", model, *TINY, *flags)
    assert (got, out, no_launch) == (code, "", [])
    assert len(err.splitlines()) == 1 and err.startswith(f"imgclf: {message}"), err
    assert not model.exists() and not (tmp_path / "m-run").exists()


def test_nproc_refuses_an_unreadable_dataset_before_starting_anything(tmp_path, no_launch):
    model = tmp_path / "m.imgclf"
    got, _, err = run_cli("train", "--dataset", tmp_path / "nope", "--model", model, "--nproc", "2")
    assert (got, no_launch) == (7, [])
    assert err.startswith("imgclf: error: dataset folder does not exist") and len(err.splitlines()) == 1


def test_each_worker_gets_our_threads_setting(tmp_path, data, monkeypatch):
    calls = []
    monkeypatch.setattr(torchrun.subprocess, "call", lambda cmd, env: calls.append((cmd, env)) or 0)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    got, _, err = run_cli("train", "--dataset", data, "--model", tmp_path / "m.imgclf", *TINY, "--nproc", "2")
    threads = torchrun.threads_per_process(2)
    assert got == 0 and calls[0][1]["OMP_NUM_THREADS"] == str(threads)
    assert f"note: 2 processes, {threads} torch thread(s) each" in err
    assert calls[0][0][1:3] == ["-m", "imgclf.cli.torchrun"]  # our launcher: no torch banner, traceback
    monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's choice is kept
    calls.clear()
    run_cli("train", "--dataset", data, "--model", tmp_path / "m.imgclf", *TINY, "--nproc", "2")
    assert calls[0][1]["OMP_NUM_THREADS"] == "3"


def test_threads_per_process_shares_the_cores():
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert torchrun.threads_per_process(1) == cores
    assert torchrun.threads_per_process(10_000) == 1


def _torchrun_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


@pytest.mark.parametrize(
    ("body", "code", "line"),
    [
        ("sys.exit(7)", 7, None),  # the worker said why itself: no traceback, its code
        ("os.kill(os.getpid(), signal.SIGKILL)", 128 + 9, "imgclf: error: rank 0 (pid "),
    ],
)
def test_our_launcher_ends_with_the_failed_workers_code_without_a_traceback(tmp_path, body, code, line):
    worker = tmp_path / "worker.py"
    worker.write_text(f"import os, signal, sys\n{body}\n")
    cmd = [sys.executable, "-m", "imgclf.cli.torchrun", "--standalone", "--nproc-per-node=1", str(worker)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_torchrun_env(), timeout=120, check=False)
    assert proc.returncode == code, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "ChildFailedError" not in proc.stderr, proc.stderr
    if line is not None:
        assert line in proc.stderr and "was killed by SIGKILL" in proc.stderr
    else:
        assert proc.stderr.strip() == ""


def test_under_torchrun_only_rank_0_reports_a_bad_launch(tmp_path, data, monkeypatch):
    """Plain torchrun: each worker checks before the process group starts; rank 0 prints one line and
    exits 2, the other ranks of its machine exit 0 without a word (torchrun's summary names rank 0)."""
    model = tmp_path / "m.imgclf"
    argv = ["train", "--dataset", data, "--model", model, *TINY, "--batch-size", "5"]
    for rank, (code, lines) in enumerate([(2, 1), (0, 0)]):
        env = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "GROUP_RANK": "0"}
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        got, out, err = run_cli(*argv)
        assert (got, out, len(err.splitlines())) == (code, "", lines), err
        if lines:
            assert err.startswith("imgclf: error: the global batch 5 does not divide by the 2 processes")
    assert not model.exists() and not (tmp_path / "m-run").exists()


@pytest.mark.slow
def test_plain_torchrun_with_a_bad_batch_prints_one_error_line(tmp_path, data):
    """The issue's command under torch's own launcher: one line from rank 0, nothing decoded; torch's
    launcher itself still exits 1 and prints its summary (naming rank 0 only)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    cmd += ["-m", "imgclf", "train", "--dataset", str(data), "--model", str(tmp_path / "m.imgclf")]
    cmd += [*TINY, "--batch-size", "5"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_torchrun_env(), timeout=240, check=False)
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("imgclf: error:")]
    assert errors == [
        "imgclf: error: the global batch 5 does not divide by the 2 processes; received batch 5, "
        "world size 2; expected a multiple of 2 (--batch-size is the global batch, split across ranks). "
        "Fix: use --batch-size 4 or another multiple"
    ]
    assert "decoding" not in proc.stderr and "rank      : 1" not in proc.stderr, proc.stderr
