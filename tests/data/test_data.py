"""Tests of data.folders and data.decode: layouts, splits, hidden entries, structural errors, decoding."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import make_dataset, save_image, shape_image
from imgclf.config import PreprocessSpec
from imgclf.data import decode, folders, identity, listing
from imgclf.errors import DatasetError
from imgclf.images import preprocess

SPEC = PreprocessSpec(height=24, width=24)


def write_png(path: Path, seed: int = 0, size: int = 12) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def flat_dataset(root: Path, counts: dict[str, int]) -> Path:
    """ROOT/<class>/*.png with a different number of images per class."""
    for i, (cls, n) in enumerate(counts.items()):
        for j in range(n):
            write_png(root / cls / f"{cls}_{j:03d}.png", seed=i * 1000 + j)
    return root


def as_names(samples: list[folders.Sample]) -> list[str]:
    return sorted(os.path.basename(s.path) for s in samples)


# --- layouts and splits --------------------------------------------------------------------------


def test_split_layout_uses_the_folders_as_given(tiny_dataset: Path) -> None:
    ds = folders.scan_dataset(tiny_dataset)
    assert ds.layout == "splits"
    assert ds.class_names == ["ring", "square"]
    assert ds.counts() == {
        "training": {"ring": 12, "square": 12},
        "validation": {"ring": 4, "square": 4},
        "testing": {"ring": 6, "square": 6},
    }
    for split, samples in ds.splits.items():
        for s in samples:
            assert Path(s.path).parent == tiny_dataset / split / ds.class_names[s.label]
    assert not any("out of training" in w for w in ds.warnings)


def test_short_split_aliases_are_understood(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "d", {"train": 5, "val": 2, "test": 3})
    ds = folders.scan_dataset(root)
    assert ds.layout == "splits"
    assert ds.counts() == {
        "training": {"ring": 5, "square": 5},
        "validation": {"ring": 2, "square": 2},
        "testing": {"ring": 3, "square": 3},
    }


def test_missing_validation_is_carved_from_training(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "d", {"training": 10, "testing": 3})
    ds = folders.scan_dataset(root, val_split=0.2, test_split=0.5, seed=3)
    assert ds.counts() == {
        "training": {"ring": 8, "square": 8},
        "validation": {"ring": 2, "square": 2},
        "testing": {"ring": 3, "square": 3},
    }  # the testing folder is used as is
    carved = {s.path for s in ds.splits["training"] + ds.splits["validation"]}
    on_disk = {str(p) for p in (root / "training").rglob("*") if p.is_file()}
    assert carved == on_disk
    assert not {s.path for s in ds.splits["training"]} & {s.path for s in ds.splits["validation"]}
    assert any("split validation out of training" in w for w in ds.warnings)


def test_missing_validation_with_zero_fraction_stays_empty(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "d", {"training": 4, "testing": 2})
    ds = folders.scan_dataset(root, val_split=0.0)
    assert ds.splits["validation"] == []
    assert len(ds.splits["training"]) == 8


def _expected_counts(n: int, val: float, test: float) -> tuple[int, int, int]:
    """Independent statement of the policy: round each share, but training keeps at least one."""
    n_val = min(round(n * val), n - 1)
    n_test = min(round(n * test), n - 1 - n_val)
    return n - n_val - n_test, n_val, n_test


def test_flat_layout_is_split_stratified_per_class(tmp_path: Path) -> None:
    counts = {"apple": 20, "banana": 7, "cherry": 1, "date": 2}
    root = flat_dataset(tmp_path / "flat", counts)
    ds = folders.scan_dataset(root, val_split=0.2, test_split=0.3, seed=5)
    assert ds.layout == "flat"
    assert ds.class_names == sorted(counts)
    for cls, n in counts.items():
        got = tuple(ds.counts()[split][cls] for split in folders.SPLITS)
        assert got == _expected_counts(n, 0.2, 0.3), cls
        assert ds.counts()["training"][cls] >= 1
    every = [s.path for split in folders.SPLITS for s in ds.splits[split]]
    assert sorted(every) == sorted(str(p) for p in root.rglob("*.png"))  # each file exactly once
    assert any("'cherry' has a single training image" in w for w in ds.warnings)


def test_large_fractions_never_empty_a_class_in_training(tmp_path: Path) -> None:
    counts = {"one": 1, "two": 2, "three": 3, "five": 5}
    root = flat_dataset(tmp_path / "flat", counts)
    for seed in range(3):
        ds = folders.scan_dataset(root, val_split=0.5, test_split=0.4, seed=seed)
        for cls, n in counts.items():
            got = tuple(ds.counts()[split][cls] for split in folders.SPLITS)
            assert got == _expected_counts(n, 0.5, 0.4), (cls, got)
            assert got[0] >= 1 and sum(got) == n
    assert _expected_counts(2, 0.5, 0.4) == (1, 1, 0)  # the cap binds: round(0.8) = 1 test image is dropped


def test_flat_split_is_seeded(tmp_path: Path) -> None:
    root = flat_dataset(tmp_path / "flat", {"a": 30, "b": 30})
    first = folders.scan_dataset(root, seed=7)
    again = folders.scan_dataset(root, seed=7)
    other = folders.scan_dataset(root, seed=8)
    assert first.splits == again.splits
    assert as_names(first.splits["testing"]) != as_names(other.splits["testing"])
    assert first.counts() == other.counts()


def test_class_order_is_sorted_folder_names(tmp_path: Path) -> None:
    root = flat_dataset(tmp_path / "flat", {"zebra": 2, "Apple": 2, "mango": 2, "10": 2, "9": 2})
    ds = folders.scan_dataset(root, val_split=0.0, test_split=0.0)
    assert ds.class_names == ["10", "9", "Apple", "mango", "zebra"]
    for s in ds.splits["training"]:
        assert Path(s.path).parent.name == ds.class_names[s.label]


def test_hidden_and_system_entries_are_neither_classes_nor_samples(tmp_path: Path) -> None:
    root = flat_dataset(tmp_path / "flat", {"cat": 3, "dog": 3})
    for hidden_dir in (".git", ".ipynb_checkpoints", "__MACOSX", "__pycache__"):
        write_png(root / hidden_dir / "x.png")
        write_png(root / "cat" / hidden_dir / "y.png")
    write_png(root / "cat" / ".hidden.png")
    write_png(root / "cat" / "._cat_000.png")  # macOS resource fork twin
    for junk in ("Thumbs.db", ".DS_Store", "desktop.ini"):
        (root / junk).write_bytes(b"junk")
        (root / "dog" / junk).write_bytes(b"junk")
    ds = folders.scan_dataset(root, val_split=0.0, test_split=0.0)
    assert ds.class_names == ["cat", "dog"]
    assert as_names(ds.splits["training"]) == sorted(
        [f"cat_{i:03d}.png" for i in range(3)] + [f"dog_{i:03d}.png" for i in range(3)]
    )
    assert len(decode.load_split(ds.splits["training"], SPEC, workers=1)) == 6


# --- structural errors ---------------------------------------------------------------------------


def _scan_error(root: Path, **kw: object) -> DatasetError:
    with pytest.raises(DatasetError) as info:
        folders.scan_dataset(root, **kw)
    assert info.value.exit_code == 7
    return info.value


def test_missing_root(tmp_path: Path) -> None:
    err = _scan_error(tmp_path / "nope")
    assert str(err).startswith("dataset folder does not exist; received ")
    assert "nope" in str(err)


def test_root_is_a_file(tmp_path: Path) -> None:
    path = write_png(tmp_path / "a.png")
    assert str(_scan_error(path)).startswith("dataset path is not a folder; received ")


def test_empty_root_including_only_hidden_entries(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    assert str(_scan_error(tmp_path / "d")).startswith("dataset folder is empty")
    write_png(tmp_path / "d" / ".git" / "a.png")
    (tmp_path / "d" / "notes.txt").write_bytes(b"x")  # files are not class folders
    assert str(_scan_error(tmp_path / "d")).startswith("dataset folder is empty")


def test_images_without_class_folders_say_what_was_found_and_the_layout(tmp_path: Path) -> None:
    root = tmp_path / "d"
    for name in ("a.png", "b.jpg", "c.png", "d.png"):
        write_png(root / name)
    (root / ".hidden.png").write_bytes(b"x")
    assert str(_scan_error(root)) == (
        "4 image(s) directly in the folder and no class folders: imgclf learns each image's class from the "
        f"name of the folder it is in; received {root} (a.png, b.jpg, c.png, ...); expected one folder per "
        "class, at least 2: d/<class>/*.png (or d/training/<class>/*.png). Fix: move the images into one "
        f"subfolder per class, e.g. d/cats/ and d/dogs/; to classify unlabelled images: imgclf predict "
        f"--images {root}"
    )


def test_a_split_folder_of_images_without_class_folders_is_named(tmp_path: Path) -> None:
    write_png(tmp_path / "d" / "training" / "a.png")
    err = str(_scan_error(tmp_path / "d"))
    assert err.startswith("1 image(s) directly in the folder and no class folders")
    assert f"received {tmp_path / 'd' / 'training'} (a.png)" in err and "training/training" not in err


def test_images_beside_class_folders_are_reported_not_dropped_silently(tmp_path: Path) -> None:
    root = flat_dataset(tmp_path / "d", {"only": 3})
    write_png(root / "stray.png")
    err = str(_scan_error(root))
    assert "found 1 class folder(s) ['only']; need at least 2" in err
    assert "1 image(s) directly in" in err and "are in no class folder" in err and "stray.png" in err
    flat_dataset(root, {"other": 3})
    ds = folders.scan_dataset(root)
    assert ds.class_names == ["only", "other"]
    assert any("1 image(s) directly in" in w and "stray.png" in w for w in ds.warnings)


def test_single_class_is_rejected(tmp_path: Path) -> None:
    root = flat_dataset(tmp_path / "d", {"only": 3})
    err = _scan_error(root)
    assert "found 1 class folder(s) ['only']; need at least 2" in str(err)


def test_empty_class_folder_is_named(tmp_path: Path) -> None:
    root = flat_dataset(tmp_path / "d", {"a": 3, "b": 3})
    (root / "empty_one").mkdir()
    (root / "hidden_only").mkdir()
    (root / "hidden_only" / ".DS_Store").write_bytes(b"x")
    with pytest.raises(DatasetError, match=r"class folder .*empty_one.* is empty") as info:
        folders.scan_dataset(root)
    assert "has 2 problem(s)" in str(info.value)
    assert re.search(r"class folder .*hidden_only.* is empty", str(info.value))


def test_class_sets_differing_between_splits_name_the_classes(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "d", {"training": 2}, classes=("cat", "dog", "owl"))
    make_dataset(root, {"validation": 1}, classes=("cat", "dog", "emu"))
    make_dataset(root, {"testing": 1}, classes=("cat", "dog", "owl"))
    err = _scan_error(root)
    assert "validation classes differ from training (missing: ['owl'], extra: ['emu'])" in str(err)
    assert "testing classes differ" not in str(err)


def test_split_folders_without_training(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "d", {"validation": 2, "testing": 2})
    err = _scan_error(root)
    assert str(err).startswith("dataset has split folders but no training folder")
    assert "testing, validation" in str(err)


def test_several_problems_are_reported_in_one_error(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "d", {"training": 2, "validation": 1}, classes=("cat",))
    (root / "training" / "dog").mkdir()
    (root / "validation" / "eel").mkdir()
    err = str(_scan_error(root))
    assert "has 3 problem(s)" in err
    assert "need at least 2" not in err  # an empty class folder still counts as a class
    assert re.search(r"class folder .*training.dog.* is empty", err)
    assert re.search(r"class folder .*validation.eel.* is empty", err)
    assert "validation classes differ from training (missing: ['dog'], extra: ['eel'])" in err
    assert err.count("is empty") == 2


# --- decoding: load_split ------------------------------------------------------------------------


def test_bad_files_are_all_reported_at_once(tmp_path: Path) -> None:
    root = flat_dataset(tmp_path / "d", {"a": 4, "b": 4})
    (root / "a" / "broken.png").write_bytes(b"not an image at all")
    good = (root / "b" / "b_000.png").read_bytes()
    (root / "b" / "cut.png").write_bytes(good[: len(good) // 2])
    ds = folders.scan_dataset(root, val_split=0.0, test_split=0.0)
    with pytest.raises(DatasetError, match=r"^2 file\(s\) are not readable images: ") as info:
        decode.load_split(ds.splits["training"], SPEC, workers=2)
    msg = str(info.value)
    assert info.value.exit_code == 7
    assert "broken.png (not a supported image)" in msg and "cut.png (cannot decode image)" in msg
    assert "--skip-bad" in msg


def test_skip_bad_keeps_the_good_files(tmp_path: Path) -> None:
    root = flat_dataset(tmp_path / "d", {"a": 3, "b": 3})
    (root / "a" / "broken.png").write_bytes(b"nope")
    (root / "b" / "empty.png").write_bytes(b"")
    ds = folders.scan_dataset(root, val_split=0.0, test_split=0.0)
    ticks: list[int] = []
    dec = decode.load_split(ds.splits["training"], SPEC, skip_bad=True, workers=2, progress=ticks.append)
    assert sum(ticks) == 8  # bad files count as done too
    assert len(dec) == 6 and dec.images.shape == (6, 24, 24, 3)
    assert sorted(os.path.basename(p) for p, _ in dec.skipped) == ["broken.png", "empty.png"]
    assert all(why == "not a supported image" for _, why in dec.skipped)
    assert not any(p.endswith(("broken.png", "empty.png")) for p in dec.paths)
    for path, label, arr in zip(dec.paths, dec.labels.tolist(), dec.images, strict=True):
        assert Path(path).parent.name == ds.class_names[label]
        np.testing.assert_array_equal(arr, preprocess.preprocess_uint8(path, SPEC))


def _every_kind(folder: Path) -> list[Path]:
    """Files in every mode/format the cache must decode exactly as prediction does."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(11)
    paths = [
        save_image(shape_image("ring", rng), folder / f"m{i}_{mode}.png", mode)
        for i, mode in enumerate(["RGB", "L", "RGBA", "P", "JPEG"])
    ]
    gradient = np.tile(np.linspace(0, 65535, 90).astype(np.uint16), (40, 1))
    Image.fromarray(gradient).save(folder / "g16.png")
    Image.fromarray(shape_image("square", rng)).convert("CMYK").save(folder / "cmyk.jpg", quality=90)
    Image.fromarray(rng.integers(0, 256, (200, 260, 3), dtype=np.uint8)).save(folder / "big.jpg", quality=85)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(shape_image("square", rng)).save(folder / "rotated.png", exif=exif)
    alpha = rng.integers(0, 256, (34, 34, 1), dtype=np.uint8)
    rgba = np.concatenate([shape_image("ring", rng)[:34, :34], alpha], axis=2)
    Image.fromarray(rgba, "RGBA").save(folder / "alpha.webp", lossless=True)
    frames = [Image.fromarray(shape_image("ring", rng)).convert("P") for _ in range(2)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    return paths + [
        folder / n for n in ("g16.png", "cmyk.jpg", "big.jpg", "rotated.png", "alpha.webp", "anim.gif")
    ]


def test_cache_and_prediction_paths_agree_bitwise(tmp_path: Path) -> None:
    paths = _every_kind(tmp_path / "kinds")
    assert {Image.open(p).mode for p in paths} >= {"RGB", "L", "RGBA", "P", "I;16", "CMYK"}
    samples = [folders.Sample(str(p), i % 2) for i, p in enumerate(paths)]
    dec = decode.load_split(samples, SPEC, workers=3)
    assert dec.images.shape == (len(paths), 24, 24, 3) and dec.images.dtype == np.uint8
    assert dec.paths == [str(p) for p in paths]
    for p, arr in zip(paths, dec.images, strict=True):
        np.testing.assert_array_equal(arr, preprocess.preprocess_uint8(p, SPEC), err_msg=p.name)
        with Image.open(p) as opened:
            np.testing.assert_array_equal(arr, preprocess.preprocess_uint8(opened, SPEC), err_msg=p.name)
    assert torch.equal(preprocess.to_tensor(dec.images, SPEC), preprocess.preprocess(paths, SPEC))


def test_decoding_does_not_depend_on_thread_count(tmp_path: Path) -> None:
    paths = _every_kind(tmp_path / "kinds")
    samples = [folders.Sample(str(p), 0) for p in paths]
    ticks: list[int] = []
    one = decode.load_split(samples, SPEC, workers=1, progress=ticks.append)
    many = decode.load_split(samples, SPEC, workers=4)
    np.testing.assert_array_equal(one.images, many.images)
    assert one.digests == many.digests and len(set(one.digests)) == len(paths)
    assert sum(ticks) == len(paths)


def test_empty_split_decodes_to_an_empty_batch() -> None:
    dec = decode.load_split([], SPEC)
    assert dec.images.shape == (0, 24, 24, 3) and len(dec) == 0 and dec.labels.dtype == np.int64


@pytest.mark.timeout(30)
@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symlinks")
def test_symlink_loops_do_not_hang_the_scan(tmp_path: Path) -> None:
    root = flat_dataset(tmp_path / "d", {"a": 2, "b": 2})
    os.symlink(root / "a", root / "a" / "loop")  # a folder that contains itself
    os.symlink(root, root / "b" / "up")  # a folder that contains the whole dataset
    os.symlink("self.png", root / "b" / "self.png")  # a link to itself
    ds = folders.scan_dataset(root, val_split=0.0, test_split=0.0)  # the timeout mark catches a loop
    assert as_names(ds.splits["training"]) == ["a_000.png", "a_001.png", "b_000.png", "b_001.png"]
    assert listing.list_images([root]) == sorted(listing.list_images([root]))


# --- duplicates and fingerprint ------------------------------------------------------------------


def _decode_all(ds: folders.Dataset) -> dict[str, decode.DecodedSplit]:
    return {split: decode.load_split(samples, SPEC, workers=2) for split, samples in ds.splits.items()}


def test_duplicate_report_flags_a_file_in_two_classes(tmp_path: Path) -> None:
    root = flat_dataset(tmp_path / "d", {"a": 3, "b": 3})
    ds = folders.scan_dataset(root, val_split=0.0, test_split=0.0)
    assert identity.duplicate_report(_decode_all(ds)) is None
    shutil.copy(root / "a" / "a_000.png", root / "b" / "copy_of_a.png")
    ds = folders.scan_dataset(root, val_split=0.0, test_split=0.0)
    report = identity.duplicate_report(_decode_all(ds))
    assert report is not None and report.startswith("1 identical file(s) appear in more than one class")


def test_fingerprint_tracks_content_and_nothing_else(tmp_path: Path) -> None:
    root = flat_dataset(tmp_path / "d", {"a": 3, "b": 3})
    ds = folders.scan_dataset(root, val_split=0.0, test_split=0.0)
    first = identity.fingerprint(ds, _decode_all(ds))
    assert len(first) == 64
    assert identity.fingerprint(ds, _decode_all(ds)) == first
    target = root / "b" / "b_001.png"
    os.utime(target, (1, 1))  # a touched file with the same bytes changes nothing
    assert identity.fingerprint(ds, _decode_all(ds)) == first
    write_png(target, seed=999)
    changed = identity.fingerprint(ds, _decode_all(ds))
    assert changed != first


def test_fingerprint_does_not_depend_on_where_the_dataset_lives(tmp_path: Path) -> None:
    root = flat_dataset(tmp_path / "d", {"a": 2, "b": 2})
    moved = tmp_path / "elsewhere" / "d"
    shutil.copytree(root, moved)
    ds1 = folders.scan_dataset(root, val_split=0.0, test_split=0.0)
    ds2 = folders.scan_dataset(moved, val_split=0.0, test_split=0.0)
    assert identity.fingerprint(ds1, _decode_all(ds1)) == identity.fingerprint(ds2, _decode_all(ds2))


# --- list_images ---------------------------------------------------------------------------------


def test_list_images_expands_folders_and_keeps_files(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    write_png(folder / "b.png")
    write_png(folder / "a.JPG")
    write_png(folder / "sub" / "deeper" / "c.webp")
    (folder / "notes.txt").write_text("x")
    (folder / "model.imgclf").write_bytes(b"x")
    write_png(folder / ".hidden.png")
    write_png(folder / ".cache" / "d.png")
    write_png(folder / "__MACOSX" / "e.png")
    explicit_txt = tmp_path / "readme.txt"
    explicit_txt.write_text("kept because named")
    single = write_png(tmp_path / "z.png")
    got = listing.list_images([single, folder, str(explicit_txt)])
    assert got == [
        str(single),
        str(folder / "a.JPG"),
        str(folder / "b.png"),
        str(folder / "sub" / "deeper" / "c.webp"),
        str(explicit_txt),
    ]


def test_list_images_keeps_missing_paths_for_a_per_file_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.png"
    assert listing.list_images([missing]) == [str(missing)]
    assert listing.list_images([]) == []


def test_bytes_digest_matches_file_content(tmp_path: Path) -> None:
    path = write_png(tmp_path / "a" / "x.png")
    dec = decode.load_split([folders.Sample(str(path), 0)], SPEC)
    assert dec.digests == [hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()]


def test_files_without_an_image_extension_are_skipped_with_one_note(tiny_dataset: Path) -> None:
    (tiny_dataset / "training" / "ring" / "readme.txt").write_text("how these were collected")
    (tiny_dataset / "testing" / "square" / "labels.csv").write_text("a,b\n")
    (tiny_dataset / "training" / "square" / "Thumbs.db").write_bytes(b"\0" * 10)
    ds = folders.scan_dataset(tiny_dataset)
    paths = [s.path for split in ds.splits.values() for s in split]
    assert not [p for p in paths if not p.endswith((".png", ".jpg"))]
    notes = [n for n in ds.warnings if "without an image extension" in n]
    assert notes == [
        "skipped 2 file(s) without an image extension (testing/square/labels.csv, training/ring/readme.txt)"
    ]


def test_a_broken_file_with_an_image_extension_still_stops_training(tiny_dataset: Path, tmp_path) -> None:
    from helpers import tiny_train_config
    from imgclf.training.pipeline import train

    (tiny_dataset / "training" / "ring" / "readme.txt").write_text("not an image, skipped")
    (tiny_dataset / "training" / "ring" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"1 file\(s\) are not readable images: .*broken\.png"):
        train(tiny_dataset, tmp_path / "m.imgclf", tiny_train_config(epochs=1))


def test_train_and_evaluate_on_a_folder_of_images_say_how_to_lay_it_out(tmp_path: Path) -> None:
    import imgclf
    from helpers import make_classifier, run_cli

    root = tmp_path / "photos"
    for i in range(3):
        write_png(root / f"img{i}.png", seed=i)
    imgclf.save(make_classifier(), tmp_path / "m.imgclf")
    for argv in (
        ("train", "--dataset", root, "--model", tmp_path / "new.imgclf"),
        ("evaluate", "--dataset", root, "--model", tmp_path / "m.imgclf"),
    ):
        code, out, err = run_cli(*argv)
        assert (code, out) == (7, ""), err
        assert err.startswith("imgclf: error: 3 image(s) directly in the folder and no class folders")
        assert "one folder per class" in err and len(err.splitlines()) == 1
