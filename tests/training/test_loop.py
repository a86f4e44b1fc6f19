"""Tests of imgclf.training.loop through the pipeline: keep-best, early stopping, determinism, history.

The validation metric is scripted (``loop.evaluate_split`` monkeypatched) where the test must know which
epoch is best; everything else is real training of the tiny recipe.
"""

from __future__ import annotations

import csv
import json

import pytest
import torch
from safetensors.torch import load_file

import imgclf
from helpers import tiny_train_config
from imgclf.errors import UsageError
from imgclf.training import checkpoint as ckpt
from imgclf.training import loop, resume
from imgclf.training.determinism import nondeterministic_op_error
from imgclf.training.loop import fit
from imgclf.training.pipeline import train


def _script(monkeypatch, losses, accuracies=None):
    """Make validation report ``losses`` (and ``accuracies``) epoch by epoch."""
    values = iter(zip(losses, accuracies or [0.5] * len(losses), strict=True))
    monkeypatch.setattr(loop, "evaluate_split", lambda *args: next(values))


def _weights(path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in imgclf.load(path).model.state_dict().items()}


def _checkpoint_weights(run_dir, epoch: int) -> dict[str, torch.Tensor]:
    tensors = load_file(str(run_dir / "checkpoints" / ckpt.checkpoint_name(epoch)))
    return {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}


def _assert_equal_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k].float(), b[k].float()), k


@pytest.mark.parametrize(
    "monitor, losses, accuracies, best",
    [
        ("val_loss", [0.6, 0.3, 0.5, 0.4], None, 2),
        ("val_accuracy", [0.6, 0.5, 0.4, 0.3], [0.5, 0.7, 0.9, 0.8], 3),
    ],
)
def test_keep_best_saves_the_best_epochs_weights_and_records_that_epoch(
    monitor, losses, accuracies, best, tiny_dataset, tmp_path, monkeypatch
):
    _script(monkeypatch, losses, accuracies)
    config = tiny_train_config(epochs=4, keep="best", monitor=monitor)
    result = train(tiny_dataset, tmp_path / "m.imgclf", config)
    assert result.epoch == best
    info = imgclf.inspect(tmp_path / "m.imgclf")
    assert info["epoch"] == best
    provenance = imgclf.load(tmp_path / "m.imgclf").manifest["provenance"]
    assert provenance["epochs_run"] == 4 and len(provenance["history"]) == 4
    assert provenance["metrics"]["val_loss"] == losses[best - 1]  # the saved epoch's metrics
    saved = _weights(tmp_path / "m.imgclf")
    _assert_equal_weights(saved, _checkpoint_weights(tmp_path / "m-run", best))  # the best one is kept
    with pytest.raises(AssertionError):
        _assert_equal_weights(saved, _checkpoint_weights(tmp_path / "m-run", 4))


def test_keep_last_saves_the_last_epoch(tiny_dataset, tmp_path, monkeypatch):
    _script(monkeypatch, [0.6, 0.3, 0.5])
    result = train(tiny_dataset, tmp_path / "m.imgclf", tiny_train_config(epochs=3, keep="last"))
    assert result.epoch == 3 and imgclf.inspect(tmp_path / "m.imgclf")["epoch"] == 3
    _assert_equal_weights(_weights(tmp_path / "m.imgclf"), _checkpoint_weights(tmp_path / "m-run", 3))


def test_patience_stops_after_that_many_epochs_without_improvement(tiny_dataset, tmp_path, monkeypatch):
    _script(monkeypatch, [0.5, 0.3, 0.4, 0.35, 0.2, 0.1])
    config = tiny_train_config(epochs=6, patience=2, keep="best")
    result = train(tiny_dataset, tmp_path / "m.imgclf", config)
    assert [r["epoch"] for r in result.history] == [1, 2, 3, 4]  # epochs 3 and 4 did not beat epoch 2
    provenance = imgclf.load(tmp_path / "m.imgclf").manifest["provenance"]
    assert provenance["stopped_early"] is True and provenance["epochs_run"] == 4 and provenance["epoch"] == 2


