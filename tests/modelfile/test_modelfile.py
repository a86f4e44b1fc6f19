"""Saving and loading the model file: round trips, portable saved weights, save-side refusals, inspect."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import imgclf
from helpers import CLASSES, assert_same_tensors, make_classifier, manifest_of, split, tensors_of
from imgclf import modelfile
from imgclf.classifier import Classifier
from imgclf.errors import ModelFileError, UsageError
from imgclf.modelfile.digests import canonical_json
from imgclf.modelfile.provenance import MAX_PROVENANCE_BYTES
from imgclf.models import registry


def _images(n: int = 20, seed: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(24 + i, 30 - i, 3), dtype=np.uint8) for i in range(n)]


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


# --- round trips -----------------------------------------------------------------------------------------


def test_save_load_round_trip_is_bitwise(tmp_path):
    clf = make_classifier(seed=5)
    path = tmp_path / "m.imgclf"
    imgclf.save(clf, path)
    loaded = imgclf.load(path)
    assert_same_tensors(_state(clf.model), _state(loaded.model))
    assert loaded.class_names == list(CLASSES) and loaded.preprocess == clf.preprocess
    assert loaded.arch == "small_cnn" and loaded.arch_args == {"widths": [4, 8], "reg": 0.0001}
    assert np.array_equal(loaded.predict_proba(_images()), clf.predict_proba(_images()))


def test_logits_are_bitwise_identical_in_a_fresh_process(tmp_path):
    """A33: save here, load in a new interpreter, same probabilities to the last bit on 20 fixed images."""
    clf = make_classifier(seed=9, size=24)
    path = tmp_path / "m.imgclf"
    imgclf.save(clf, path)
    np.save(tmp_path / "images.npy", np.stack([np.resize(im, (28, 28, 3)) for im in _images()]))
    script = textwrap.dedent(
        f"""
        import numpy as np, imgclf
        images = np.load({str(tmp_path / "images.npy")!r})
        probs = imgclf.load({str(path)!r}).predict_proba(list(images))
        np.save({str(tmp_path / "probs.npy")!r}, probs)
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    images = np.load(tmp_path / "images.npy")
    expected = clf.predict_proba(list(images))
    got = np.load(tmp_path / "probs.npy")
    assert got.dtype == expected.dtype and got.tobytes() == expected.tobytes()


def test_any_safetensors_reader_opens_the_file(tmp_path):
    from safetensors import safe_open

    clf = make_classifier()
    path = tmp_path / "m.imgclf"
    imgclf.save(clf, path)
    with safe_open(str(path), framework="pt") as f:
        manifest = json.loads(f.metadata()["imgclf"])
        assert manifest["format"] == "imgclf" and manifest["format_version"] == 2
        assert torch.equal(f.get_tensor("model.head.weight"), clf.model.head.weight.detach())
        names = set(f.keys())
    assert {n for n in names if n.startswith("probe.")} == {
        f"probe.{i}{s}" for i in range(4) for s in ("", ".input")
    }
    assert all(n.startswith(("model.", "probe.")) for n in names)


def test_saving_twice_gives_the_same_bytes():
    clf = make_classifier()
    clf.manifest["provenance"] = {"created": "2024-01-01T00:00:00+00:00"}
    assert modelfile.serialize(clf) == modelfile.serialize(clf)


# --- what gets saved: unwrapped, float32, contiguous, CPU ---------------------------------------------------


class _Wrapper(nn.Module):
    """Stands in for DistributedDataParallel: the real model under ``module``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.module = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


class _CompiledLike(nn.Module):
    """Holds the model as ``_orig_mod``, as ``torch.compile`` does, without compiling (a fast stand-in)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self._orig_mod = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._orig_mod(x)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # importing torch.compile's machinery
@pytest.mark.parametrize(
    "wrap", ["ddp_like", "data_parallel", "compiled_like", "compiled_like_ddp", "compiled", "compiled_ddp"]
)
def test_weights_are_saved_without_wrapper_prefixes(wrap, tmp_path):
    clf = make_classifier(seed=2)
    inner = clf.model
    wrapped = {
        "ddp_like": lambda: _Wrapper(inner),
        "data_parallel": lambda: nn.DataParallel(inner),
        "compiled_like": lambda: _CompiledLike(inner),
        "compiled_like_ddp": lambda: _CompiledLike(_Wrapper(inner)),
        "compiled": lambda: torch.compile(inner),
        "compiled_ddp": lambda: torch.compile(_Wrapper(inner)),
    }[wrap]()
    assert any(k.startswith(("module.", "_orig_mod.")) for k in wrapped.state_dict())
    clf.model = wrapped
    path = tmp_path / "m.imgclf"
    imgclf.save(clf, path)
    names = tensors_of(path.read_bytes())
    assert not any("module." in k or "_orig_mod" in k for k in names)
    assert torch.equal(imgclf.load(path).model.head.weight, inner.head.weight.detach())


