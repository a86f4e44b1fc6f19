"""The README's first screen lets a new user go from clone to a prediction of their own image."""

from __future__ import annotations

import re
from pathlib import Path

README = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
FIRST_SCREEN = README.split("## Command line", 1)[0]


def test_the_first_screen_says_how_to_run_the_cli_after_make_demo_and_how_long_it_takes():
    assert "make demo" in FIRST_SCREEN
    assert ".venv/bin/imgclf" in FIRST_SCREEN and "source .venv/bin/activate" in FIRST_SCREEN
    assert "--images my_cell.png" in FIRST_SCREEN  # a prediction of one's own image
    assert "pip install ." in FIRST_SCREEN and "'.[dev]'" in FIRST_SCREEN
    assert re.search(r"How long `make demo` takes.*\*\*about \d+ minutes\*\*", FIRST_SCREEN, re.S)


def test_the_first_screen_states_the_supported_platforms():
    platforms = FIRST_SCREEN.split("**Platforms**", 1)[1].split("\n\n", 1)[0]
    for name in ("Linux", "macOS", "Windows", "fcntl", "--no-cache"):
        assert name in platforms


def test_make_test_says_it_installs_a_browser_and_the_readme_says_how_big_and_how_long(tmp_path):
    """Run the Makefile's test recipe with a fake root, no chromium and a fake apt-get (nothing installed)."""
    import os
    import shutil
    import subprocess

    make, sh = shutil.which("make"), shutil.which("sh")
    if make is None or sh is None:
        import pytest

        pytest.skip("no make")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "apt-calls"
    for name, body in (("id", "echo 0"), ("apt-get", f'echo "$*" >> {calls}')):
        (bin_dir / name).write_text(f"#!{sh}\n{body}\n")
        (bin_dir / name).chmod(0o755)
    root = Path(__file__).parents[1]
    env = {**os.environ, "PATH": str(bin_dir)}  # no chromium on this PATH
    stamp = tmp_path / "stamp"  # newer than pyproject.toml and constraints.txt: no set-up runs
    stamp.touch()
    run = [make, "-s", "-C", str(root), "test", "PY=:", f"STAMP={stamp}"]
    out = subprocess.run(run, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    first = out.stdout.splitlines()[0]
    assert first.startswith("make test: installing Debian's chromium for the web page's browser tests")
    assert "MB to download" in first and "MB on disk" in first and "NO_BROWSER=1" in first
    assert calls.read_text().splitlines() == ["update -qq", "install -y -qq chromium"]
    calls.unlink()
    out = subprocess.run([*run, "NO_BROWSER=1"], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout == "" and not calls.exists()
    said = FIRST_SCREEN.split("**What `make test` installs besides**", 1)[1].split("\n\n", 1)[0]
    assert re.search(r"about \d+ MB to download and \d+ MB on disk", " ".join(said.split()))
    assert re.search(r"\d+ min \d+ s measured", said) and "NO_BROWSER=1" in said
