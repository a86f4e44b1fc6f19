"""Tests of imgclf.data.synthetic: counts, determinism, file kinds, class separability, refusal rules."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from imgclf.data.synthetic import BASE_COUNTS, CLASSES, SPLITS, write_demo_dataset
from imgclf.errors import UsageError

SCALE_1 = {
    "training": {"Parasitized": 175, "Uninfected": 185},
    "validation": {"Parasitized": 18, "Uninfected": 22},
    "testing": {"Parasitized": 50, "Uninfected": 50},
}


def _on_disk(root: Path) -> dict[str, dict[str, int]]:
    return {split: {cls: len(list((root / split / cls).iterdir())) for cls in CLASSES} for split in SPLITS}


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _kind(img: Image.Image) -> str:
    return "JPEG" if img.format == "JPEG" else f"PNG-{img.mode}"


def _rgb_on_black(img: Image.Image) -> np.ndarray:
    if img.mode == "RGBA":
        a = np.asarray(img, dtype=np.int32)
        return (a[..., :3] * a[..., 3:] + 127) // 255
    return np.asarray(img.convert("RGB"), dtype=np.int32)


def _purple_fraction(img: Image.Image) -> float:
    """Share of the cell's pixels that are strongly purple: red and blue well above green."""
    rgb = _rgb_on_black(img)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    cell = rgb.max(axis=-1) > 40
    purple = cell & (b - g > 60) & (r - g > 30)
    return float(purple.sum()) / max(int(cell.sum()), 1)


def _dark_interior_fraction(img: Image.Image) -> float:
    """For grayscale files: share of the cell's interior far darker than the cell's median."""
    gray = np.asarray(img, dtype=np.float32)
    mask = Image.fromarray(((gray > 40) * 255).astype(np.uint8))
    interior = np.asarray(mask.filter(ImageFilter.MinFilter(7))) > 0  # drop the soft, dark rim
    if not interior.any():
        return 0.0
    values = gray[interior]
    return float((values < 0.65 * np.median(values)).mean())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, int]]]:
    root = tmp_path_factory.mktemp("demo") / "data"
    return root, write_demo_dataset(root, seed=42)


def test_base_counts_are_the_documented_ones() -> None:
    assert BASE_COUNTS == SCALE_1


def test_scale_1_counts_match_and_equal_disk(dataset) -> None:
    root, counts = dataset
    assert counts == SCALE_1
    assert _on_disk(root) == SCALE_1
    assert list(counts) == list(SPLITS)
    assert (root / "training" / "Parasitized" / "P0001.jpg").is_file()
    assert (root / "training" / "Uninfected" / "U0002.png").is_file()


def test_scale_02_rounds_counts_and_files_match_scale_1(dataset, tmp_path: Path) -> None:
    calls: list[int] = []
    counts = write_demo_dataset(tmp_path / "small", scale=0.2, seed=42, progress=calls.append)
    expected = {
        "training": {"Parasitized": 35, "Uninfected": 37},
        "validation": {"Parasitized": 4, "Uninfected": 4},
        "testing": {"Parasitized": 10, "Uninfected": 10},
    }
    assert counts == expected == _on_disk(tmp_path / "small")
    assert all(n > 0 for n in calls) and sum(calls) == sum(sum(c.values()) for c in expected.values())
    # Each file has its own seed, so a smaller scale writes the same first files as scale 1.
    full = _hashes(dataset[0])
    assert all(full[name] == digest for name, digest in _hashes(tmp_path / "small").items())


def test_tiny_scale_keeps_at_least_one_per_folder(tmp_path: Path) -> None:
    counts = write_demo_dataset(tmp_path / "tiny", scale=0.001)
    assert all(n == 1 for per_class in counts.values() for n in per_class.values())
    assert counts == _on_disk(tmp_path / "tiny")


def test_same_seed_is_byte_identical_and_other_seed_differs(dataset, tmp_path: Path) -> None:
    write_demo_dataset(tmp_path / "again", seed=42)
    write_demo_dataset(tmp_path / "other", scale=0.1, seed=7)
    first, again, other = (_hashes(p) for p in (dataset[0], tmp_path / "again", tmp_path / "other"))
    assert len(first) == 500
    assert again == first
    assert other.keys() <= first.keys()
    assert all(first[name] != digest for name, digest in other.items())