def test_bf16_channels_last_weights_are_saved_as_contiguous_float32_and_load_on_cpu(tmp_path):
    """A34: whatever precision/layout training used, the file holds contiguous float32 CPU tensors."""
    clf = make_classifier(seed=4)
    clf.model = clf.model.to(torch.bfloat16).to(memory_format=torch.channels_last)
    path = tmp_path / "m.imgclf"
    imgclf.save(clf, path)
    header, _ = split(path.read_bytes())
    dtypes = {v["dtype"] for k, v in header.items() if k.startswith("model.")}
    assert dtypes == {"F32", "I64"}
    loaded = imgclf.load(path)
    for k, v in _state(clf.model).items():
        got = loaded.model.state_dict()[k]
        assert got.device.type == "cpu"
        assert torch.equal(got, v.float() if v.is_floating_point() else v), k
    assert imgclf.verify(path).ok


def test_a_model_with_nan_weights_is_refused_by_save_and_nothing_is_written(tmp_path):
    clf = make_classifier()
    with torch.no_grad():
        clf.model.head.weight[0, 0] = float("nan")
    path = tmp_path / "m.imgclf"
    with pytest.raises(UsageError, match="NaN or infinite"):
        imgclf.save(clf, path)
    assert not path.exists()


# --- save refuses what load would refuse -------------------------------------------------------------------


def test_save_refuses_a_model_that_does_not_match_its_architecture(tmp_path):
    clf = make_classifier()
    clf.class_names = ["a", "b", "c"]  # head still has 2 rows
    with pytest.raises(UsageError, match="does not match its architecture") as info:
        imgclf.save(clf, tmp_path / "m.imgclf")
    assert "head.weight" in str(info.value)
    assert not (tmp_path / "m.imgclf").exists()


@pytest.mark.parametrize(
    ("names", "words"),
    [
        (["ring\udcff", "square"], "lone surrogate"),  # a non-UTF-8 folder name, as os.listdir decodes it
        (["ring", "ring"], "duplicates"),
        (["", "square"], "class_names[0]"),
    ],
)
def test_save_refuses_class_names_no_reader_could_use(names, words, tmp_path):
    clf = make_classifier()
    clf.class_names = names
    with pytest.raises(UsageError, match=words.replace("[", r"\[").replace("]", r"\]")):
        imgclf.save(clf, tmp_path / "m.imgclf")


def test_save_refuses_too_many_or_too_large_extra_probes(tmp_path):
    clf = make_classifier()
    png = modelfile.probes.synthetic_images()[0]
    with pytest.raises(UsageError, match="at most 60 images"):
        imgclf.save(clf, tmp_path / "m.imgclf", extra_probes=[png] * 61)
    with pytest.raises(UsageError, match="extra probe"):
        imgclf.save(clf, tmp_path / "m.imgclf", extra_probes=[b""])


def test_a_huge_history_is_trimmed_to_fit_the_provenance_cap(tmp_path):
    clf = make_classifier()
    history = [{"epoch": i, "loss": 1.0 / (i + 1), "accuracy": 0.123456789, "lr": 0.1} for i in range(60_000)]
    clf.manifest["provenance"] = {"history": history, "epochs_run": 60_000}
    path = tmp_path / "m.imgclf"
    imgclf.save(clf, path)
    prov = manifest_of(path.read_bytes())["provenance"]
    assert 0 < len(prov["history"]) < 60_000
    assert prov["history_omitted"] + len(prov["history"]) == 60_000
    assert prov["history"][-1]["epoch"] == 59_999  # the most recent epochs are kept
    assert len(canonical_json(prov)) <= MAX_PROVENANCE_BYTES
    assert imgclf.load(path).manifest["provenance"]["history_omitted"] == prov["history_omitted"]


def test_non_finite_provenance_values_become_null(tmp_path):
    clf = make_classifier()
    clf.manifest["provenance"] = {"metrics": {"val_loss": float("nan"), "accuracy": 0.5}}
    path = tmp_path / "m.imgclf"
    imgclf.save(clf, path)
    assert manifest_of(path.read_bytes())["provenance"]["metrics"] == {"val_loss": None, "accuracy": 0.5}


# --- inspect ------------------------------------------------------------------------------------------------


