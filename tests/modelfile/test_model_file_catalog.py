"""Reliability catalog section A, item by item: every bad model file is one clean error, fast.

Each case builds a broken file from a valid one and names the words its error must contain. The same
cases run through ``imgclf.load`` (ModelFileError within 2 s, one line naming the file) and through the
CLI commands that open model files (exit code 3, one stderr line, no traceback). Item numbers refer to
``reliability-catalog.md``; A24 (zip containers) and A29 (server reload) do not apply to this format.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import struct
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import imgclf
from helpers import (
    data_offset,
    edit_manifest,
    edit_tensors,
    flip,
    join,
    make_classifier,
    manifest_of,
    manifest_span,
    rebuild,
    run_cli,
    split,
    tensors_of,
    with_manifest,
)
from imgclf import modelfile
from imgclf.errors import ModelFileError
from imgclf.modelfile.format import MAX_HEADER_BYTES
from imgclf.modelfile.manifest import FORMAT_VERSION

MARKER_NAME = "imgclf-pickle-ran.marker"


class Payload:
    """Unpickling this object would create a marker file: proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def good() -> bytes:
    return modelfile.serialize(make_classifier())


def _header_case(text: str) -> Callable[[bytes], bytes]:
    return lambda good: join(text.encode() if isinstance(text, str) else text, b"")


def _edit_header(fn: Callable[[dict], object]) -> Callable[[bytes], bytes]:
    def build(good: bytes) -> bytes:
        header, data = split(good)
        fn(header)
        return join(header, data)

    return build


def _first_tensor(header: dict) -> str:
    return min((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])


def _set_offsets(header: dict, begin: int, end: int) -> None:
    header[_first_tensor(header)]["data_offsets"] = [begin, end]


def _dupe_tensor_key(good: bytes) -> bytes:
    header, data = split(good)
    name = _first_tensor(header)
    text = json.dumps(header, separators=(",", ":"))
    entry = json.dumps({name: header[name]}, separators=(",", ":"))[1:-1]
    return join(text[:-1] + "," + entry + "}", data)


def _dupe_manifest_key(good: bytes) -> bytes:
    m = manifest_of(good)
    text = json.dumps(m, separators=(",", ":"))
    return with_manifest(good, text[:-1] + ',"decode_rule":1}')


def _overlap(good: bytes) -> bytes:
    header, data = split(good)
    ordered = sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][0])
    a, b = header[ordered[0]], header[ordered[1]]
    a["data_offsets"], b["data_offsets"] = [0, 8], [0, 8]
    return join(header, data)


def _gap(good: bytes) -> bytes:
    header, data = split(good)
    for k, v in header.items():
        if k != "__metadata__":
            v["data_offsets"] = [v["data_offsets"][0] + 4, v["data_offsets"][1] + 4]
    return join(header, b"\0" * 4 + data)


def _rename_tensor(new: str) -> Callable[[bytes], bytes]:
    def build(good: bytes) -> bytes:
        header, data = split(good)
        header[new] = header.pop("model.head.bias")
        return join(header, data)

    return build


def _class_count(good: bytes) -> bytes:
    def edit(m: dict) -> None:
        m["class_names"] = ["a", "b", "c"]
        for p in m["probes"]:
            p["probabilities"] = [0.2, 0.3, 0.5]

    return edit_manifest(good, edit)


def _set(path: tuple, value: object) -> Callable[[bytes], bytes]:
    def edit(m: dict) -> None:
        target = m
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return lambda good: edit_manifest(good, edit)


def _drop(key: str) -> Callable[[bytes], bytes]:
    return lambda good: edit_manifest(good, lambda m: m.pop(key))


def _tensor_edit(fn: Callable[[dict], object]) -> Callable[[bytes], bytes]:
    return lambda good: edit_tensors(good, fn)


def _nan(value: float) -> Callable[[dict], None]:
    def edit(t: dict) -> None:
        w = t["model.head.weight"].clone()
        w[0, 0] = value
        t["model.head.weight"] = w

    return edit


def _zip(names: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, content in names.items():
            z.writestr(name, content)
    return buf.getvalue()


def _torch_zip(marker: str) -> bytes:
    buf = io.BytesIO()
    torch.save({"weights": torch.ones(3), "payload": Payload(marker)}, buf)
    return buf.getvalue()


def _torch_legacy(marker: str) -> bytes:
    buf = io.BytesIO()
    torch.save({"payload": Payload(marker)}, buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


def _npz() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, w=np.ones(3))
    return buf.getvalue()


def _tar() -> bytes:
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("storages")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"\0\0\0\0"))
    return buf.getvalue()


def _sparse_header(length: int, file_size: int) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        with open(path, "wb") as fh:
            fh.write(struct.pack("<Q", length) + b'{"__metadata__":{"x":"')
            fh.truncate(file_size)  # sparse: no real 90 MB write

    return write


