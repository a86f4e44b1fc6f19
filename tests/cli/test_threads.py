"""Inference threads: a default that backs off on a busy machine, the --threads / $IMGCLF_THREADS knob, and
the setting said on a terminal."""

from __future__ import annotations

import sys

import pytest

from imgclf.cli import common
from imgclf.cli.common import choose_threads


@pytest.fixture
def machine(monkeypatch):
    """A machine with 4 usable cores and a settable amount of other work; no thread variables set."""
    state = {"busy": 0.0}
    monkeypatch.setattr(common, "usable_cores", lambda: 4)
    monkeypatch.setattr(common, "busy_cores", lambda: state["busy"])
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("IMGCLF_THREADS", raising=False)
    return state


@pytest.mark.parametrize(("busy", "threads"), [(0.0, 4), (0.4, 4), (1.0, 3), (2.6, 1), (3.0, 1), (9.0, 1)])
def test_auto_takes_the_cores_other_work_leaves_free_at_least_one(machine, busy, threads):
    machine["busy"] = busy
    assert choose_threads() == (threads, f"auto: 4 usable cores, {busy:.1f} busy with other work")
    assert choose_threads("auto")[0] == threads


def test_the_knob_wins_then_the_environment_then_openmp(machine, monkeypatch):
    machine["busy"] = 3.0
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert choose_threads() == (3, "OMP_NUM_THREADS")
    monkeypatch.setenv("IMGCLF_THREADS", "2")
    assert choose_threads() == (2, "$IMGCLF_THREADS")
    assert choose_threads(4) == (4, "--threads")
    monkeypatch.setenv("IMGCLF_THREADS", "auto")
    assert choose_threads()[0] == 1
    monkeypatch.setenv("IMGCLF_THREADS", "lots")
    from imgclf.errors import UsageError

    with pytest.raises(UsageError, match=r"\$IMGCLF_THREADS is not a thread count; received lots"):
        choose_threads()


def test_busy_cores_does_not_count_this_process_and_is_never_negative():
    busy = common.busy_cores()
    assert 0.0 <= busy


def test_threads_flag_is_checked_and_documented():
    from helpers import run_cli

    for command in ("predict", "evaluate"):
        code, _, err = run_cli(command, "--threads", "0", "--model", "m", "--images", "x", "--dataset", "d")
        assert code == 2 and "argument --threads: expected a positive number or 'auto', got '0'" in err
        code, out, _ = run_cli(command, "--help")
        assert "--threads N|auto" in out and "IMGCLF_THREADS" in " ".join(out.split())


def test_predict_runs_with_the_chosen_threads_says_them_on_a_terminal_and_restores_torch(
    machine, tmp_path, monkeypatch
):
    import io

    import numpy as np
    import torch

    import imgclf
    from helpers import make_classifier, run_cli, save_image, shape_image

    model = tmp_path / "m.imgclf"
    imgclf.save(make_classifier(), model)
    image = save_image(shape_image("ring", np.random.default_rng(0)), tmp_path / "a.png", "RGB")
    seen = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (seen.append(n), real(n)))
    before = torch.get_num_threads()
    machine["busy"] = 1.0  # 4 cores, 1 busy: 3 threads
    code, out, err = run_cli("predict", "--model", model, "--images", image)
    assert code == 0 and err == ""  # a pipe or a log: results and errors only
    assert seen[0] == 3 and torch.get_num_threads() == before  # used for the command, then given back

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    from imgclf.cli.main import main

    assert main(["predict", "--model", str(model), "--images", str(image), "--threads", "2"]) == 0
    assert sys.stderr.getvalue() == "imgclf: inference threads: 2 (--threads; --threads N to choose)\n"
