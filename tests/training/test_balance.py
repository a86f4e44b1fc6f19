"""Class imbalance: counts and the warning, both balance modes' effect on the gradient, exact resumes,
the balanced measures against scikit-learn, and keep-best judged by balanced accuracy."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import imgclf
from helpers import assert_same_tensors, make_dataset, tiny_train_config
from imgclf.errors import Interrupted
from imgclf.evaluation import class_balanced_scores, evaluate_probabilities
from imgclf.training.balance import (
    class_counts,
    class_weights,
    count_lines,
    imbalance_warning,
    keep_monitor,
    sampler_order,
)
from imgclf.training.loop import Callback
from imgclf.training.pipeline import resume_run, train

sklearn_metrics = pytest.importorskip("sklearn.metrics")


def _imbalanced(root: Path, big: int = 12, small: int = 3) -> Path:
    make_dataset(root, {"training": big, "validation": 3}, classes=("ring",))
    make_dataset(root, {"training": small, "validation": 3}, seed=1, classes=("square",))
    return root


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory) -> Path:
    return _imbalanced(tmp_path_factory.mktemp("imb") / "data")


def test_counts_per_split_are_logged_and_imbalance_warns_with_advice(imbalanced, tmp_path):
    notes: list[str] = []
    train(imbalanced, tmp_path / "m.imgclf", tiny_train_config(epochs=1), log=notes.append)
    assert "class counts, training: ring 10, square 2" in notes  # testing carved out of training
    assert "class counts, validation: ring 3, square 3" in notes
    assert "class counts, testing: ring 2, square 1" in notes
    warning = next(n for n in notes if n.startswith("warning: classes are imbalanced"))
    assert "'ring' has 10 images, 'square' 2 (5.0x)" in warning and "--balance weights" in warning
    assert "note: the model file holds epoch 1 of 1 (--keep best by val_balanced_accuracy)" in notes


def test_the_warning_needs_more_than_three_times_and_becomes_a_note_when_balanced():
    assert imbalance_warning({"a": 9, "b": 3}, "none") is None
    assert imbalance_warning({"a": 10, "b": 3}, "none").startswith("warning: ")
    assert imbalance_warning({"a": 10, "b": 3}, "sampler").startswith("note: ")
    assert "none of the smallest" in imbalance_warning({"a": 10, "b": 0}, "none")
    # the advice names first the mode measured steadier with the recipe (docs/performance.md)
    assert "train with --balance sampler (or --balance weights)" in imbalance_warning(
        {"a": 10, "b": 3}, "none"
    )
    stable = imbalance_warning({"a": 10, "b": 3}, "none", "stable")
    assert "train with --balance weights (or --balance sampler)" in stable
    assert count_lines({"training": {"a": 1, "b": 2}, "testing": {"a": 0, "b": 0}}) == ["training: a 1, b 2"]


def test_weights_equal_scikit_learns_balanced_class_weights():
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.array([0] * 9 + [1] * 3 + [2] * 5)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=labels)
    assert torch.allclose(class_weights(labels, 3), torch.tensor(expected, dtype=torch.float32))


def test_weighted_loss_gradient_gives_every_class_an_equal_share():
    """With balanced weights the gradient is that of the mean over classes of each class's mean loss."""
    torch.manual_seed(0)
    labels = np.array([0] * 9 + [1] * 3)
    x, w = torch.randn(12, 4), torch.randn(4, 2, requires_grad=True)
    y = torch.from_numpy(labels)
    F.cross_entropy(x @ w, y, weight=class_weights(labels, 2)).backward()
    weighted = w.grad.clone()
    w.grad = None
    per = F.cross_entropy(x @ w, y, reduction="none")
    ((per[y == 0].mean() + per[y == 1].mean()) / 2).backward()
    assert torch.allclose(weighted, w.grad, atol=1e-6)
    w.grad = None
    F.cross_entropy(x @ w, y).backward()
    assert not torch.allclose(weighted, w.grad, atol=1e-3)  # the plain mean is dominated by class 0


