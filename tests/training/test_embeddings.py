"""The linear probe's embedding tables on disk: reused across runs, keyed by backbone and data."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import make_dataset, run_cli, tiny_train_config
from imgclf.config import AugmentSpec
from imgclf.data.decode import DecodedSplit
from imgclf.models import registry
from imgclf.training import embeddings
from imgclf.training.embeddings import EmbeddingCache, Embeddings, embeddings_folder, table_key
from imgclf.training.pipeline import train

CONFIG = tiny_train_config(linear_probe=True, epochs=2, augment=AugmentSpec(enabled=False))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("emb") / "data", {"training": 6, "validation": 2})


@pytest.fixture
def computed(monkeypatch) -> list[int]:
    """Counts the backbone passes over the training images (one per table computed)."""
    calls: list[int] = []
    real = Embeddings._compute

    def counting(self, model, images, *args, **kwargs):
        calls.append(len(images))
        return real(self, model, images, *args, **kwargs)

    monkeypatch.setattr(Embeddings, "_compute", counting)
    return calls


def _run(dataset, path, cache_dir, notes=None, **kwargs):
    log = notes.append if notes is not None else (lambda _m: None)
    result = train(dataset, path, CONFIG, cache_dir=cache_dir, log=log, **kwargs)
    return result.classifier.model.state_dict(), result.history


def test_a_second_run_reuses_the_stored_embeddings_and_trains_the_very_same_model(
    dataset, tmp_path, computed
):
    cache = tmp_path / "cache"
    first, first_history = _run(dataset, tmp_path / "a.imgclf", cache)
    (n,) = computed
    assert len(list(embeddings_folder(cache).glob("*.npy"))) == 1
    notes: list[str] = []
    second, second_history = _run(dataset, tmp_path / "b.imgclf", cache, notes)
    assert computed == [n]  # the backbone did not run over the training images again
    assert any("reusing the backbone's embeddings" in n for n in notes), notes
    uncached, uncached_history = _run(dataset, tmp_path / "c.imgclf", cache, use_cache=False)
    assert computed == [n, n]
    for k in first:
        assert torch.equal(first[k], second[k]) and torch.equal(first[k], uncached[k]), k
    assert first_history == second_history == uncached_history
    info = json.loads(run_cli("cache", "info", "--cache-dir", cache, "--json")[1])
    assert info["embeddings"] == 1
    assert run_cli("cache", "clear", "--cache-dir", cache)[0] == 0
    assert not (cache / "embeddings").exists()
    _run(dataset, tmp_path / "d.imgclf", cache)
    assert computed == [n, n, n]  # computed again after the clear


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_bytes(p.read_bytes()[:100]),  # truncated
        lambda p: np.save(p, np.zeros((3, 16), np.float32)),  # another table's row count
        lambda p: np.save(p, np.zeros((12, 16), np.float64)),  # wrong dtype
        lambda p: p.write_bytes(b"not an npy file"),
    ],
    ids=["truncated", "rows", "dtype", "garbage"],
)
def test_a_damaged_table_is_ignored_with_a_note_and_recomputed(dataset, tmp_path, computed, damage):
    cache = tmp_path / "cache"
    first, _ = _run(dataset, tmp_path / "a.imgclf", cache)
    (table,) = embeddings_folder(cache).glob("*.npy")
    damage(table)
    notes: list[str] = []
    again, _ = _run(dataset, tmp_path / "b.imgclf", cache, notes)
    assert len(computed) == 2
    assert any(n.startswith("note: ignoring the damaged embedding cache file") for n in notes), notes
    for k in first:
        assert torch.equal(first[k], again[k]), k
    assert np.load(table).shape[0] == computed[0]  # rewritten whole


def _split(paths, digests, seed=0) -> DecodedSplit:
    images = np.random.default_rng(seed).integers(0, 255, (len(paths), 32, 32, 3), dtype=np.uint8)
    return DecodedSplit(images, np.zeros(len(paths), np.int64), list(paths), list(digests))


def test_the_key_changes_with_the_backbone_the_data_and_the_spec_but_not_with_the_head():
    torch.manual_seed(0)
    model = registry.build("small_cnn", 2, (32, 32), {"widths": [8, 16]})
    cpu, fmt = torch.device("cpu"), torch.contiguous_format
    split = _split(["a.png", "b.png"], ["d1", "d2"])
    key = table_key(CONFIG, model, split, cpu, fmt)
    assert table_key(CONFIG, model, split, cpu, fmt) == key
    head = embeddings.head_module(model)
    with torch.no_grad():
        head.weight.add_(1.0)  # a new head (another class list) keeps the table
    assert table_key(CONFIG, model, split, cpu, fmt) == key
    changed = [
        table_key(CONFIG, model, _split(["a.png", "b.png"], ["d1", "d3"]), cpu, fmt),  # a file's content
        table_key(CONFIG, model, _split(["a.png", "c.png"], ["d1", "d2"]), cpu, fmt),  # the file list
        table_key(CONFIG, model, _split(["a.png"], ["d1"]), cpu, fmt),
        table_key(
            CONFIG.replace(preprocess=dataclasses.replace(CONFIG.preprocess, mean=(0.5, 0.5, 0.5))),
            model,
            split,
            cpu,
            fmt,
        ),
        table_key(CONFIG.replace(arch_args={"widths": [8, 16], "dropout": 0.1}), model, split, cpu, fmt),
        table_key(CONFIG, model, split, cpu, torch.channels_last),
    ]
    backbone = next(p for n, p in model.named_parameters() if not n.startswith("head"))
    with torch.no_grad():
        backbone.view(-1)[0] += 1e-6  # other weights, e.g. another --weights file
    changed.append(table_key(CONFIG, model, split, cpu, fmt))
    assert len({key, *changed}) == len(changed) + 1
    undigested = _split(["a.png", "b.png"], ["", ""])
    other_pixels = _split(["a.png", "b.png"], ["", ""], seed=1)
    assert table_key(CONFIG, model, undigested, cpu, fmt) != table_key(CONFIG, model, other_pixels, cpu, fmt)


def test_a_table_that_cannot_be_written_only_costs_a_note(tmp_path):
    (tmp_path / "embeddings").write_text("a file where the folder should be")
    notes: list[str] = []
    cache = EmbeddingCache(tmp_path, log=notes.append)
    cache.store("k", torch.zeros(2, 3))
    assert cache.load("k", 2, 3) is None and notes and "could not store the embeddings" in notes[0]


def test_a_new_process_reuses_the_table_from_the_command_line(dataset, tmp_path, computed):
    import os
    import subprocess
    import sys

    import imgclf

    cache = tmp_path / "cache"
    _run(dataset, tmp_path / "a.imgclf", cache)
    flags = ["--arch", "small_cnn", "--arch-arg", "widths=[8,16]", "--size", "32", "--epochs", "2"]
    flags += ["--batch-size", "8", "--precision", "fp32", "--device", "cpu", "--seed", "1", "--no-augment"]
    src = str(Path(imgclf.__file__).parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    model = tmp_path / "b.imgclf"
    args = ["train", "--dataset", dataset, "--model", model, "--linear-probe", "--cache-dir", cache, *flags]
    proc = subprocess.run(
        [sys.executable, "-m", "imgclf", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "linear probe: reusing the backbone's embeddings" in proc.stderr
