"""``benchmarks/bench_infer.py``'s CI-sized run (``bench_infer_cases.py``), in a pytest process of its
own: it runs OpenVINO, which must not be loaded in the main test process (see
tests/interop/test_openvino.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.slow
def test_the_benchmark_quick_run_passes_in_a_process_of_its_own():
    cases = Path(__file__).with_name("bench_infer_cases.py")
    run = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(cases)]
    out = subprocess.run(run, capture_output=True, text=True, timeout=900, check=False)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert " passed" in out.stdout