# (case id, catalog item, builder(good) -> bytes, words the error must contain)
BYTES_CASES: list[tuple[str, str, Callable[[bytes], bytes], tuple[str, ...]]] = [
    ("zero_bytes", "A1", lambda g: b"", ("too short for a header (0 bytes)",)),
    ("one_byte", "A2", lambda g: b"\x01", ("too short for a header (1 bytes)",)),
    ("seven_bytes", "A2", lambda g: g[:7], ("too short",)),
    ("truncated_half", "A3", lambda g: g[: len(g) // 2], ("truncated",)),
    ("truncated_in_header", "A3", lambda g: g[: data_offset(g) - 100], ("truncated: header says",)),
    ("truncated_after_header", "A3", lambda g: g[: data_offset(g)], ("truncated: the tensors need",)),
    ("one_byte_short", "A3", lambda g: g[:-1], ("truncated",)),
    ("header_len_1e12", "A4", lambda g: struct.pack("<Q", 10**12) + b"{" * 1016, ("exceeds", "cap")),
    ("header_len_u64_max", "A4", lambda g: struct.pack("<Q", 2**64 - 1) + b"{}", ("exceeds", "cap")),
    ("header_len_150MB", "A5", lambda g: struct.pack("<Q", 150 * 2**20) + b"{}", ("exceeds",)),
    ("header_not_utf8", "A6", _header_case(b'{"a":"\xff\xfe"}'), ("not valid UTF-8",)),
    ("header_not_json", "A6", _header_case("{not json at all}"), ("not valid JSON",)),
    ("header_first_byte", "A6", _header_case(' {"__metadata__":{}}'), ("does not start with '{'",)),
    ("header_json_array", "A6", _header_case("[1, 2, 3]"), ("does not start with '{'",)),
    ("header_nan_constant", "A6", _header_case('{"x": NaN}'), ("NaN",)),
    ("header_deep_nesting", "A6", _header_case('{"a":' + "[" * 100000 + "]" * 100000 + "}"), ("nested",)),
    ("duplicate_tensor_key", "A7", _dupe_tensor_key, ("duplicate key",)),
    ("duplicate_manifest_key", "A7", _dupe_manifest_key, ("duplicate key 'decode_rule' in manifest",)),
    ("offset_negative", "A8", _edit_header(lambda h: _set_offsets(h, -8, 0)), ("bad data_offsets",)),
    ("offset_end_before_begin", "A8", _edit_header(lambda h: _set_offsets(h, 8, 0)), ("bad data_offsets",)),
    ("offset_beyond_buffer", "A8", _edit_header(lambda h: _set_offsets(h, 10**9, 10**9 + 8)), ("truncated",)),
    ("offset_not_int", "A8", _edit_header(lambda h: _set_offsets(h, 0.0, 8.0)), ("bad data_offsets",)),
    ("offsets_overlap", "A8", _overlap, ("overlapping tensors",)),
    ("offsets_gap_first_not_at_0", "A8", _gap, ("a gap at byte 0",)),
    ("trailing_bytes", "A8", lambda g: g + b"\0" * 16, ("16 unexpected byte(s) after the last tensor",)),
    ("pickle_appended", "A8", lambda g: g + pickle.dumps({"x": 1}), ("unexpected byte(s)",)),
    (
        "size_mismatch",
        "A10",
        _edit_header(lambda h: h["model.head.weight"].update(shape=[2, 9])),
        ("size mismatch",),
    ),
    (
        "shape_overflow",
        "A10",
        _edit_header(lambda h: h["model.head.weight"].update(shape=[2**40] * 4)),
        ("overflows",),
    ),
    (
        "shape_negative",
        "A10",
        _edit_header(lambda h: h["model.head.weight"].update(shape=[-2, -8])),
        ("bad shape",),
    ),
    ("name_nul", "A11", _rename_tensor("model.head\x00bias"), ("bad tensor name",)),
    ("name_slash", "A11", _rename_tensor("model/head.bias"), ("bad tensor name",)),
    ("name_dotdot", "A11", _rename_tensor("model..head.bias"), ("bad tensor name",)),
    ("name_control", "A11", _rename_tensor("model.head\x1b[31m.bias"), ("bad tensor name",)),
    ("name_long", "A11", _rename_tensor("model." + "x" * 2000), ("bad tensor name",)),
    (
        "dtype_unknown",
        "A12",
        _edit_header(lambda h: h["model.head.bias"].update(dtype="F8_E4M3")),
        ("unknown dtype",),
    ),
    (
        "dtype_f16_for_f32",
        "A12",
        _tensor_edit(lambda t: t.update({"model.head.weight": t["model.head.weight"].half()})),
        ("'model.head.weight' has dtype F16, expected F32",),
    ),
    (
        "tensor_missing",
        "A13",
        _tensor_edit(lambda t: t.pop("model.head.bias")),
        ("missing tensors ['model.head.bias']",),
    ),
    (
        "tensor_extra",
        "A13",
        _tensor_edit(lambda t: t.update({"model.backdoor": torch.zeros(2)})),
        ("unexpected tensors ['model.backdoor']",),
    ),
    (
        "tensor_many_extra",
        "A13",
        _tensor_edit(lambda t: t.update({f"model.extra{i:02d}": torch.zeros(1) for i in range(20)})),
        ("and 15 more",),
    ),
    (
        "tensor_misshaped",
        "A13",
        _tensor_edit(lambda t: t.update({"model.features.0.weight": torch.zeros(4, 3, 5, 5)})),
        ("'model.features.0.weight' has shape [4, 3, 5, 5], expected [4, 3, 3, 3]",),
    ),
    ("class_count_mismatch", "A14", _class_count, ("class count mismatch: manifest 3, weights 2",)),
    ("flipped_data_byte", "A15", lambda g: flip(g, len(g) - 3), ("integrity check failed: tensor data",)),
    (
        "flipped_weight_byte",
        "A15",
        lambda g: flip(g, data_offset(g) + 40, 0x10),
        ("integrity check failed",),
    ),
    (
        "flipped_manifest_digit",
        "A16",
        lambda g: g.replace(b'\\"decode_rule\\":1', b'\\"decode_rule\\":2', 1),
        ("integrity check failed: the manifest",),
    ),
    (
        "manifest_bytes_unsigned",
        "A16",
        lambda g: edit_manifest(g, lambda m: m.update(class_names=["x", "y"]), resign=False),
        ("integrity",),
    ),
    (
        "tensor_bytes_unsigned",
        "A15",
        lambda g: edit_tensors(g, _nan(0.5), resign=False),
        ("integrity check failed",),
    ),
    (
        "nan_weight",
        "A17",
        _tensor_edit(_nan(float("nan"))),
        ("'model.head.weight' contains NaN or infinite",),
    ),
    ("inf_weight", "A17", _tensor_edit(_nan(float("inf"))), ("NaN or infinite",)),
    (
        "no_metadata",
        "A18",
        lambda g: rebuild_without_metadata(g),
        ("plain safetensors file without an imgclf manifest",),
    ),
    (
        "hf_metadata",
        "A18",
        lambda g: rebuild_without_metadata(g, {"format": "pt"}),
        ("metadata keys: format",),
    ),
    (
        "manifest_not_canonical",
        "A16",
        lambda g: with_manifest(g, json.dumps(manifest_of(g), indent=1, sort_keys=True)),
        ("not in canonical form",),
    ),
    ("manifest_not_json", "A18", lambda g: with_manifest(g, "{broken"), ("manifest is not valid JSON",)),
    ("manifest_array", "A18", lambda g: with_manifest(g, "[]"), ("manifest is not a JSON object",)),
    ("manifest_missing_key", "A18", _drop("probes"), ("missing: ['probes']",)),
    ("manifest_unknown_key", "A18", _set(("exec",), "rm -rf /"), ("unknown: ['exec']",)),
    ("manifest_wrong_type", "A18", _set(("class_names",), "ring,square"), ("class_names is malformed",)),
    ("format_marker", "A18", _set(("format",), "keras"), ("format marker",)),
    (
        "future_version",
        "A18",
        _set(("format_version",), FORMAT_VERSION + 1),
        ("made by a newer version", "upgrade"),
    ),
    ("version_zero", "A18", _set(("format_version",), 0), ("format version 0 does not exist",)),
    (
        "version_string",
        "A18",
        _set(("format_version",), "1"),
        ("format_version is missing or not an integer",),
    ),
    ("version_bool", "A18", _set(("format_version",), True), ("not an integer",)),
    ("decode_rule_future", "A18", _set(("decode_rule",), 99), ("unknown decode rule 99", "upgrade")),
    ("integrity_malformed", "A18", _set(("integrity", "tensors_sha256"), "abc"), ("integrity is malformed",)),
    (
        "arch_os_system",
        "A19",
        _set(("architecture", "name"), "os.system"),
        ("unknown architecture", "os.system"),
    ),
    (
        "arch_torchvision",
        "A19",
        _set(("architecture", "name"), "torchvision.models.resnet18"),
        ("unknown architecture",),
    ),
    ("arch_path", "A19", _set(("architecture", "name"), "../x"), ("unknown architecture",)),
    ("arch_not_string", "A19", _set(("architecture", "name"), ["small_cnn"]), ("unknown architecture",)),
    ("arch_unknown_arg", "A19", _set(("architecture", "args", "module"), "os"), ("unknown argument",)),
    ("arch_arg_type", "A19", _set(("architecture", "args", "widths"), "4,8"), ("wrong type",)),
    (
        "arch_arg_bounds",
        "A19",
        _set(("architecture", "args", "widths"), [5000]),
        ("cannot build the architecture",),
    ),
    ("arch_extra_key", "A19", _set(("architecture", "module"), "os"), ("architecture is malformed",)),
    ("class_names_duplicate", "A25", _set(("class_names",), ["ring", "ring"]), ("duplicates",)),
    (
        "class_names_empty_string",
        "A25",
        _set(("class_names",), ["", "square"]),
        ("class_names[0] is malformed",),
    ),
    ("class_names_10k_chars", "A25", _set(("class_names",), ["r" * 10000, "square"]), ("class_names[0]",)),
    ("class_names_nul", "A25", _set(("class_names",), ["ri\x00ng", "square"]), ("class_names[0]",)),
    ("class_names_surrogate", "A25", _set(("class_names",), ["ring\udcff", "square"]), ("lone surrogate",)),
    ("class_names_one", "A25", _set(("class_names",), ["ring"]), ("class_names is malformed",)),
    ("preprocess_mean_length", "A26", _set(("preprocess", "mean"), [0.0, 0.0]), ("preprocess",)),
    ("preprocess_std_zero", "A26", _set(("preprocess", "std"), [1.0, 0.0, 1.0]), ("std contains zero",)),
    (
        "preprocess_negative_size",
        "A26",
        _set(("preprocess", "height"), -16),
        ("height is out of range", "4096"),
    ),
    ("preprocess_huge_size", "A26", _set(("preprocess", "width"), 10**6), ("width is out of range",)),
    (
        "preprocess_interpolation",
        "A26",
        _set(("preprocess", "interpolation"), "cv2.INTER_AREA"),
        ("interpolation",),
    ),
    (
        "preprocess_missing_key",
        "A26",
        lambda g: edit_manifest(g, lambda m: m["preprocess"].pop("mean")),
        ("preprocess",),
    ),
    ("preprocess_extra_key", "A26", _set(("preprocess", "bgr"), True), ("preprocess",)),
    (
        "provenance_too_large",
        "A27",
        _set(("provenance", "notes"), ["x" * 60000] * 80),
        ("provenance is too large",),
    ),
    ("provenance_long_string", "A27", _set(("provenance", "notes"), "x" * 100000), ("string of 100000",)),
    (
        "provenance_deep",
        "A27",
        _set(("provenance", "notes"), json.loads("[" * 40 + "]" * 40)),
        ("nested more than",),
    ),
    ("provenance_metrics_type", "A27", _set(("provenance", "metrics"), [1, 2]), ("provenance.metrics",)),
    (
        "probes_missing_tensor",
        "A13",
        _tensor_edit(lambda t: t.pop("probe.1.input")),
        ("missing probe tensors",),
    ),
    ("probes_bad_probability", "A18", _set(("probes", 0, "probabilities"), [2.0, -1.0]), ("probabilities",)),
    ("probes_empty", "A18", _set(("probes",), []), ("probes is malformed",)),
    ("probes_bad_kind", "A18", _set(("probes", 0, "kind"), "exec"), ("kind",)),
    (
        "probe_input_shape",
        "A12",
        _tensor_edit(lambda t: t.update({"probe.0.input": torch.zeros(8, 8, 3, dtype=torch.uint8)})),
        ("probe tensor 'probe.0.input'",),
    ),
    ("pickle_payload", "A20", lambda g: pickle.dumps(Payload(MARKER_NAME)), ("looks like a Python pickle",)),
    (
        "pickle_protocol0",
        "A20",
        lambda g: pickle.dumps(Payload(MARKER_NAME), protocol=0),
        ("looks like a Python pickle",),
    ),
    ("torch_save_zip", "A20", lambda g: _torch_zip(MARKER_NAME), ("torch.save archive",)),
    ("torch_save_legacy", "A21", lambda g: _torch_legacy(MARKER_NAME), ("legacy PyTorch torch.save",)),
    ("torch_legacy_tar", "A21", lambda g: _tar(), ("tar archive",)),
    (
        "keras_zip",
        "A23",
        lambda g: _zip({"metadata.json": b"{}", "config.json": b"{}", "model.weights.h5": b"\x89HDF"}),
        ("Keras .keras archive",),
    ),
    ("npz", "A23", lambda g: _npz(), ("NumPy .npz",)),
    (
        "onnx",
        "A23",
        lambda g: b"\x08\x07\x12\x07pytorch\x1a\x052.5.0:\x9b\x01\n" + b"\0" * 64,
        ("ONNX model",),
    ),
    ("h5", "A23", lambda g: b"\x89HDF\r\n\x1a\n" + b"\0" * 512, ("HDF5",)),
    ("seven_zip", "A23", lambda g: b"7z\xbc\xaf\x27\x1c\x00\x04" + b"\0" * 64, ("7z archive",)),
    ("plain_zip", "A23", lambda g: _zip({"weights.bin": b"\0" * 16}), ("a zip archive",)),
    ("png", "A23", lambda g: b"\x89PNG\r\n\x1a\n" + b"\0" * 64, ("PNG image",)),
]


def rebuild_without_metadata(good: bytes, metadata: dict | None = None) -> bytes:
    from safetensors.torch import save

    return save(tensors_of(good), metadata=metadata)


def _rejects(path: Path, words: tuple[str, ...]) -> str:
    with pytest.raises(ModelFileError) as info:
        imgclf.load(path)
    message = str(info.value)
    assert "\n" not in message
    assert repr(str(path))[1:-1] in message  # the file is named
    for word in words:
        assert word in message, message
    return message


@pytest.mark.parametrize(("case", "item", "build", "words"), BYTES_CASES, ids=[c[0] for c in BYTES_CASES])
def test_a_bad_model_file_is_one_clean_error(case, item, build, words, good, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a pickle payload would drop its marker here
    path = tmp_path / "model.imgclf"
    path.write_bytes(build(good))
    _rejects(path, words)
    assert not (tmp_path / MARKER_NAME).exists()


# Found only when the weights meet the freshly built architecture, which inspect never builds.
BUILD_LEVEL = {
    "dtype_f16_for_f32",
    "tensor_missing",
    "tensor_extra",
    "tensor_many_extra",
    "tensor_misshaped",
    "class_count_mismatch",
    "nan_weight",
    "inf_weight",
    "arch_arg_bounds",
}


def _cli_args(command: str, model: Path, dataset: Path) -> list:
    return {
        "inspect": ["inspect", model],
        "verify": ["verify", model],
        "predict": ["predict", "--model", model, "--images", dataset / "testing"],
        "evaluate": ["evaluate", "--model", model, "--dataset", dataset],
    }[command]


@pytest.mark.parametrize("command", ["inspect", "verify", "predict", "evaluate"])
def test_every_command_gives_exit_3_and_one_line_for_every_case(
    command, good, tiny_model, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    for case, _, build, words in BYTES_CASES:
        path = tmp_path / f"{case}.imgclf"
        path.write_bytes(build(good))
        code, out, err = run_cli(*_cli_args(command, path, tiny_model.dataset))
        if command == "inspect" and case in BUILD_LEVEL:
            assert code == 0, (case, err)
            continue
        assert code == 3, (case, err)
        assert out == "", case
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("imgclf: error: invalid model file"), (case, err)
        assert "Traceback" not in err and words[0] in lines[0], (case, err)
    assert not (tmp_path / MARKER_NAME).exists()


# --- A4, A5, A27: caps, timing and memory -------------------------------------------------------------------


def test_a_huge_header_length_is_refused_before_any_allocation(tmp_path):
    import tracemalloc

    path = tmp_path / "huge.imgclf"
    path.write_bytes(struct.pack("<Q", 10**12) + b"{" * 1016)
    tracemalloc.start()
    with pytest.raises(ModelFileError, match="exceeds"):
        imgclf.load(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1_000_000


@pytest.mark.parametrize("extra", [1, 1024 * 1024])
def test_a_header_just_over_the_cap_is_refused_even_when_the_file_is_that_long(extra, tmp_path):
    path = tmp_path / "big.imgclf"
    _sparse_header(MAX_HEADER_BYTES + extra, 8 + MAX_HEADER_BYTES + extra + 64)(path)
    with pytest.raises(ModelFileError, match=f"header length {MAX_HEADER_BYTES + extra} exceeds"):
        imgclf.load(path)


def test_90_mb_of_metadata_is_refused_by_the_header_cap(tmp_path):
    import tracemalloc

    path = tmp_path / "meta90.imgclf"
    _sparse_header(90 * 10**6, 8 + 90 * 10**6)(path)
    tracemalloc.start()
    with pytest.raises(ModelFileError, match="exceeds the 16777216-byte cap"):
        imgclf.load(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1_000_000  # refused from the length prefix: none of the 90 MB was read


def test_a_header_at_the_cap_with_too_many_values_is_refused(tmp_path):
    text = '{"__metadata__":{},"x":[' + ",".join(["0"] * 2_100_000) + "]}"
    path = tmp_path / "values.imgclf"
    path.write_bytes(join(text))
    with pytest.raises(ModelFileError, match="too many JSON values"):
        imgclf.load(path)


# --- A9: empty tensors -------------------------------------------------------------------------------------


def test_an_empty_tensor_sharing_an_offset_is_harmless_to_the_reader_and_refused_as_a_model_tensor(
    good, tmp_path
):
    from imgclf.modelfile.format import read_container

    header, data = split(good)
    first = _first_tensor(header)
    end = header[first]["data_offsets"][1]
    header["model.empty"] = {"dtype": "F32", "shape": [0, 5], "data_offsets": [end, end]}
    path = tmp_path / "empty.imgclf"
    path.write_bytes(join(header, data))
    c = read_container(path)  # covers no bytes: cannot alias or hide data
    assert c.tensor("model.empty").shape == (0, 5)
    assert torch.equal(c.tensor(first), tensors_of(good)[first])
    _rejects(path, ("integrity check failed",))  # the digest covers every tensor name, even empty ones
    resigned = rebuild(good, {**tensors_of(good), "model.empty": torch.zeros(0, 5)})
    path.write_bytes(resigned)
    _rejects(path, ("unexpected tensors ['model.empty']",))


def test_an_empty_tensor_inside_another_tensor_is_an_overlap(good, tmp_path):
    header, data = split(good)
    first = _first_tensor(header)
    begin, end = header[first]["data_offsets"]
    header["model.empty"] = {"dtype": "F32", "shape": [0], "data_offsets": [begin + 4, begin + 4]}
    path = tmp_path / "inside.imgclf"
    path.write_bytes(join(header, data))
    assert end > begin + 4
    _rejects(path, ("overlapping tensors",))


# --- A19: no import by a name from the file -----------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["os.system", "torchvision.models.resnet18", "../x", "subprocess", "imgclf.cli.main"]
)
def test_architecture_names_import_nothing(name, good, tmp_path, monkeypatch):
    import builtins
    import importlib

    path = tmp_path / "arch.imgclf"
    path.write_bytes(_set(("architecture", "name"), name)(good))
    # The names are mostly loaded already, so watch the import machinery itself, not sys.modules.
    parts = name.split(".")
    # Our own package is imported by every load (function-level imports of its modules): only the named
    # module and its sub-packages must never be asked for.
    named = {".".join(parts[:i]) for i in range(1, len(parts) + 1)} - {"imgclf"}
    requested: list[str] = []
    real_import, real_import_module = builtins.__import__, importlib.import_module

    def spy_import(module, *args, **kwargs):
        requested.append(module)
        return real_import(module, *args, **kwargs)

    def spy_import_module(module, *args, **kwargs):
        requested.append(module)
        return real_import_module(module, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", spy_import)
    monkeypatch.setattr(importlib, "import_module", spy_import_module)
    _rejects(path, ("unknown architecture",))
    monkeypatch.undo()
    assert named.isdisjoint(requested), sorted(named & set(requested))


# --- A20-A22: code-carrying files, in a real process --------------------------------------------------------


@pytest.mark.parametrize("kind", ["pickle", "torch_zip", "torch_legacy"])
def test_pickle_payloads_never_run_in_a_real_process(kind, tmp_path):
    import subprocess

    marker = tmp_path / MARKER_NAME
    build = {
        "pickle": lambda: pickle.dumps(Payload(str(marker))),
        "torch_zip": lambda: _torch_zip(str(marker)),
    }
    build["torch_legacy"] = lambda: _torch_legacy(str(marker))
    model = tmp_path / "payload.imgclf"
    model.write_bytes(build[kind]())
    env = {**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}  # A22: must change nothing
    proc = subprocess.run(
        [sys.executable, "-m", "imgclf", "predict", "--model", str(model), "--images", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 3
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "looks like" in proc.stderr and "pickle" in proc.stderr
    assert not marker.exists()


# --- A25: odd but legal class names are kept, and escaped on output -----------------------------------------


def test_control_and_bidi_characters_in_class_names_load_and_are_escaped_by_inspect(good, tmp_path):
    names = ["red\x1b[31malert", "<script>alert(1)</script>\u202eevil"]
    path = tmp_path / "names.imgclf"
    path.write_bytes(_set(("class_names",), names)(good))
    assert imgclf.load(path).class_names == names
    code, out, _ = run_cli("inspect", path)
    assert code == 0 and "\x1b" not in out and "\u202e" not in out and "\\x1b[31m" in out
    code, out, _ = run_cli("inspect", path, "--json")
    assert code == 0 and "\x1b" not in out and "\u202e" not in out
    assert json.loads(out)["class_names"] == names


# --- A28: not a regular file --------------------------------------------------------------------------------


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX special files")
@pytest.mark.timeout(30)  # a blocking open or an endless read fails here instead of hanging the suite
@pytest.mark.parametrize(
    "kind", ["folder", "fifo", "/dev/zero", "/dev/urandom", "link_fifo", "link_zero", "link_dir"]
)
def test_special_files_are_refused_without_blocking(kind, tmp_path):
    path = tmp_path / "special.imgclf"
    if kind == "folder":
        path.mkdir()
    elif kind in ("fifo", "link_fifo"):
        fifo = tmp_path / "fifo"
        os.mkfifo(fifo)
        path = fifo if kind == "fifo" else path
        if kind == "link_fifo":
            path.symlink_to(fifo)
    elif kind == "link_zero":
        path.symlink_to("/dev/zero")
    elif kind == "link_dir":
        path.symlink_to(tmp_path)
    else:
        path = Path(kind)
    with pytest.raises(ModelFileError) as info:
        imgclf.load(path)
    assert "folder" in str(info.value) or "not a regular file" in str(info.value)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX special files")
def test_a_fifo_is_refused_by_the_cli_in_a_real_process(tmp_path):
    import subprocess

    fifo = tmp_path / "model.imgclf"
    os.mkfifo(fifo)
    proc = subprocess.run(
        [sys.executable, "-m", "imgclf", "inspect", str(fifo)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 3 and "not a regular file" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can read a chmod 000 file")
def test_an_unreadable_file_is_refused(good, tmp_path):
    path = tmp_path / "locked.imgclf"
    path.write_bytes(good)
    path.chmod(0)
    try:
        _rejects(path, ("cannot open model file",))
    finally:
        path.chmod(0o600)


def test_a_permission_error_on_open_is_one_clean_error(good, tmp_path, monkeypatch):
    """The chmod 000 case, reproduced where the tests run as root (root reads anything)."""
    import errno

    path = tmp_path / "locked.imgclf"
    path.write_bytes(good)
    real_open = os.open

    def deny(p, *args, **kwargs):
        if os.fspath(p) == str(path):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(p, *args, **kwargs)

    monkeypatch.setattr(os, "open", deny)
    message = _rejects(path, ("cannot open model file", "Permission denied"))
    assert "permissions" in message


def test_a_missing_file_is_one_clean_error(tmp_path):
    _rejects(tmp_path / "nope.imgclf", ("cannot open model file", "No such file"))


# --- A30: awkward paths -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["mödel ünïcode.imgclf", "with spaces.imgclf", "-leading-dash.imgclf", "模型.imgclf"]
)
def test_awkward_model_paths_work_in_the_api_and_the_cli(name, good, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_bytes(good)
    assert imgclf.load(tmp_path / name).class_names == ["ring", "square"]
    code, out, err = run_cli("verify", "--", name)
    assert code == 0, err
    code, out, err = run_cli("inspect", "--json", "--", name)
    assert code == 0 and json.loads(out)["class_names"] == ["ring", "square"]
    code, out, err = run_cli("predict", f"--model={name}", "--images", _write_image(tmp_path))
    assert code == 0, err


def _write_image(folder: Path) -> Path:
    from PIL import Image

    path = folder / "img.png"
    Image.fromarray(np.full((20, 20, 3), 120, dtype=np.uint8)).save(path)
    return path


def test_an_error_message_names_an_awkward_path_on_one_line(tmp_path):
    path = tmp_path / "bad\nname\x1b[31m.imgclf"
    path.write_bytes(b"")
    code, _, err = run_cli("inspect", path)
    assert code == 3 and len(err.strip().splitlines()) == 1 and "\x1b" not in err


def test_manifest_span_helper_finds_the_manifest(good):
    start, end = manifest_span(good)
    assert good[start : start + 2] == b"{\\"
    assert good[end - 1 : end] == b"}"


@pytest.mark.parametrize(
    "length, magic",
    [(0x088B1F, b"\x1f\x8b\x08"), (0x5A4D, b"MZ"), (0x685A42, b"BZh")],
    ids=["gzip", "MZ", "bzip2"],
)
def test_a_truncated_model_is_called_truncated_whatever_its_length_bytes_spell(length, magic, tmp_path):
    header = b'{"__metadata__":{"imgclf":"x"}' + b" " * (length - 31) + b"}"
    blob = join(header)
    assert len(header) == length and blob.startswith(magic)  # the length field really spells the magic
    path = tmp_path / "cut.imgclf"
    path.write_bytes(blob[: 8 + length // 2])
    message = _rejects(path, ("truncated: header says",))
    assert "looks like" not in message


def test_a_foreign_file_named_onnx_is_called_an_onnx_model(tmp_path):
    """The extension settles what nothing in the bytes does (``describe`` gets the path)."""
    path = tmp_path / "exported.onnx"
    path.write_bytes(struct.pack("<Q", 2**40) + b"\0" * 64)
    _rejects(path, ("looks like an ONNX model",))
    path = path.rename(tmp_path / "exported.bin")
    assert "ONNX" not in _rejects(path, ("header length",))


class _Unreadable(io.BytesIO):
    """A file object whose second look fails, as on a file that vanished or a flaky network disk."""

    def seek(self, *args):  # noqa: ARG002
        raise OSError("input/output error")


def test_a_foreign_file_that_cannot_be_read_again_is_described_from_its_first_bytes():
    from imgclf.modelfile.format import _foreign

    head = pickle.dumps({}, protocol=0)  # b"(dp0\n.": a protocol-0 pickle, recognised by its final STOP
    error = _foreign("m.imgclf", _Unreadable(), head, "header check failed", "fix it")
    assert "looks like a Python pickle (protocol 0/1" in str(error), str(error)


def _parse(blob: bytes, tmp_path: Path):
    path = tmp_path / "m.imgclf"
    path.write_bytes(blob)
    return modelfile.manifest.parse(modelfile.format.read_container(path, with_data=False))


def _set_probe(**fields):
    def edit(m):
        m["probes"][0].update(fields)

    return edit


# Manifest bounds at the documented limits (docs/format.md): on the limit accepted, past it refused.
MANIFEST_EDGES_OK = {
    "one probe": lambda m: m.update(probes=m["probes"][:1]),
    "64 probes": lambda m: m.update(probes=(m["probes"] * 64)[:64]),
    "probabilities exactly 1 and 0": _set_probe(probabilities=[1.0, 0.0]),
    "label name of one character": lambda m: (
        m.update(class_names=["a", "b"]),
        [p["label"].update(name="ab"[p["label"]["index"]]) for p in m["probes"]],
    ),
    "label name of 1000 characters": lambda m: (
        m.update(class_names=["a" * 1000, "b"]),
        [p.update(label={"index": 0, "name": "a" * 1000}) for p in m["probes"]],
    ),
}
MANIFEST_EDGES_REFUSED = {
    "no probe": (lambda m: m.update(probes=[]), "probes"),
    "65 probes": (lambda m: m.update(probes=(m["probes"] * 65)[:65]), "probes"),
    "a probability just over 1": (_set_probe(probabilities=[1.0005, 0.0]), "probes[0].probabilities"),
    "probabilities summing to 1.2": (_set_probe(probabilities=[0.6, 0.6]), "probes[0].probabilities"),
    "a digest that is not hex": (_set_probe(input_sha256="x" * 64), "probes[0].input_sha256"),
    "an empty label name": (_set_probe(label={"index": 0, "name": ""}), "probes[0].label"),
}


@pytest.mark.parametrize("edit", MANIFEST_EDGES_OK.values(), ids=MANIFEST_EDGES_OK)
def test_manifest_values_on_the_documented_limits_are_accepted(edit, good, tmp_path):
    _parse(edit_manifest(good, edit), tmp_path)


@pytest.mark.parametrize("edit, field", MANIFEST_EDGES_REFUSED.values(), ids=MANIFEST_EDGES_REFUSED)
def test_manifest_values_past_the_documented_limits_are_refused(edit, field, good, tmp_path):
    with pytest.raises(ModelFileError, match=re.escape(field)):
        _parse(edit_manifest(good, edit), tmp_path)


def _container(tmp_path: Path, header: dict, data: bytes = b"", **kw):
    path = tmp_path / "c.safetensors"
    path.write_bytes(join(header, data))
    return modelfile.format.read_container(path, **kw)


def _one(name="t", dtype="F32", shape=(1,), nbytes=4) -> dict:
    return {name: {"dtype": dtype, "shape": list(shape), "data_offsets": [0, nbytes]}}


# The container's own limits (format.py), on the limit and just past it, read directly.
CONTAINER_OK = {
    "a 512-character name": (_one(name="n" * 512), 4),
    "16 dimensions": (_one(shape=(1,) * 16), 4),
    "no tensors": ({"__metadata__": {"k": "v"}}, 0),
    "booleans 0 and 1": (_one(dtype="BOOL", shape=(2,), nbytes=2), 2),
}
CONTAINER_REFUSED = {
    "a 513-character name": (_one(name="n" * 513), 4, "bad tensor name"),
    "a backslash in a name": (_one(name="a\\b"), 4, "bad tensor name"),
    "17 dimensions": (_one(shape=(1,) * 17), 4, "bad shape"),
    "a boolean dimension": (_one(shape=(True,)), 4, "bad shape"),
    "a shape that is not a list": (
        {"t": {"dtype": "F32", "shape": 4, "data_offsets": [0, 4]}},
        4,
        "bad shape",
    ),
    "an entry that is a list": ({"t": ["F32", [1], [0, 4]]}, 4, "malformed entry"),
    "2**63 bytes": (_one(dtype="U8", shape=(2**62, 2), nbytes=4), 4, "overflows"),
    "metadata that is a list": ({"__metadata__": ["a"], **_one()}, 4, "__metadata__"),
    "overlapping tensors": (
        {
            "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
            "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
        },
        8,
        "overlapping tensors at byte 4",
    ),
}


@pytest.mark.parametrize("header, size", CONTAINER_OK.values(), ids=CONTAINER_OK)
def test_containers_on_the_limits_are_read(header, size, tmp_path):
    c = _container(tmp_path, header, b"\x01" * size)
    for name in c.entries:
        c.tensor(name)


@pytest.mark.parametrize("header, size, words", CONTAINER_REFUSED.values(), ids=CONTAINER_REFUSED)
def test_containers_past_the_limits_are_refused(header, size, words, tmp_path):
    with pytest.raises(ModelFileError, match=re.escape(words)):
        _container(tmp_path, header, b"\0" * size)


def test_booleans_other_than_0_and_1_are_refused_when_read(tmp_path):
    c = _container(tmp_path, _one(dtype="BOOL", shape=(2,), nbytes=2), b"\x01\x02")
    with pytest.raises(ModelFileError, match="holds booleans other than 0 and 1"):
        c.tensor("t")


def test_a_container_read_without_data_holds_none(tmp_path):
    c = _container(tmp_path, _one(), b"\0" * 4, with_data=False)
    assert c.raw is None and c.entries["t"].shape == (1,)
    assert (
        c.header_bytes == len(json.dumps(_one(), separators=(",", ":")))
        and c.file_bytes == 8 + c.header_bytes + 4
    )


# Format version 2's task field (docs/format.md §3): type, thresholds (multi-label: one per class, in
# [0, 1]) and balance, checked against a single-label file and the multi-label golden file.
GOLDEN_V2 = Path(__file__).parents[1] / "fixtures" / "golden_v2.imgclf"


def _task(**fields):
    return lambda m: m["task"].update(fields)


TASK_OK = {
    "single-label, balance weights": ("single", _task(balance="weights"), ("single_label", None, "weights")),
    "single-label, balance sampler": ("single", _task(balance="sampler"), ("single_label", None, "sampler")),
    "multi-label, thresholds 0, 1 and 0.5": (
        "multi",
        _task(thresholds=[0, 1.0, 0.5], balance="none"),
        ("multi_label", (0.0, 1.0, 0.5), "none"),
    ),
}
# each case: the file, the edit, the field named, and what the message says was expected
TASK_REFUSED = {
    "a task that is a string": (
        "single",
        lambda m: m.update(task="single_label"),
        "task",
        "an object with type, thresholds and balance",
    ),
    "a task without balance": (
        "single",
        lambda m: m["task"].pop("balance"),
        "task",
        "an object with type, thresholds and balance",
    ),
    "a task with an extra key": (
        "single",
        _task(threshold=0.5),
        "task",
        "an object with type, thresholds and balance",
    ),
    "an unknown type": ("single", _task(type="multilabel"), "task.type", "single_label | multi_label"),
    "an unknown balance": ("single", _task(balance="oversample"), "task.balance", "none | weights | sampler"),
    "single-label thresholds": (
        "single",
        _task(thresholds=[0.5, 0.5]),
        "task.thresholds",
        "null for a single-label model",
    ),
    "multi-label without thresholds": (
        "multi",
        _task(thresholds=None),
        "task.thresholds",
        "3 thresholds in [0, 1]",
    ),
    "one threshold short": (
        "multi",
        _task(thresholds=[0.5, 0.5]),
        "task.thresholds",
        "3 thresholds in [0, 1]",
    ),
    "one threshold too many": (
        "multi",
        _task(thresholds=[0.5] * 4),
        "task.thresholds",
        "3 thresholds in [0, 1]",
    ),
    "a threshold just over 1": (
        "multi",
        _task(thresholds=[0.5, 1.0001, 0.5]),
        "task.thresholds",
        "3 thresholds in [0, 1]",
    ),
    "a threshold just under 0": (
        "multi",
        _task(thresholds=[0.5, -0.0001, 0.5]),
        "task.thresholds",
        "3 thresholds in [0, 1]",
    ),
    "a threshold that is a boolean": (
        "multi",
        _task(thresholds=[0.5, True, 0.5]),
        "task.thresholds",
        "3 thresholds in [0, 1]",
    ),
    "a threshold that is a string": (
        "multi",
        _task(thresholds=[0.5, "0.5", 0.5]),
        "task.thresholds",
        "3 thresholds in [0, 1]",
    ),
}


def _task_file(kind: str, good: bytes) -> bytes:
    return good if kind == "single" else GOLDEN_V2.read_bytes()


@pytest.mark.parametrize("kind, edit, expected", TASK_OK.values(), ids=TASK_OK)
def test_task_fields_in_range_are_read_as_written(kind, edit, expected, good, tmp_path):
    task = _parse(edit_manifest(_task_file(kind, good), edit), tmp_path).task
    assert (task.type, task.thresholds, task.balance) == expected
    assert task.to_dict() == {
        "type": expected[0],
        "thresholds": expected[1] and list(expected[1]),
        "balance": expected[2],
    }


@pytest.mark.parametrize("kind, edit, field, expected", TASK_REFUSED.values(), ids=TASK_REFUSED)
def test_task_fields_out_of_range_are_refused(kind, edit, field, expected, good, tmp_path):
    blob = edit_manifest(_task_file(kind, good), edit)
    with pytest.raises(ModelFileError) as caught:
        _parse(blob, tmp_path)
    error = caught.value
    task = manifest_of(blob)["task"]
    received = task[field.split(".")[1]] if "." in field else task
    path = str(tmp_path / "m.imgclf")
    assert error.problem == f"invalid model file {path!r}: manifest field {field} is malformed"
    assert (error.received, error.expected) == (repr(received)[:100], expected)