def test_weighted_batch_losses_average_to_the_class_balanced_loss_of_the_epoch():
    """Each batch's weighted loss is divided by its image count, so over an epoch's batches the losses
    (and gradients) average to the class-balanced loss; dividing each by its weights' sum (PyTorch's
    weighted mean) gives the rare class far less than half when most batches hold none or one of it."""
    from imgclf.training.loop import _Epochs

    labels = np.array([0] * 60 + [1] * 4)
    torch.manual_seed(2)
    logits, y = torch.randn(64, 2, requires_grad=True), torch.from_numpy(labels)
    epochs = _Epochs.__new__(_Epochs)
    epochs.config = tiny_train_config(balance="weights")
    epochs.train, epochs.device, epochs.class_weight = (
        type("T", (), {"labels": labels})(),
        torch.device("cpu"),
        None,
    )
    order = torch.randperm(64, generator=torch.Generator().manual_seed(5))
    batch_losses = [epochs.loss(logits[b], y[b]) for b in order.view(8, 8)]
    torch.stack(batch_losses).mean().backward()
    per = F.cross_entropy(logits.detach(), y, reduction="none")
    balanced = (per[y == 0].mean() + per[y == 1].mean()) / 2
    assert torch.allclose(torch.stack(batch_losses).mean(), balanced, atol=1e-6)
    reference = logits.detach().clone().requires_grad_(True)
    ref = F.cross_entropy(reference, y, reduction="none")
    ((ref[y == 0].mean() + ref[y == 1].mean()) / 2).backward()
    assert torch.allclose(logits.grad, reference.grad, atol=1e-7)
    w = class_weights(labels, 2)[y]
    by_weight_sum = [(w[b] * per[b]).sum() / w[b].sum() for b in order.view(8, 8)]
    assert not torch.allclose(torch.stack(by_weight_sum).mean(), balanced, atol=1e-2)


def test_sampler_draws_classes_equally_and_repeats_from_the_same_generator_state():
    labels = np.array([0] * 90 + [1] * 10)
    gen = torch.Generator().manual_seed(3)
    start = gen.get_state()
    order = sampler_order(labels, 2, 20_000, gen)
    share = float((torch.from_numpy(labels)[order] == 1).float().mean())
    assert 0.47 < share < 0.53  # 10 % of the images, half of the draws
    gen.set_state(start)
    assert torch.equal(order, sampler_order(labels, 2, 20_000, gen))


def test_balanced_measures_equal_scikit_learns():
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    y_pred[y_pred == 3] = 2  # class 3 never predicted: zero_division matters
    probs = np.eye(4)[y_pred]
    ev = evaluate_probabilities(probs, y_true, [str(i) for i in range(200)], list("abcd"))
    assert ev.balanced_accuracy == pytest.approx(sklearn_metrics.balanced_accuracy_score(y_true, y_pred))
    assert ev.macro_f1 == pytest.approx(
        sklearn_metrics.f1_score(y_true, y_pred, average="macro", labels=range(4), zero_division=0)
    )
    assert ev.to_dict()["balanced_accuracy"] == ev.balanced_accuracy
    scores = class_balanced_scores(ev.confusion, prefix="val_")
    assert scores == {"val_balanced_accuracy": ev.balanced_accuracy, "val_macro_f1": ev.macro_f1}