def test_the_early_stopping_counter_survives_a_resume(tiny_dataset, tmp_path, monkeypatch):
    """Stopped after epoch 3 (one bad epoch) and resumed: it still stops after epoch 4, as a straight run."""
    from imgclf.data.decode import load_split
    from imgclf.data.folders import scan_dataset
    from imgclf.training.state import create_state

    config = tiny_train_config(epochs=6, patience=2)
    split = load_split(scan_dataset(tiny_dataset).splits["training"], config.preprocess)
    _script(monkeypatch, [0.5, 0.3, 0.4, 0.35, 0.2, 0.1])
    state = create_state(config, 2)
    state = fit(config, state, split, split, should_stop=lambda: state.epoch == 3)
    assert (state.epoch, state.best_epoch, state.bad_epochs, state.interrupted) == (3, 2, 1, True)
    path = ckpt.write_checkpoint(tmp_path, state, config, {"run_id": "r", "class_names": ["a", "b"]})
    resumed = create_state(config, 2)
    resume.restore(resumed, ckpt.read_checkpoint(path), log=pytest.fail)
    assert (resumed.best_epoch, resumed.best_metric, resumed.bad_epochs) == (2, 0.3, 1)
    resumed = fit(config, resumed, split, split)
    assert resumed.stopped_early and resumed.epoch == 4 and len(resumed.history) == 4


def test_history_is_deterministic_and_timings_live_apart(tiny_model):
    run_dir = tiny_model.model_path.with_name("tiny-run")
    history = json.loads((run_dir / "history.json").read_text())
    assert history == tiny_model.result.history
    keys = {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr"}
    keys |= {"val_balanced_accuracy", "val_macro_f1"}
    assert all(set(r) == keys for r in history)
    with open(run_dir / "history.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert all(float(row["seconds"]) > 0 for row in rows)  # wall-clock time, for people, in the CSV only


def _tensor_digest(path) -> str:
    return imgclf.inspect(path)["integrity"]["tensors_sha256"]


def test_same_seed_gives_identical_weights_and_another_seed_does_not(tiny_dataset, tmp_path):
    config = tiny_train_config(epochs=2)
    first = train(tiny_dataset, tmp_path / "a.imgclf", config)
    second = train(tiny_dataset, tmp_path / "b.imgclf", config)
    assert _tensor_digest(tmp_path / "a.imgclf") == _tensor_digest(tmp_path / "b.imgclf")
    assert first.history == second.history
    train(tiny_dataset, tmp_path / "c.imgclf", config.replace(seed=2))
    assert _tensor_digest(tmp_path / "c.imgclf") != _tensor_digest(tmp_path / "a.imgclf")
    provenance = imgclf.load(tmp_path / "a.imgclf").manifest["provenance"]
    assert provenance["seed"] == 1 and provenance["device"] == "cpu" and provenance["deterministic"] is False
    assert provenance["versions"]["torch"] == torch.__version__


def test_deterministic_on_the_cpu_changes_nothing_and_leaves_torch_as_it_was(tiny_dataset, tmp_path):
    config = tiny_train_config(epochs=2)
    train(tiny_dataset, tmp_path / "a.imgclf", config)
    train(tiny_dataset, tmp_path / "b.imgclf", config.replace(deterministic=True))
    assert _tensor_digest(tmp_path / "a.imgclf") == _tensor_digest(tmp_path / "b.imgclf")
    assert imgclf.load(tmp_path / "b.imgclf").manifest["provenance"]["deterministic"] is True
    assert not torch.are_deterministic_algorithms_enabled()


def test_an_op_without_a_deterministic_kernel_is_a_one_line_usage_error_naming_it(tiny_dataset, monkeypatch):
    from imgclf.data.decode import load_split
    from imgclf.data.folders import scan_dataset
    from imgclf.training.state import create_state

    real = loop.augment_batch

    def augment_with_put(x, spec, mats):
        torch.zeros(4).put_(torch.tensor([0, 0]), torch.ones(2))  # no deterministic CPU kernel
        return real(x, spec, mats)

    monkeypatch.setattr(loop, "augment_batch", augment_with_put)
    config = tiny_train_config(epochs=1)
    split = load_split(scan_dataset(tiny_dataset).splits["training"], config.preprocess)
    fit(config, create_state(config, 2), split)  # fine without --deterministic
    with pytest.raises(UsageError) as info:
        fit(config.replace(deterministic=True), create_state(config, 2), split)
    message = str(info.value)
    assert "'put_'" in message and "no deterministic implementation" in message and "\n" not in message
    assert info.value.exit_code == 2
    assert not torch.are_deterministic_algorithms_enabled()  # restored even on error


def test_nondeterministic_op_error_names_the_op_and_ignores_other_errors():
    text = (
        "adaptive_max_pool2d_backward_cuda does not have a deterministic implementation, but you set "
        "'torch.use_deterministic_algorithms(True)'. You can turn off determinism just for this operation"
    )
    error = nondeterministic_op_error(RuntimeError(text), "cuda:0")
    assert (
        error is not None and "'adaptive_max_pool2d_backward_cuda'" in str(error) and "cuda:0" in str(error)
    )
    assert nondeterministic_op_error(RuntimeError("CUDA out of memory"), "cuda") is None