def test_inspect_reports_every_field_without_building_the_model(tiny_model, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("inspect must not build the model")

    monkeypatch.setattr(registry, "build", refuse)
    info = imgclf.inspect(tiny_model.model_path)
    assert info["format"] == "imgclf" and info["format_version"] == 2
    assert info["task"] == {"type": "single_label", "thresholds": None, "balance": "none"}
    assert info["architecture"] == {"name": "small_cnn", "args": {"widths": [8, 16], "reg": 0.0001}}
    assert info["class_names"] == ["ring", "square"]
    assert info["preprocess"]["height"] == 32 and info["preprocess"]["interpolation"] == "bilinear"
    assert info["training"]["epochs"] == 2 and info["training"]["seed"] == 1
    assert set(info["metrics"]) >= {"loss", "val_loss", "testing_accuracy"}
    assert len(info["data"]["fingerprint"]) == 64 and info["data"]["counts"]["training"] == {
        "ring": 12,
        "square": 12,
    }
    assert set(info["versions"]) == {"imgclf", "torch", "pillow", "numpy", "python", "platform"}
    assert len(info["integrity"]["tensors_sha256"]) == 64 and len(info["integrity"]["manifest_sha256"]) == 64
    assert info["probes"] == 4 and info["probe_kinds"] == ["synthetic"] * 4
    assert info["file_bytes"] == tiny_model.model_path.stat().st_size
    assert info["parameters"] == sum(
        p.numel() for p in tiny_model.result.classifier.model.parameters()
    ) + sum(b.numel() for b in tiny_model.result.classifier.model.buffers())


def test_inspect_cli_human_and_json(tiny_model, capsys, monkeypatch):
    from imgclf.cli.main import main

    monkeypatch.setattr(registry, "build", lambda *a, **k: (_ for _ in ()).throw(AssertionError("built")))
    assert main(["inspect", str(tiny_model.model_path)]) == 0
    out = capsys.readouterr().out
    for label in (
        "format          imgclf version 2",
        "task            single-label; balance none",
        "architecture    small_cnn",
        "classes         2: ring, square",
        "preprocessing   32x32 bilinear",
        "training        2 epochs",
        "metrics ",
        "data            fingerprint",
        "versions        imgclf 0.1.0",
        "probes          4 (4 synthetic, 0 validation images)",
        "tensor digest   sha256:",
    ):
        assert label in out, label
    assert main(["inspect", str(tiny_model.model_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["integrity"]["tensors_sha256"] in out


def test_inspect_lists_at_most_20_class_names_on_a_line(tmp_path, capsys):
    from imgclf.cli.main import main

    names = tuple(f"class{i:03d}" for i in range(150))
    path = tmp_path / "many.imgclf"
    imgclf.save(make_classifier(names), path)
    assert main(["inspect", str(path)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("classes"))
    assert "class019, ... (130 more; --json lists all)" in line and "class020" not in line


# --- speed and memory ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seed_resnet_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("seed") / "seed.imgclf"
    imgclf.save(make_classifier(arch="seed_resnet", args={}, size=64), path)
    return path


def test_loading_reads_the_file_once_and_runs_no_probe(seed_resnet_file, monkeypatch):
    """Load parses the file once and leaves the probes (decoding images, a forward pass) to verify."""
    from imgclf.modelfile import probes

    reads = []
    real_read = modelfile.read_container
    monkeypatch.setattr(modelfile, "read_container", lambda path: reads.append(path) or real_read(path))
    for name in ("run_checks", "compute"):
        monkeypatch.setattr(probes, name, lambda *a, **k: pytest.fail("load ran the probes"))
    monkeypatch.setattr(
        "imgclf.images.preprocess.preprocess_uint8", lambda *a, **k: pytest.fail("load decoded an image")
    )
    imgclf.load(seed_resnet_file)
    assert reads == [seed_resnet_file]


def test_each_tensor_of_a_loaded_model_has_its_own_storage(seed_resnet_file):
    clf = imgclf.load(seed_resnet_file)
    storages = {p.untyped_storage().data_ptr() for p in clf.model.state_dict().values()}
    assert len(storages) == len(clf.model.state_dict())  # one buffer per tensor, none shared with a file copy


@pytest.mark.slow
def test_peak_memory_of_loading_a_100_mb_model_stays_near_the_file_size(tmp_path):
    """A31: load peak RSS over the baseline <= 1.5x the file size (one buffer per tensor, no file copy)."""
    path = tmp_path / "big.imgclf"
    args = {"filters": [256, 512, 1024, 2048], "stages": [2, 2, 3]}
    imgclf.save(make_classifier(arch="seed_resnet", args=args, size=64), path)
    size = path.stat().st_size
    assert size > 60e6
    script = textwrap.dedent(
        f"""
        import gc, imgclf, imgclf.modelfile, torch
        def status(key):
            for line in open("/proc/self/status"):
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
        imgclf.load({str(tmp_path / "small.imgclf")!r})   # warm up imports and allocators
        gc.collect()
        open("/proc/self/clear_refs", "w").write("5")     # reset the peak (VmHWM) to the current RSS
        base = status("VmRSS:")
        clf = imgclf.load({str(path)!r})
        print(status("VmHWM:") - base)
        """
    )
    imgclf.save(make_classifier(arch="seed_resnet", args={}, size=64), tmp_path / "small.imgclf")
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc")
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True
    )
    peak = int(out.stdout.strip().splitlines()[-1])
    assert peak <= 1.5 * size, (peak, size)


def test_load_raises_the_specific_exception_class(tmp_path):
    path = tmp_path / "x.imgclf"
    path.write_bytes(b"junk")
    with pytest.raises(ModelFileError) as info:
        imgclf.load(path)
    assert isinstance(info.value, ValueError) and info.value.exit_code == 3
    assert len(str(info.value).splitlines()) == 1


def test_classifier_from_load_carries_the_manifest_without_integrity(tmp_path):
    path = tmp_path / "m.imgclf"
    imgclf.save(make_classifier(), path)
    clf = imgclf.load(path)
    assert isinstance(clf, Classifier)
    assert "integrity" not in clf.manifest and clf.manifest["format_version"] == 2


def test_the_digest_recipes_in_the_format_doc_work_without_imgclf():
    """docs/format.md §5 tells third parties how to check both digests; keep that true."""
    import hashlib
    import re
    import struct

    raw = (Path(__file__).parents[1] / "fixtures" / "golden_v1.imgclf").read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header, data = json.loads(raw[8 : 8 + n]), raw[8 + n :]
    h = hashlib.sha256()
    for name in sorted(k for k in header if k != "__metadata__"):
        t = header[name]
        b, e = t["data_offsets"]
        h.update(f"{name}\0{t['dtype']}\0{t['shape']}\0{e - b}\0".encode())
        h.update(data[b:e])
    text = header["__metadata__"]["imgclf"]
    manifest = json.loads(text)
    assert h.hexdigest() == manifest["integrity"]["tensors_sha256"]
    body = re.sub(
        r',"integrity":\{"manifest_sha256":"[0-9a-f]{64}","tensors_sha256":"[0-9a-f]{64}"\}', "", text
    )
    assert (
        body != text and hashlib.sha256(body.encode()).hexdigest() == manifest["integrity"]["manifest_sha256"]
    )
    doc = (Path(__file__).parents[2] / "docs" / "format.md").read_text(encoding="utf-8")
    assert "h.update(f\"{name}\\0{t['dtype']}\\0{t['shape']}\\0{e - b}\\0\".encode())" in doc


def test_loading_writes_nothing_and_opens_no_network(tiny_model, monkeypatch):
    """A32: load, verify and inspect work on a read-only filesystem with no network."""
    import builtins
    import os
    import socket

    real_open, real_os_open = builtins.open, os.open
    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def read_only_open(file, mode="r", *args, **kwargs):
        assert not set(mode) & set("wax+"), f"opened {file!r} for writing"
        return real_open(file, mode, *args, **kwargs)

    def read_only_os_open(path, flags, *args, **kwargs):
        assert not flags & writes, f"os.open({path!r}) for writing"
        return real_os_open(path, flags, *args, **kwargs)

    def no_network(*args, **kwargs):
        raise AssertionError("network access")

    monkeypatch.setattr(builtins, "open", read_only_open)
    monkeypatch.setattr(os, "open", read_only_os_open)
    monkeypatch.setattr(socket, "socket", no_network)
    clf = imgclf.load(tiny_model.model_path)
    assert imgclf.verify(tiny_model.model_path).ok
    assert imgclf.inspect(tiny_model.model_path)["format_version"] == 2
    assert clf.predict(np.zeros((8, 8, 3), dtype=np.uint8))[0].label in ("ring", "square")


def test_copy_to_cpu_is_a_float32_copy_that_leaves_the_model_alone():
    from imgclf.modelfile.weights import copy_to_cpu

    model = _Wrapper(make_classifier(seed=3).model.to(torch.bfloat16))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    copied = copy_to_cpu(model)
    assert not isinstance(copied, _Wrapper)  # unwrapped
    assert all(t.dtype == torch.float32 for t in copied.state_dict().values() if t.is_floating_point())
    for key, value in model.state_dict().items():
        assert value.dtype == before[key].dtype and torch.equal(value, before[key]), key


def test_a_weights_mismatch_of_a_timm_model_names_both_timm_versions():
    """The note added to "weights do not match the architecture" for a model another library built."""
    from types import SimpleNamespace

    from imgclf.modelfile.weights import _library_note
    from imgclf.models.timm_backbone import installed_version

    assert _library_note(SimpleNamespace(arch_args={"widths": [8]})) == ""
    note = _library_note(SimpleNamespace(arch_args={"timm_version": "0.9.2"}))
    assert note == f" (the file was made with timm 0.9.2, timm {installed_version()} is installed)"
    unknown = _library_note(SimpleNamespace(arch_args={"timm_version": ""}))
    assert unknown == f" (the file was made with timm ?, timm {installed_version()} is installed)"
