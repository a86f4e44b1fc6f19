"""OpenVINO's tests (``openvino_cases.py``), run in a pytest process of their own.

Once OpenVINO has compiled and run a model in a process, a SIGINT that process sends itself later
(the interrupt and exact-resume tests do) ends it with a segmentation fault: seen in the whole suite,
not yet explained. The main test process therefore never loads OpenVINO.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("openvino")


def test_the_openvino_cases_pass_in_a_process_of_their_own():
    cases = Path(__file__).with_name("openvino_cases.py")
    run = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(cases)]
    out = subprocess.run(run, capture_output=True, text=True, timeout=900, check=False)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and "failed" not in out.stdout.splitlines()[-1]
