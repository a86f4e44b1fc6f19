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
