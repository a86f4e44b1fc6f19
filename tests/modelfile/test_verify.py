"""Self-check probes: verify tells preprocessing drift from model-output drift, and by how much."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imgclf
from helpers import (
    edit_manifest,
    edit_tensors,
    make_classifier,
    make_dataset,
    manifest_of,
    run_cli,
    tensors_of,
    tiny_train_config,
)
from imgclf.cli.main import main
from imgclf.images import preprocess
from imgclf.modelfile import probes
from imgclf.training.pipeline import train


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("verify") / "m.imgclf"
    imgclf.save(make_classifier(seed=11, size=24), path)
    return path


def _rows(report) -> dict[str, tuple[bool, str]]:
    return {name: (ok, detail) for name, ok, detail in report.checks}


def test_a_fresh_file_passes_every_check(model_file):
    report = imgclf.verify(model_file)
    assert report.ok
    rows = _rows(report)
    assert rows["structure and digests"][0] and rows["architecture and weights"][0]
    for i in range(4):
        assert rows[f"probe {i} (synthetic) preprocessing"] == (True, "identical input")
        ok, detail = rows[f"probe {i} (synthetic) output"]
        assert ok and "max |Δp| = 0 " in detail


def test_a_changed_resize_filter_is_reported_as_preprocessing_drift(model_file, monkeypatch):
    """Simulates a Pillow upgrade that changes bilinear resizing: the model itself is fine."""
    monkeypatch.setitem(preprocess._FILTERS, "bilinear", Image.Resampling.NEAREST)
    report = imgclf.verify(model_file)
    assert not report.ok
    rows = _rows(report)
    drifted = [i for i in range(4) if not rows[f"probe {i} (synthetic) preprocessing"][0]]
    assert drifted  # e.g. the gradient and the disc resize differently
    for i in drifted:
        detail = rows[f"probe {i} (synthetic) preprocessing"][1]
        assert re.search(
            r"preprocessing changed .*: \d+ of 1728 pixel values differ, by up to \d+/255", detail
        )
        assert f"probe {i} end to end" in rows
        assert re.search(r"with today's preprocessing: max \|Δp\| = ", rows[f"probe {i} end to end"][1])
    for i in range(4):  # run on the stored inputs, the model's outputs have not moved at all
        assert rows[f"probe {i} (synthetic) output"][0]


def test_changed_input_scaling_is_reported_even_when_pixels_match(model_file, monkeypatch):
    real = probes.to_tensor
    monkeypatch.setattr(probes, "to_tensor", lambda batch, spec, **kw: real(batch, spec, **kw) * 1.0001)
    rows = _rows(imgclf.verify(model_file))
    assert rows["probe 0 (synthetic) preprocessing"] == (
        False,
        "same pixels but the float input differs (scaling changed)",
    )


def test_changed_model_outputs_are_reported_with_their_size(model_file, tmp_path):
    """A file whose expected probabilities were edited (and re-signed): only the output check fails."""

    def edit(m):
        p = m["probes"][2]["probabilities"]
        p[0], p[1] = p[0] - 0.03, p[1] + 0.03

    path = tmp_path / "edited.imgclf"
    path.write_bytes(edit_manifest(model_file.read_bytes(), edit))
    rows = _rows(imgclf.verify(path))
    assert all(rows[f"probe {i} (synthetic) preprocessing"][0] for i in range(4))
    ok, detail = rows["probe 2 (synthetic) output"]
    assert not ok and "model output on the stored input: max |Δp| = 0.03 " in detail
    assert all(rows[f"probe {i} (synthetic) output"][0] for i in (0, 1, 3))


def test_a_top1_flip_is_called_out(model_file, tmp_path):
    def edit(m):
        p = m["probes"][0]["probabilities"]
        p[0], p[1] = p[1], p[0]

    path = tmp_path / "flipped.imgclf"
    path.write_bytes(edit_manifest(model_file.read_bytes(), edit))
    ok, detail = _rows(imgclf.verify(path))["probe 0 (synthetic) output"]
    assert not ok and "the top-1 class changed" in detail


def test_a_probe_image_that_no_longer_decodes_is_a_failed_check_not_a_crash(model_file, tmp_path):
    path = tmp_path / "broken_probe.imgclf"
    path.write_bytes(
        edit_tensors(model_file.read_bytes(), lambda t: t.update({"probe.1": t["probe.1"][:40].clone()}))
    )
    ok, detail = _rows(imgclf.verify(path))["probe 1 (synthetic) preprocessing"]
    assert not ok and "no longer decodes" in detail


def test_tolerance_is_respected(model_file, tmp_path):
    def edit(m):
        p = m["probes"][0]["probabilities"]
        p[0], p[1] = p[0] - 5e-5, p[1] + 5e-5

    path = tmp_path / "tiny_drift.imgclf"
    path.write_bytes(edit_manifest(model_file.read_bytes(), edit))
    assert imgclf.verify(path).ok  # within the default 1e-4
    assert not imgclf.verify(path, tolerance=1e-6).ok


def test_verify_cli_prints_each_check_and_exits_3_with_one_line_on_drift(model_file, tmp_path, capsys):
    assert main(["verify", str(model_file)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "verified: the model behaves exactly as when it was saved"
    # structure, architecture, then per probe: preprocessing, output and label (4 probes), then the verdict
    assert all(line.startswith("ok") for line in out[:-1]) and len(out) == 15

    def edit(m):
        p = m["probes"][3]["probabilities"]
        p[0], p[1] = p[0] + 0.2, p[1] - 0.2

    path = tmp_path / "drift.imgclf"
    path.write_bytes(edit_manifest(model_file.read_bytes(), edit))
    assert main(["verify", str(path)]) == 3
    out, err = capsys.readouterr()
    assert "FAIL  probe 3 (synthetic) output: model output on the stored input: max |Δp| = 0.2" in out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "failed verification: probe 3 (synthetic) output" in lines[0]


# --- --probes-from ------------------------------------------------------------------------------------------


def _chunks(data: bytes, size: int = 48) -> list[bytes]:
    """A few slices from inside an encoded image: if the file held the image, it would hold these."""
    mid = len(data) // 2
    return [data[mid : mid + size], data[-size - 16 : -16]]


def test_by_default_no_dataset_image_bytes_end_up_in_the_file(tiny_model):
    blob = tiny_model.model_path.read_bytes()
    files = [p for p in tiny_model.dataset.rglob("*") if p.is_file()]
    assert len(files) == 2 * (12 + 4 + 6)
    for path in files:
        assert not any(chunk in blob for chunk in _chunks(path.read_bytes())), path
    kinds = [p["kind"] for p in manifest_of(blob)["probes"]]
    assert kinds == ["synthetic"] * 4


def test_probes_from_stores_validation_images_and_verifies_them(tmp_path):
    dataset = make_dataset(tmp_path / "data", {"training": 8, "validation": 3, "testing": 2})
    path = tmp_path / "m.imgclf"
    train(dataset, path, tiny_train_config(epochs=1), probes_from=3)
    blob = path.read_bytes()
    kinds = [p["kind"] for p in manifest_of(blob)["probes"]]
    assert kinds == ["synthetic"] * 4 + ["validation"] * 3
    stored = [tensors_of(blob)[f"probe.{i}"].numpy().tobytes() for i in range(4, 7)]
    validation = {p.read_bytes() for p in (dataset / "validation").rglob("*") if p.is_file()}
    assert all(s in validation for s in stored)  # the user's own bytes, exactly
    report = imgclf.verify(path)
    assert report.ok
    assert "probe 6 (validation) output" in _rows(report)
    assert imgclf.inspect(path)["probe_kinds"].count("validation") == 3


def test_probes_from_cli_flag_is_bounded():
    for bad in ("-1", "61", "x"):
        code, _, err = run_cli("train", "--dataset", "d", "--model", "m.imgclf", "--probes-from", bad)
        assert code == 2 and "--probes-from" in err


def test_synthetic_probes_are_fixed_bytes():
    a, b = probes.synthetic_images(), probes.synthetic_images()
    assert a == b and len(a) == 4
    for data in a:
        with Image.open(io.BytesIO(data)) as img:
            assert img.format == "PNG"
    assert np.asarray(Image.open(io.BytesIO(a[1]))).shape == (48, 48)


def test_an_extra_probe_that_does_not_decode_is_named_in_the_error(tmp_path):
    from imgclf.errors import ImageError

    with pytest.raises(ImageError, match=r"probe image 4\b"):  # after the four synthetic probes
        imgclf.save(make_classifier(), tmp_path / "m.imgclf", extra_probes=[b"not an image"])
    assert not (tmp_path / "m.imgclf").exists()


def test_compute_with_no_images_gives_no_records():
    assert probes.compute(make_classifier(), [], []) == []
