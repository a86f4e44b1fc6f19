"""Tests of training.pipeline: train → save → load in a fresh process gives the evaluation's exact numbers.

The headline: probabilities printed by a separate process that loads the saved file equal (``==``) the
training process's predictions and the training-time evaluation; and every test image's preprocessed
tensor is bitwise the same on the training-time evaluation path and on the predict path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import imgclf
from helpers import MODES, make_dataset, save_image, shape_image, tiny_train_config
from imgclf.data.decode import load_split
from imgclf.data.folders import scan_dataset
from imgclf.dataset_evaluation import evaluate_dataset
from imgclf.errors import DatasetError, StorageError, UsageError
from imgclf.images.preprocess import preprocess, to_tensor
from imgclf.reports import format_report
from imgclf.training.pipeline import train

CLASSES = ("blank", "ring", "square")  # sorted: model indices 0, 1, 2


def _stripes(rng: np.random.Generator) -> np.ndarray:
    """A third class: dark noise with horizontal stripes."""
    h, w = 36 + int(rng.integers(-4, 5)), 40
    img = rng.normal(30, 8, (h, w, 3))
    img[::6] += 120
    return np.clip(img, 0, 255).astype(np.uint8)


def _add_class(root: Path, name: str, counts: dict[str, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    for split, n in counts.items():
        folder = root / split / name if split else root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            save_image(_stripes(rng), folder / f"{name}_{i:03d}.png", MODES[i % len(MODES)])


def _add_16bit_and_cmyk(folder: Path, rng: np.random.Generator) -> list[Path]:
    """A 16-bit grayscale PNG and a CMYK JPEG of the folder's class shape."""
    kind = folder.name
    gray = np.asarray(Image.fromarray(shape_image(kind, rng)).convert("L"), dtype=np.uint16)
    wide = gray * 257 + rng.integers(0, 200, gray.shape).astype(np.uint16)
    png16 = folder / f"{kind}_16bit.png"
    Image.fromarray(wide).save(png16)
    cmyk = folder / f"{kind}_cmyk.jpg"
    Image.fromarray(shape_image(kind, rng)).convert("CMYK").save(cmyk, quality=92)
    return [png16, cmyk]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 3-class split dataset (testing has every decoder mode, 16-bit and CMYK too) and its tiny model."""
    base = tmp_path_factory.mktemp("pipeline")
    counts = {"training": 12, "validation": 4, "testing": 6}
    root = make_dataset(base / "data", counts)
    _add_class(root, "blank", counts, seed=5)
    rng = np.random.default_rng(7)
    extras = [p for cls in ("ring", "square") for p in _add_16bit_and_cmyk(root / "testing" / cls, rng)]
    model_path = base / "model.imgclf"
    result = train(root, model_path, tiny_train_config())
    return root, model_path, result, extras


def test_training_evaluates_the_testing_split(trained):
    root, model_path, result, extras = trained
    ev = result.evaluation
    assert result.classifier.class_names == list(CLASSES)
    testing = sorted(str(p) for p in (root / "testing").rglob("*") if p.is_file())
    assert sorted(ev.paths) == testing and len(ev.paths) == 3 * 6 + len(extras)
    assert {str(p) for p in extras} <= set(ev.paths)
    assert ev.probabilities.shape == (len(testing), 3)
    for path, label in zip(ev.paths, ev.labels.tolist(), strict=True):
        assert CLASSES[label] == Path(path).parent.name
    run = Path(result.run_dir)
    summary = f"balanced accuracy {ev.balanced_accuracy:.4f}\nmacro-F1 {ev.macro_f1:.4f}\n"
    assert (run / "report.txt").read_text() == format_report(ev.report) + "\n" + summary
    assert json.loads((run / "report.json").read_text()) == json.loads(json.dumps(ev.to_dict()))
    metrics = imgclf.inspect(model_path)["metrics"]
    assert metrics["testing_accuracy"] == ev.accuracy


CHILD = """
import json, sys
import torch
torch.set_num_threads(int(sys.argv[3]))
import imgclf
clf = imgclf.load(sys.argv[1])
probs = clf.predict_proba(json.loads(sys.argv[2]))
print(json.dumps({"probs": probs.tolist(), "dtype": str(probs.dtype)}))
"""


def test_fresh_process_reproduces_training_time_probabilities_exactly(trained):
    """The headline: load the file in a new process → the same numbers as training-time evaluation."""
    _, model_path, result, _ = trained
    paths = result.evaluation.paths
    # same thread count as here: CPU kernels may block reductions by thread count (not imgclf's doing)
    argv = [sys.executable, "-c", CHILD, str(model_path), json.dumps(paths), str(torch.get_num_threads())]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    child = json.loads(proc.stdout)
    assert child["dtype"] == "float32"
    here = result.classifier.predict_proba(paths)
    assert child["probs"] == here.tolist()
    assert child["probs"] == result.evaluation.probabilities.tolist()
    # and a reload in this process agrees too
    assert imgclf.load(model_path).predict_proba(paths).tolist() == child["probs"]


def test_preprocessed_tensors_are_bitwise_identical_on_evaluation_and_predict_paths(trained):
    root, _, result, _ = trained
    spec = result.classifier.preprocess
    samples = scan_dataset(root).splits["testing"]
    modes = set()
    for s in samples:
        with Image.open(s.path) as img:
            modes.add("JPEG:" + img.mode if img.format == "JPEG" else img.mode)
    assert {"RGB", "L", "RGBA", "P", "JPEG:RGB", "I;16", "JPEG:CMYK"} <= modes, modes
    evaluation_path = to_tensor(load_split(samples, spec).images, spec)  # what training-time evaluation sees
    assert evaluation_path.shape == (len(samples), 3, spec.height, spec.width)
    for i, s in enumerate(samples):
        predict_path = preprocess(s.path, spec)
        assert predict_path.dtype == torch.float32
        assert torch.equal(evaluation_path[i : i + 1], predict_path), s.path
    batch = preprocess([s.path for s in samples], spec)
    assert torch.equal(batch, evaluation_path)
    # not trivially equal: real, differing images in [0, 1]
    assert 0.0 <= float(batch.min()) and float(batch.max()) <= 1.0
    assert len({batch[i].numpy().tobytes() for i in range(len(samples))}) == len(samples)


def test_evaluate_dataset_reproduces_the_training_evaluation(trained):
    root, model_path, result, _ = trained
    ev = evaluate_dataset(imgclf.load(model_path), root)
    assert ev.paths == result.evaluation.paths
    assert ev.probabilities.tolist() == result.evaluation.probabilities.tolist()
    assert ev.report == result.evaluation.report


def test_evaluate_dataset_maps_class_folders_by_name_for_a_subset(trained, tmp_path):
    _, model_path, _, _ = trained
    clf = imgclf.load(model_path)
    root = make_dataset(tmp_path / "subset", {"": 3}, classes=("square",))
    _add_class(root, "blank", {"": 2}, seed=9)
    # a folder of new images (not the one the model was split from): every image is scored on request
    with pytest.raises(DatasetError, match="records no split of a flat folder.*--split all"):
        evaluate_dataset(clf, root)
    ev = evaluate_dataset(clf, root, split="all")  # dataset: blank=0, square=1; model: blank, ring, square
    assert ev.class_names == list(CLASSES)
    for path, label in zip(ev.paths, ev.labels.tolist(), strict=True):
        assert CLASSES[label] == Path(path).parent.name
    assert sorted(ev.labels.tolist()) == [0, 0, 2, 2, 2]
    assert ev.report["ring"]["support"] == 0
    assert ev.report["square"]["support"] == 3 and ev.report["blank"]["support"] == 2
    assert ev.confusion.shape == (3, 3) and ev.confusion[1].sum() == 0
    assert ev.probabilities.tolist() == clf.predict_proba(ev.paths).tolist()
    for wrong in ev.misclassified:
        assert wrong["true"] == Path(wrong["path"]).parent.name


def test_evaluate_dataset_rejects_a_class_the_model_does_not_know(trained, tmp_path):
    _, model_path, _, _ = trained
    root = make_dataset(tmp_path / "other", {"": 2}, classes=("ring", "triangle"))
    with pytest.raises(DatasetError, match="triangle"):
        evaluate_dataset(imgclf.load(model_path), root)


@pytest.fixture(scope="module")
def flat(tmp_path_factory):
    root = make_dataset(tmp_path_factory.mktemp("flat") / "data", {"": 10})
    model_path = root.parent / "flat.imgclf"
    config = tiny_train_config()
    return root, model_path, config, train(root, model_path, config)


def test_flat_layout_trains_and_evaluates_on_the_carved_testing_split(flat):
    root, model_path, config, result = flat
    ds = scan_dataset(root, val_split=config.val_split, test_split=config.test_split, seed=config.seed)
    assert ds.layout == "flat"
    testing = sorted(s.path for s in ds.splits["testing"])
    others = {s.path for split in ("training", "validation") for s in ds.splits[split]}
    assert len(testing) == 2 * round(10 * config.test_split) and not others & set(testing)
    ev = result.evaluation
    assert sorted(ev.paths) == testing
    assert ev.report["macro avg"]["support"] == len(testing)
    assert ev.report["ring"]["support"] == ev.report["square"]["support"] == len(testing) // 2
    info = imgclf.inspect(model_path)
    assert info["data"]["layout"] == "flat"
    assert info["data"]["counts"]["testing"] == {"ring": 2, "square": 2}
    assert sum(info["data"]["counts"]["training"].values()) == 20 - 4 - 2 * round(10 * config.val_split)


def test_evaluate_dataset_on_a_flat_folder_scores_only_the_held_out_testing_split(flat):
    root, model_path, _, result = flat
    ev = evaluate_dataset(imgclf.load(model_path), root)
    assert sorted(ev.paths) == sorted(result.evaluation.paths) and len(ev.paths) == 4
    assert ev.report == result.evaluation.report  # the split training scored, not all 20 images
    val = evaluate_dataset(imgclf.load(model_path), root, split="validation")
    assert len(val.paths) == 2 and not set(val.paths) & set(ev.paths)


def test_evaluate_dataset_on_a_flat_folder_with_split_all_uses_every_image(flat):
    root, model_path, _, _ = flat
    ev = evaluate_dataset(imgclf.load(model_path), root, split="all")
    assert len(ev.paths) == 20 and ev.report["macro avg"]["support"] == 20
    assert sorted(ev.paths) == sorted(str(p) for p in root.rglob("*.*") if p.is_file())


def test_evaluate_refuses_a_flat_folder_whose_split_cannot_be_reproduced(flat, tmp_path):
    import shutil

    root, model_path, _, _ = flat
    changed = shutil.copytree(root, tmp_path / "changed")
    (changed / "ring" / "ring_000.png").unlink()
    with pytest.raises(DatasetError, match="did not train on: its files differ.*--split all"):
        evaluate_dataset(imgclf.load(model_path), changed)
    assert len(evaluate_dataset(imgclf.load(model_path), changed, split="all").paths) == 19


def test_evaluate_progress_counts_decoding_and_classifying(flat):
    root, model_path, _, _ = flat
    seen: dict[str, list[int]] = {}

    def factory(what, total):
        seen[what] = [total, 0]
        return lambda n: seen[what].__setitem__(1, seen[what][1] + n)

    evaluate_dataset(imgclf.load(model_path), root, split="all", progress=factory, batch_size=8)
    assert seen == {"decoding all": [20, 20], "classifying": [20, 20]}


def test_train_rejects_bad_architecture_args_before_looking_at_the_data(tmp_path):
    config = tiny_train_config(arch_args={"widths": "oops"})
    with pytest.raises(UsageError, match="widths"):  # not DatasetError: the recipe is checked first
        train(tmp_path / "no-such-dataset", tmp_path / "m.imgclf", config)
    with pytest.raises(UsageError):
        train(
            tmp_path / "no-such-dataset", tmp_path / "m.imgclf", tiny_train_config(arch_args={"widths": []})
        )


def test_train_refuses_an_unwritable_model_folder_before_training(tiny_dataset, tmp_path):
    with pytest.raises(StorageError):
        train(tiny_dataset, tmp_path / "missing" / "m.imgclf", tiny_train_config())
    assert not (tmp_path / "missing").exists()
    assert not any(name.endswith("-run") for name in os.listdir(tmp_path))


def test_imgclf_train_stays_the_function_after_importing_the_pipeline():
    code = "import imgclf.training.pipeline, imgclf.training.loop, imgclf; print(callable(imgclf.train))"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True"


def test_train_without_matplotlib_skips_the_plot_with_a_warning(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the optional dependency were not installed
    notes: list[str] = []
    result = train(tiny_dataset, tmp_path / "m.imgclf", tiny_train_config(), log=notes.append)
    assert "plot" not in result.outputs and not (tmp_path / "m-run" / "plot.png").exists()
    assert any("matplotlib" in n for n in notes)
    assert (tmp_path / "m.imgclf").is_file() and (tmp_path / "m-run" / "report.json").is_file()


def test_an_explicit_plot_without_matplotlib_is_refused_before_training(tiny_dataset, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(UsageError, match="matplotlib"):
        train(tiny_dataset, tmp_path / "m.imgclf", tiny_train_config(), plot_path=tmp_path / "plot.png")
    assert list(tmp_path.iterdir()) == [tiny_dataset]


def test_a_useless_saved_model_is_warned_about_naming_the_saved_epoch(tiny_dataset, tmp_path):
    notes: list[str] = []
    # lr 1e-9: the weights stay at their initialisation, which answers one class for everything
    train(tiny_dataset, tmp_path / "m.imgclf", tiny_train_config(epochs=1, lr=1e-9), log=notes.append)
    assert "note: the model file holds epoch 1 of 1 (--keep best by val_loss)" in notes
    warned = [n for n in notes if n.startswith("warning: the saved model predicts")]
    assert len(warned) == 1 and "for 12 of 12 testing images" in warned[0] and "saved epoch 1" in warned[0]


def test_the_library_shows_progress_on_a_terminal_by_default_and_not_when_off(tiny_dataset, tmp_path, capsys):
    import sys

    class Terminal:  # stderr as a terminal: progress is on by default, as Keras' fit shows it
        def __init__(self, stream):
            self.stream = stream

        def isatty(self):
            return True

        def __getattr__(self, name):
            return getattr(self.stream, name)

    seen: list[int] = []

    class Count(imgclf.Callback):
        def on_epoch_end(self, state, record):
            seen.append(int(record["epoch"]))

    real = sys.stderr
    sys.stderr = Terminal(real)
    try:
        imgclf.train(tiny_dataset, tmp_path / "a.imgclf", tiny_train_config(epochs=1), callbacks=[Count()])
    finally:
        sys.stderr = real
    out, err = capsys.readouterr()
    assert out == "" and seen == [1]
    assert "epoch   1/1  loss" in err and "note: the model file holds epoch 1" in err
    imgclf.train(tiny_dataset, tmp_path / "b.imgclf", tiny_train_config(epochs=1), progress=False)
    assert capsys.readouterr() == ("", "")


def test_train_result_repr_is_one_short_line(tiny_model):
    text = repr(tiny_model.result)
    assert len(text) < 300 and "\n" not in text
    assert text.startswith("TrainResult(model_path=") and "epoch=" in text and "accuracy=" in text
    assert imgclf.EpochProgress.__mro__[1] is imgclf.Callback


def test_train_takes_run_options_whole_or_by_keyword(tiny_dataset, tmp_path):
    from imgclf.errors import ResumeError

    options = imgclf.RunOptions(run_dir=tmp_path / "no-run", resume=True)
    # The options reach the checks: resuming a run folder that does not exist, before any work.
    with pytest.raises(ResumeError):
        train(tiny_dataset, tmp_path / "m.imgclf", tiny_train_config(), options)
    with pytest.raises(ResumeError):
        train(tiny_dataset, tmp_path / "m.imgclf", tiny_train_config(), run_dir=options.run_dir, resume=True)
    with pytest.raises(TypeError, match="unknown run option 'plot' \\(did you mean 'plot_path'\\?\\)"):
        train(tiny_dataset, tmp_path / "m.imgclf", tiny_train_config(), options, plot="p.png")
    assert not (tmp_path / "no-run").exists() and not (tmp_path / "m.imgclf").exists()