def test_balanced_accuracy_leaves_out_a_class_without_images_as_scikit_learn_does():
    """A class never true (but predicted) is left out of the mean recall and counts 0 in macro-F1; no
    images at all score 0."""
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 3, 1, 1, 1, 3])
    confusion = np.zeros((4, 4), np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    with pytest.warns(UserWarning):  # scikit-learn warns that class 3 is predicted but never true
        expected = sklearn_metrics.balanced_accuracy_score(y_true, y_pred)
    scores = class_balanced_scores(confusion)
    assert scores["balanced_accuracy"] == pytest.approx(expected) == pytest.approx((1 / 3 + 1 + 0) / 3)
    assert scores["macro_f1"] == pytest.approx(
        sklearn_metrics.f1_score(y_true, y_pred, average="macro", labels=range(4), zero_division=0)
    )
    assert class_balanced_scores(np.zeros((3, 3))) == {"balanced_accuracy": 0.0, "macro_f1": 0.0}
    assert class_balanced_scores(np.zeros((0, 0))) == {"balanced_accuracy": 0.0, "macro_f1": 0.0}


def test_keep_best_judges_imbalanced_data_by_balanced_accuracy():
    config = tiny_train_config()
    assert keep_monitor(config, np.array([0] * 10 + [1] * 3), 2) == "val_balanced_accuracy"
    assert keep_monitor(config, np.array([0] * 9 + [1] * 3), 2) == "val_loss"
    chosen = config.replace(monitor="val_macro_f1")
    assert keep_monitor(chosen, np.array([0] * 10 + [1] * 3), 2) == "val_macro_f1"
    assert list(class_counts(np.array([[1, 0], [1, 1]]), 2)) == [2, 1]


class _SigintAt(Callback):
    def __init__(self, epoch: int, step: int) -> None:
        self.at, self.epoch = (epoch, step), 0

    def on_epoch_begin(self, epoch: int, steps: int) -> None:
        self.epoch = epoch

    def on_step_end(self, step: int, steps: int, loss: float | None) -> None:
        if (self.epoch, step) == self.at:
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.parametrize("balance", ["weights", "sampler"])
def test_both_modes_are_recorded_change_training_and_resume_exactly(balance, imbalanced, tmp_path):
    config = tiny_train_config(epochs=2, batch_size=4, balance=balance)
    for sub in ("plain", "ref"):
        (tmp_path / sub).mkdir()
    plain = train(imbalanced, tmp_path / "plain" / "m.imgclf", config.replace(balance="none"))
    ref = train(imbalanced, tmp_path / "ref" / "m.imgclf", config)
    assert ref.history[0]["loss"] != plain.history[0]["loss"]
    assert imgclf.load(ref.model_path).manifest["provenance"]["training"]["balance"] == balance
    model = tmp_path / "m.imgclf"
    with pytest.raises(Interrupted):
        train(imbalanced, model, config, callbacks=[_SigintAt(2, 1)])
    resume_run(tmp_path / "m-run")
    assert_same_tensors(imgclf.load(model).model.state_dict(), imgclf.load(ref.model_path).model.state_dict())
    run = Path(ref.run_dir)
    assert (tmp_path / "m-run" / "history.json").read_text() == (run / "history.json").read_text()


def test_weights_with_label_smoothing_weigh_each_image_by_its_own_class():
    """cross_entropy(weight=..., label_smoothing=...) would weigh every image's smoothing term by the
    rare class's large weight; the loop weighs each image's whole loss by its own class's weight."""
    from imgclf.training.loop import _Epochs

    labels = np.array([0] * 30 + [1] * 2)
    torch.manual_seed(1)
    logits, y = torch.randn(32, 2), torch.from_numpy(labels)
    epochs = _Epochs.__new__(_Epochs)
    epochs.config = tiny_train_config(balance="weights", label_smoothing=0.1)
    epochs.train, epochs.device, epochs.class_weight = (
        type("T", (), {"labels": labels})(),
        torch.device("cpu"),
        None,
    )
    got = epochs.loss(logits, y)
    w = class_weights(labels, 2)[y]
    per = F.cross_entropy(logits, y, label_smoothing=0.1, reduction="none")
    assert torch.allclose(got, (w * per).sum() / len(labels))
    assert not torch.allclose(
        got, F.cross_entropy(logits, y, weight=class_weights(labels, 2), label_smoothing=0.1)
    )
