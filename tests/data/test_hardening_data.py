"""Hardening of folder scans: entries that are not regular files are reported, never skipped silently."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from helpers import make_dataset, run_cli
from imgclf.data import folders


def add_odd_entries(folder: Path) -> list[Path]:
    """A dangling symlink, a FIFO and a link to a device, all named like images."""
    odd = [folder / "dangling.png", folder / "fifo.png", folder / "device.png"]
    odd[0].symlink_to(folder / "missing.png")
    os.mkfifo(odd[1])
    odd[2].symlink_to("/dev/null")
    return odd


def test_a_dataset_scan_warns_about_entries_that_are_not_files(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "d", {"": 3})
    odd = add_odd_entries(root / "ring")
    ds = folders.scan_dataset(root, val_split=0.0, test_split=0.0)
    assert len(ds.splits["training"]) == 6
    notes = [n for n in ds.warnings if "not regular files" in n]
    assert len(notes) == 1, ds.warnings
    assert notes[0].startswith("skipped 3 entries that are not regular files")
    assert all(str(p) in notes[0] for p in odd)


def test_predict_reports_unreadable_entries_and_exits_4(tiny_model, tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    shutil.copy(next((tiny_model.dataset / "testing" / "ring").glob("*.png")), folder / "good.png")
    odd = add_odd_entries(folder)
    code, out, err = run_cli("predict", "--model", tiny_model.model_path, "--images", folder)
    assert code == 4, err
    assert out.count("\n") == 1 and "good.png" in out
    assert all(str(p) in err for p in odd), err
    assert "3 of 4 image(s) could not be classified" in err
