"""Ctrl-C and SIGTERM while decoding (serial, parallel, cached) and while predicting: exit 130 with
"interrupted" or 143 with "terminated", and nothing left behind (no run lock, no cache temporary, no
output temporary, no output file).

Each case runs the real CLI in a child process whose decoding is slowed down (a sleep per image, set up
by the child script) and sends the signal once the first image has started decoding.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import make_dataset, tiny_train_config

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

CHILD = r"""
import os, sys, time
import imgclf.classifier as classifier
import imgclf.data.decode as decode

marker = sys.argv[1]
decode.PARALLEL_MIN = int(sys.argv[2])


def slow(original):
    def wrapper(*args, **kwargs):
        if not os.path.exists(marker):
            open(marker, "w").close()
        time.sleep(0.2)
        return original(*args, **kwargs)
    return wrapper


decode.preprocess_uint8 = slow(decode.preprocess_uint8)
classifier.preprocess_uint8 = slow(classifier.preprocess_uint8)
sys.argv = ["imgclf", *sys.argv[3:]]
from imgclf.cli.main import run
run()
"""


def interrupt(tmp_path: Path, argv: list, signum: int, *, parallel_min: int = 10_000) -> tuple[int, str]:
    """Run ``imgclf ARGV`` slowed down, send ``signum`` once decoding started; (exit code, stderr)."""
    marker = tmp_path / "decoding-started"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(marker), str(parallel_min), *map(str, argv)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "decoding never started"
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err


def leftovers(*folders: Path) -> list[str]:
    """Temporary files, locks and partial outputs under ``folders``."""
    found = []
    for folder in folders:
        for root, _, files in os.walk(folder):
            found += [
                os.path.join(root, f) for f in files if f.endswith(".imgclf-tmp") or f.startswith(".tmp-")
            ]
            found += [os.path.join(root, f) for f in files if f == "lock"]
    return found


def write_config(tmp_path: Path) -> Path:
    import json

    path = tmp_path / "config.json"
    path.write_text(json.dumps(tiny_train_config().to_dict()))
    return path


CASES = [
    ("serial-no-cache", signal.SIGINT, ["--no-cache"], 10_000),
    ("parallel-no-cache", signal.SIGINT, ["--no-cache"], 8),
    ("serial-cache", signal.SIGTERM, [], 10_000),
    ("parallel-cache", signal.SIGTERM, [], 8),
]


@pytest.mark.slow
@pytest.mark.parametrize("name, signum, flags, parallel_min", CASES, ids=[c[0] for c in CASES])
def test_a_signal_while_training_decodes_exits_cleanly(tmp_path, name, signum, flags, parallel_min):
    data = make_dataset(tmp_path / "data", {"training": 8, "validation": 2, "testing": 2})
    cache = tmp_path / "cache"
    argv = ["train", "--dataset", data, "--model", tmp_path / "m.imgclf", "--config", write_config(tmp_path)]
    code, err = interrupt(tmp_path, [*argv, "--cache-dir", cache, *flags], signum, parallel_min=parallel_min)
    expected = (
        (130, "imgclf: interrupted\n") if signum == signal.SIGINT else (143, "imgclf: terminated (SIGTERM)\n")
    )
    assert (code, err[-len(expected[1]) :]) == expected, err
    assert "Traceback" not in err and "internal error" not in err
    assert leftovers(tmp_path) == []
    assert not (tmp_path / "m.imgclf").exists()


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_a_signal_while_evaluating_or_predicting_exits_cleanly(tiny_model, tmp_path, signum):
    out = tmp_path / "preds.csv"
    images = tiny_model.dataset / "testing"
    for argv in (
        ["evaluate", "--model", tiny_model.model_path, "--dataset", tiny_model.dataset, "--no-cache"],
        ["predict", "--model", tiny_model.model_path, "--images", images, "--output", out, "--batch-size", 2],
    ):
        (tmp_path / "decoding-started").unlink(missing_ok=True)
        code, err = interrupt(tmp_path, argv, signum)
        expected = (
            (130, "imgclf: interrupted\n")
            if signum == signal.SIGINT
            else (143, "imgclf: terminated (SIGTERM)\n")
        )
        assert (code, err[-len(expected[1]) :]) == expected, (argv[0], err)
        assert leftovers(tmp_path) == [] and not out.exists()
