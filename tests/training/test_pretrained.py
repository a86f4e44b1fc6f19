"""Start weights from a file: safetensors, .pth state dicts, imgclf files; matched by name, refused safely."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from imgclf.config import PreprocessSpec, TrainConfig
from imgclf.errors import UsageError
from imgclf.models import registry
from imgclf.models.timm_backbone import head_names
from imgclf.training.pretrained import match, start_weights
from imgclf.training.weight_files import read_tensors

ARGS = {"widths": [4, 8]}


def _model(classes: int = 3, seed: int = 0, args=ARGS) -> torch.nn.Module:
    torch.manual_seed(seed)
    return registry.build("small_cnn", classes, (16, 16), args)


def _config(**changes) -> TrainConfig:
    return TrainConfig(
        arch="small_cnn", arch_args=ARGS, preprocess=PreprocessSpec(height=16, width=16), **changes
    )


def _backbone(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    head = head_names(model)
    return {k: v for k, v in model.state_dict().items() if k not in head}


def _assert_backbone_equal(a: torch.nn.Module, b: torch.nn.Module) -> None:
    got, want = _backbone(a), _backbone(b)
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_head_names_are_the_last_linear_layer():
    assert head_names(_model()) == {"head.weight", "head.bias"}


@pytest.mark.parametrize("kind", ["safetensors", "pth", "pth_nested", "pth_module_prefix"])
def test_weights_file_loads_every_backbone_tensor_bit_identically(kind, tmp_path):
    source = _model(classes=10, seed=1)  # "ImageNet" head: 10 classes
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    path = tmp_path / ("w.safetensors" if kind == "safetensors" else "w.pth")
    if kind == "safetensors":
        save_file(state, str(path))
    elif kind == "pth":
        torch.save(state, path)
    elif kind == "pth_nested":
        torch.save({"state_dict": state, "epoch": 3}, path)
    else:
        torch.save({"module." + k: v for k, v in state.items()}, path)
    target = _model(classes=3, seed=2)
    new_head = target.head.weight.detach().clone()
    info = start_weights(target, _config(weights=str(path)), ["a", "b", "c"])
    _assert_backbone_equal(target, source)
    assert torch.equal(target.head.weight, new_head)  # the old 10-class head is not used
    assert info["loaded"] == len(_backbone(source))
    assert info["skipped"] == ["head.bias", "head.weight"]
    assert info["head"] == "new" and info["kind"] == "weights" and len(info["sha256"]) == 64


def test_weights_for_another_architecture_are_refused(tmp_path):
    path = tmp_path / "seed.safetensors"
    torch.manual_seed(0)
    other = registry.build("seed_resnet", 2, (32, 32))
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    with pytest.raises(UsageError, match="no tensor of the weights file matches the model") as exc:
        start_weights(_model(), _config(weights=str(path)), ["a", "b", "c"])
    assert "use weights made for this architecture" in str(exc.value)


def test_weights_of_another_width_are_refused_naming_the_shapes(tmp_path):
    wider = _model(args={"widths": [4, 16]})
    path = tmp_path / "w.pth"
    torch.save(wider.state_dict(), path)
    with pytest.raises(UsageError) as exc:
        start_weights(_model(), _config(weights=str(path)), ["a", "b", "c"])
    msg = str(exc.value)
    assert "tensor shape(s) of the weights file differ from the model" in msg
    assert "features.4.weight: file [16, 4, 3, 3], model [8, 4, 3, 3]" in msg


def test_weights_missing_part_of_the_backbone_are_refused(tmp_path):
    state = _model().state_dict()
    del state["features.4.weight"]
    path = tmp_path / "w.pth"
    torch.save(state, path)
    with pytest.raises(UsageError, match=r"lacks 1 of the model's \d+ backbone tensors"):
        start_weights(_model(), _config(weights=str(path)), ["a", "b", "c"])


class _Boom:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # would create the marker file when unpickled


def test_a_pth_with_pickled_objects_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    torch.save({"conv.weight": torch.zeros(1), "payload": _Boom(str(marker))}, path)
    with pytest.raises(UsageError) as exc:
        read_tensors(str(path))
    assert str(exc.value).startswith(
        "the .pth file holds more than tensors (pickled objects are never loaded)"
    )
    assert not marker.exists()
    legacy = tmp_path / "legacy.pth"  # a bare pickle (not torch.save's zip) is refused the same way
    legacy.write_bytes(pickle.dumps(_Boom(str(marker)), protocol=2))
    with pytest.raises(UsageError, match="holds more than tensors"):
        read_tensors(str(legacy))
    assert not marker.exists()


def test_a_pth_of_plain_values_is_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(UsageError, match="not a state dict of named tensors"):
        read_tensors(str(path))


@pytest.mark.parametrize("content", [b"", b"hello, not weights", b"\x00" * 64])
def test_unknown_weights_files_are_refused(content, tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(content)
    with pytest.raises(UsageError, match="unknown weights file format"):
        read_tensors(str(path))


def test_a_missing_weights_file_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError) as exc:
        read_tensors(str(tmp_path / "nope.safetensors"))
    assert str(exc.value).startswith("cannot read the weights file")
    assert "never downloaded" in str(exc.value)


def test_weights_and_init_from_together_are_refused(tmp_path):
    with pytest.raises(UsageError, match="--weights and --init-from both given"):
        start_weights(_model(), _config(weights="a.pth", init_from="b.imgclf"), ["a", "b", "c"])


def test_no_start_file_changes_nothing():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert start_weights(model, _config(), ["a", "b", "c"]) is None
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_match_keeps_the_head_only_when_asked():
    source, target = _model(seed=1), _model(seed=2)
    info = match(target, source.state_dict(), keep_head=True, path="p")
    assert info["skipped"] == [] and torch.equal(target.head.weight, source.head.weight)


def test_an_imgclf_file_is_a_weights_file_too(tmp_path):
    from helpers import make_classifier
    from imgclf import modelfile

    parent = make_classifier(("x", "y"), args=ARGS, size=16)
    path = tmp_path / "parent.imgclf"
    modelfile.save(parent, path)
    target = _model(classes=3, seed=5)
    info = start_weights(target, _config(weights=str(path)), ["a", "b", "c"])
    _assert_backbone_equal(target, parent.model)
    assert info["skipped"] == ["head.bias", "head.weight"]


def test_init_from_keeps_the_head_for_the_same_classes_and_replaces_it_otherwise(tmp_path):
    from helpers import make_classifier
    from imgclf import modelfile

    parent = make_classifier(("x", "y"), args=ARGS, size=16)
    path = tmp_path / "parent.imgclf"
    modelfile.save(parent, path)
    same = _model(classes=2, seed=5)
    info = start_weights(same, _config(init_from=str(path)), ["x", "y"])
    assert info["head"] == "kept" and torch.equal(same.head.weight, parent.model.head.weight)
    assert info["parent_tensors_sha256"] == modelfile.inspect(path)["integrity"]["tensors_sha256"]
    other = _model(classes=2, seed=5)
    info = start_weights(other, _config(init_from=str(path)), ["y", "x"])  # same count, other classes
    assert info["head"] == "new" and not torch.equal(other.head.weight, parent.model.head.weight)
    _assert_backbone_equal(other, parent.model)
    with pytest.raises(UsageError, match="--init-from names a model of another architecture"):
        start_weights(_model(), _config(init_from=str(path)).replace(arch_args={"widths": [4, 4]}), ["x"])
    assert os.path.exists(path)


def test_a_hub_id_reads_the_local_hugging_face_cache_only_offline(tmp_path, monkeypatch):
    from imgclf.training.weight_files import resolve_weights

    source = _model(classes=10, seed=1)
    snapshot = tmp_path / "hub" / "models--acme--tiny.v1" / "snapshots" / ("ab" * 20)
    snapshot.mkdir(parents=True)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(snapshot / "model.safetensors"))
    (tmp_path / "hub" / "models--acme--tiny.v1" / "refs").mkdir()
    (tmp_path / "hub" / "models--acme--tiny.v1" / "refs" / "main").write_text("ab" * 20)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert resolve_weights("acme/tiny.v1") == "acme/tiny.v1"  # not offline: only paths
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_weights("acme/tiny.v1") == str(snapshot / "model.safetensors")
    target = _model(classes=3, seed=2)
    info = start_weights(target, _config(weights="acme/tiny.v1"), ["a", "b", "c"])
    _assert_backbone_equal(target, source)
    assert info["path"] == str(snapshot / "model.safetensors")
    with pytest.raises(UsageError, match="not in the local Hugging Face cache"):
        resolve_weights("acme/other")