def test_every_file_opens_with_sane_size_and_every_folder_has_every_kind(dataset) -> None:
    root, _ = dataset
    wanted = {"JPEG", "PNG-L", "PNG-RGBA", "PNG-P", "PNG-RGB"}
    for split in SPLITS:
        for cls in CLASSES:
            kinds = set()
            for path in (root / split / cls).iterdir():
                with Image.open(path) as img:
                    img.load()
                    assert 90 <= img.width <= 160 and 90 <= img.height <= 160, path
                    assert path.suffix == (".jpg" if img.format == "JPEG" else ".png"), path
                    assert path.name[0] == cls[0]
                    kinds.add(_kind(img))
            assert kinds == wanted, f"{split}/{cls}: {sorted(kinds)}"


def test_purple_stains_separate_the_classes(dataset) -> None:
    root, _ = dataset
    threshold = 0.002  # fixed in advance: a stain covers well over 0.2% of its cell
    hits = {cls: [] for cls in CLASSES}
    for split in SPLITS:
        for cls in CLASSES:
            for path in (root / split / cls).iterdir():
                with Image.open(path) as img:
                    if img.mode == "L":
                        continue
                    hits[cls].append(_purple_fraction(img) > threshold)
    tpr = np.mean(hits["Parasitized"])
    tnr = 1.0 - np.mean(hits["Uninfected"])
    assert len(hits["Parasitized"]) > 150 and len(hits["Uninfected"]) > 150
    assert tpr >= 0.9 and tnr >= 0.9, (tpr, tnr)


def test_grayscale_parasitized_cells_show_dark_stains(dataset) -> None:
    root, _ = dataset
    frac = {cls: [] for cls in CLASSES}
    for split in SPLITS:
        for cls in CLASSES:
            for path in (root / split / cls).glob("*.png"):
                with Image.open(path) as img:
                    if img.mode == "L":
                        frac[cls].append(_dark_interior_fraction(img))
    assert frac["Parasitized"] and frac["Uninfected"]
    assert np.mean(np.array(frac["Parasitized"]) > 0.001) >= 0.9, frac["Parasitized"]
    assert np.mean(np.array(frac["Uninfected"]) > 0.001) <= 0.1, frac["Uninfected"]


def test_refuses_non_empty_folder_and_overwrite_replaces_only_splits(tmp_path: Path) -> None:
    root = tmp_path / "out"
    root.mkdir()
    (root / "notes.txt").write_text("keep me")
    with pytest.raises(UsageError) as info:
        write_demo_dataset(root, scale=0.02)
    assert type(info.value) is UsageError
    assert "not empty" in str(info.value)
    assert sorted(p.name for p in root.iterdir()) == ["notes.txt"]

    with pytest.raises(UsageError, match="not empty"):
        write_demo_dataset(root, scale=0.02, overwrite=False)

    counts = write_demo_dataset(root, scale=0.02, overwrite=True)
    stale = root / "training" / "Parasitized" / "stale.png"
    stale.write_bytes(b"old")
    assert write_demo_dataset(root, scale=0.02, overwrite=True) == counts == _on_disk(root)
    assert not stale.exists()
    assert (root / "notes.txt").read_text() == "keep me"


def test_empty_existing_folder_is_accepted(tmp_path: Path) -> None:
    assert write_demo_dataset(tmp_path, scale=0.001) == _on_disk(tmp_path)


@pytest.mark.parametrize("kwargs", [{"scale": 0}, {"scale": -1.0}, {"scale": float("nan")}, {"seed": -1}])
def test_rejects_bad_scale_and_seed(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(UsageError):
        write_demo_dataset(tmp_path / "x", **kwargs)
    assert not (tmp_path / "x").exists()


def test_refuses_a_file_as_output(tmp_path: Path) -> None:
    target = tmp_path / "file.txt"
    target.write_text("x")
    with pytest.raises(UsageError, match="not a folder"):
        write_demo_dataset(target)
