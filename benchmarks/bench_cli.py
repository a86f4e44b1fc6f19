"""How fast the ``imgclf`` command answers ``--help``, ``--version`` and a usage error, in fresh processes.

Each case starts a new interpreter (``python -m imgclf ...``), as a user's shell does; the figure is
the wall-clock time to exit, median and min over the runs. ``python -c pass`` is timed as the floor.

Usage::

    python benchmarks/bench_cli.py            # 10 runs per case
    python benchmarks/bench_cli.py 30         # 30 runs per case
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

CASES = {
    "python -c pass (interpreter floor)": ["-c", "pass"],
    "imgclf --help": ["-m", "imgclf", "--help"],
    "imgclf --version": ["-m", "imgclf", "--version"],
    "imgclf train --help": ["-m", "imgclf", "train", "--help"],
    "imgclf train --datset x (usage error)": ["-m", "imgclf", "train", "--datset", "x"],
    "imgclf predict (missing flags)": ["-m", "imgclf", "predict"],
}


def time_case(args: list[str], runs: int) -> list[float]:
    """Wall-clock seconds of ``runs`` fresh ``python ARGS`` processes."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, *args], capture_output=True, check=False)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    print(f"{'case':<42} {'median s':>9} {'min s':>7}   ({runs} fresh processes each)")
    for name, args in CASES.items():
        t = time_case(args, runs)
        print(f"{name:<42} {statistics.median(t):>9.3f} {min(t):>7.3f}")


if __name__ == "__main__":
    main()
