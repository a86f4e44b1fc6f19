"""InferenceQueue: one worker thread, batches gathered only while more requests are on their way."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

from imgclf.serving.batching import InferenceQueue, QueueFull


def px(names: list[bytes]) -> np.ndarray:
    """A uint8 batch (N, 1, 1, 3) whose pixels spell one-letter image names."""
    return np.array([[[[ord(n)] * 3]] for n in names], dtype=np.uint8)


class FakeClassifier:
    """Answers each image with its own name; records the batches it was given."""

    num_classes = 2

    def __init__(self) -> None:
        self.batches: list[list[bytes]] = []
        self.release = threading.Event()
        self.release.set()

    def predict_proba_flagged(self, images, batch_size):
        self.release.wait(10)
        names = [bytes([int(v)]) for v in images[:, 0, 0, 0]]
        self.batches.append(names)
        return np.array([f"pred {n.decode()}" for n in names], dtype=object), None

    def predict_proba_input(self, x):
        return np.array(["tensor"] * len(x), dtype=object)


@pytest.fixture
def model():
    return SimpleNamespace(classifier=FakeClassifier())


def run_queue(delay_s: float, active) -> InferenceQueue:
    queue = InferenceQueue(max_queue=16, batch_delay_s=delay_s, active=active)
    queue.start()
    return queue


def test_a_lone_request_never_waits_out_the_batch_delay(model):
    queue = run_queue(30.0, active=lambda: 1)  # one request in progress: the one queued
    try:
        started = time.monotonic()
        assert queue.submit(model, px([b"a"])).result(timeout=10)[0].tolist() == ["pred a"]
        assert time.monotonic() - started < 10  # not the 30 s delay
    finally:
        queue.stop()


def test_requests_still_arriving_are_gathered_into_one_batch(model):
    active = {"n": 3}
    queue = run_queue(30.0, active=lambda: active["n"])
    try:
        first = queue.submit(model, px([b"a"]))
        time.sleep(0.2)  # the worker holds "a", waiting for the two others in progress
        rest = [queue.submit(model, px([b"b"])), queue.submit(model, px([b"c", b"d"]))]
        assert first.result(timeout=10)[0].tolist() == ["pred a"]
        assert [f.result(timeout=10)[0].tolist() for f in rest] == [["pred b"], ["pred c", "pred d"]]
        assert model.classifier.batches == [[b"a", b"b", b"c", b"d"]]
    finally:
        queue.stop()


def test_gathering_stops_when_the_requests_in_progress_have_all_queued(model):
    queue = run_queue(30.0, active=lambda: 2)
    try:
        started = time.monotonic()
        first = queue.submit(model, px([b"a"]))
        time.sleep(0.2)  # the worker holds "a" for the other request in progress
        second = queue.submit(model, px([b"b"]))
        assert [f.result(timeout=10)[0].tolist() for f in (first, second)] == [["pred a"], ["pred b"]]
        assert time.monotonic() - started < 10  # both in: no waiting out the 30 s
        assert model.classifier.batches == [[b"a", b"b"]]
    finally:
        queue.stop()


def test_without_a_delay_every_request_is_its_own_batch(model):
    model.classifier.release.clear()
    queue = run_queue(0.0, active=lambda: 3)
    try:
        futures = [queue.submit(model, px([name])) for name in (b"a", b"b", b"c")]
        model.classifier.release.set()
        assert [f.result(timeout=10)[0].tolist() for f in futures] == [["pred a"], ["pred b"], ["pred c"]]
        assert [b for b in model.classifier.batches if b != [b"a"]] == [[b"b"], [b"c"]]
    finally:
        queue.stop()


def test_a_cancelled_request_is_dropped_before_its_batch_runs(model):
    model.classifier.release.clear()
    queue = run_queue(0.0, active=None)
    try:
        running = queue.submit(model, px([b"a"]))
        time.sleep(0.2)  # "a" is running (held); the next two wait in the queue
        gone, kept = queue.submit(model, px([b"b"])), queue.submit(model, px([b"c"]))
        assert gone.cancel()
        model.classifier.release.set()
        assert running.result(timeout=10)[0].tolist() == ["pred a"]
        assert kept.result(timeout=10)[0].tolist() == ["pred c"]
        assert [b"b"] not in model.classifier.batches
    finally:
        queue.stop()


def test_a_full_queue_refuses_new_work(model):
    model.classifier.release.clear()
    queue = InferenceQueue(max_queue=2)
    queue.start()
    try:
        queue.submit(model, px([b"a"]))
        time.sleep(0.2)  # "a" is running; the queue itself is empty again
        queue.submit(model, px([b"b", b"c"]))
        with pytest.raises(QueueFull):
            queue.submit(model, px([b"d"]))
    finally:
        model.classifier.release.set()
        queue.stop()


def test_gathering_past_a_queued_tensor_job_takes_the_right_job(model):
    """Jobs are found by identity: comparing a job's arrays with ``==`` broke the worker thread."""
    queue = run_queue(30.0, active=lambda: 3)
    try:
        first = queue.submit(model, px([b"a"]))
        time.sleep(0.2)  # the worker holds "a", gathering
        tensor = queue.submit(model, tensor=np.zeros((2, 3, 1, 1), np.float32))
        second = queue.submit(model, px([b"b", b"c"]))
        assert [f.result(timeout=10)[0].tolist() for f in (first, second)] == [
            ["pred a"],
            ["pred b", "pred c"],
        ]
        assert tensor.result(timeout=10).tolist() == ["tensor", "tensor"]
        assert model.classifier.batches == [[b"a", b"b", b"c"]]
    finally:
        queue.stop()
