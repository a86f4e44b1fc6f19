"""Training fits a temperature on the validation split when it has enough images, and says so."""

from __future__ import annotations

from helpers import make_dataset, tiny_train_config
from imgclf import modelfile
from imgclf.calibration import MIN_CALIBRATION_IMAGES
from imgclf.training.pipeline import train


def test_training_calibrates_on_a_large_enough_validation_split(tmp_path, tiny_model):
    per_class = MIN_CALIBRATION_IMAGES // 2
    data = make_dataset(tmp_path / "data", {"training": 12, "validation": per_class, "testing": 2})
    lines = []
    train(data, tmp_path / "m.imgclf", tiny_train_config(epochs=1), log=lines.append)
    cal = modelfile.load(tmp_path / "m.imgclf").manifest["calibration"]
    assert cal["split"] == "validation" and cal["images"] == 2 * per_class
    assert any(f"calibrated on {2 * per_class} validation images" in line for line in lines), lines
    # the session's tiny model had 8 validation images: too few, so it was left as trained
    assert "calibration" not in modelfile.load(tiny_model.model_path).manifest
