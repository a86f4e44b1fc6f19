"""``timm:NAME`` backbones: the family's names, the missing-timm errors, and (where timm imports) building,
exact weight loading, the file round trip in a new process and ONNX parity, on tiny models at 32x32.

timm imports torchvision when it is imported; beside a CPU-only torch, PyPI's CUDA torchvision cannot load its
compiled operators, and ``timm_backbone.require_timm`` declares the ones torchvision's import needs.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from imgclf import modelfile
from imgclf.classifier import Classifier
from imgclf.config import PreprocessSpec
from imgclf.errors import ModelFileError, UsageError
from imgclf.models import registry, timm_backbone

SIZE = 32
TINY = "test_resnet"  # timm's own test model: a ResNet with 0.4 M parameters


def _need_timm():
    # timm is in the dev extra: these tests run, never skip (require_timm also covers a torchvision built
    # for another torch, as PyPI's CUDA torchvision beside the pinned CPU torch is here).
    return timm_backbone.require_timm()


def _no_timm(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` raise ImportError


def test_family_names_resolve_without_importing_timm():
    before = set(sys.modules)
    entry = registry.info("timm:resnet18")
    assert entry.name == "timm:resnet18"
    assert registry.resolve_args("timm:resnet18", {}) == {
        "timm_version": "",
        "drop_rate": 0.0,
        "drop_path_rate": 0.0,
    }
    assert not {m for m in set(sys.modules) - before if m.startswith(("timm", "torchvision"))}


@pytest.mark.parametrize(
    "name", ["timm:", "timm:ResNet", "timm:hf-hub:timm/resnet18", "timm:../x", "timm:a/b"]
)
def test_family_member_names_are_checked_as_data(name):
    with pytest.raises(UsageError, match="bad timm model name"):
        registry.info(name)


def test_unknown_names_list_the_family():
    with pytest.raises(UsageError) as exc:
        registry.info("resnet18")
    assert "timm:NAME" in str(exc.value)


def test_building_without_timm_is_one_line_naming_the_install(monkeypatch):
    _no_timm(monkeypatch)
    with pytest.raises(UsageError) as exc:
        registry.build("timm:resnet18", 3, (SIZE, SIZE))
    assert str(exc.value) == (
        "timm is not installed; received an architecture timm:NAME; expected the optional timm extra. "
        "Fix: pip install 'imgclf[timm]'"
    )


def test_a_broken_timm_install_is_a_usage_error(monkeypatch):
    import builtins

    real = builtins.__import__

    def broken(name, *args, **kwargs):
        if name == "timm":
            raise RuntimeError("operator torchvision::nms does not exist")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", broken)
    with pytest.raises(UsageError, match="timm is installed but cannot be imported.*torchvision::nms"):
        timm_backbone.require_timm()


def _timm_file(tmp_path, small_file) -> str:
    """A model file whose manifest names timm:resnet18 (made without timm: only the manifest matters)."""
    from helpers import edit_manifest

    def edit(m):
        m["architecture"] = {
            "name": "timm:resnet18",
            "args": {"timm_version": "1.0.15", "drop_rate": 0.0, "drop_path_rate": 0.0},
        }

    path = tmp_path / "timm.imgclf"
    path.write_bytes(edit_manifest(small_file.read_bytes(), edit))
    return str(path)


@pytest.fixture
def small_file(tmp_path):
    from helpers import make_classifier

    path = tmp_path / "small.imgclf"
    modelfile.save(make_classifier(), path)
    return path


def test_loading_a_timm_model_without_timm_refuses_cleanly(monkeypatch, tmp_path, small_file):
    _no_timm(monkeypatch)
    path = _timm_file(tmp_path, small_file)
    info = modelfile.inspect(path)  # inspecting needs no timm
    assert info["architecture"]["name"] == "timm:resnet18"
    with pytest.raises(ModelFileError) as exc:
        modelfile.load(path)
    msg = str(exc.value)
    assert msg.startswith(
        f"invalid model file {path!r}: cannot build the architecture: timm is not installed"
    )
    assert msg.endswith("Fix: pip install 'imgclf[timm]'") and "\n" not in msg


# --- with timm ---------------------------------------------------------------------------------------------


def _classifier(name: str = TINY, classes=("a", "b", "c"), seed: int = 0) -> Classifier:
    _need_timm()
    torch.manual_seed(seed)
    args = registry.pinned_args(f"timm:{name}", {})
    model = registry.build(f"timm:{name}", len(classes), (SIZE, SIZE), args)
    spec = PreprocessSpec(height=SIZE, width=SIZE, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    return Classifier(model.eval(), list(classes), spec, f"timm:{name}", args)


def test_a_timm_model_builds_with_a_new_head_and_records_its_version():
    clf = _classifier()
    assert clf.arch_args["timm_version"] == timm_backbone.installed_version()
    assert timm_backbone.head_names(clf.model) == {"fc.weight", "fc.bias"}
    assert clf.model.fc.out_features == 3
    with pytest.raises(UsageError, match="unknown timm model"):
        registry.build("timm:resnet_does_not_exist", 3, (SIZE, SIZE))


def test_timm_preprocessing_comes_from_its_pretrained_configuration():
    _need_timm()
    spec = timm_backbone.data_config("resnet18")
    assert spec["mean"] == pytest.approx([0.485, 0.456, 0.406]) and spec["std"] == pytest.approx(
        [0.229, 0.224, 0.225]
    )
    assert (spec["height"], spec["width"]) == (224, 224) and spec["interpolation"] in ("bilinear", "bicubic")
    assert timm_backbone.data_config("resnet18", (SIZE, SIZE))["height"] == SIZE
    PreprocessSpec.from_dict(spec)  # a valid spec


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_random_timm_resnet18_weights_load_bit_identically(fmt, tmp_path):
    """A randomly initialised timm resnet18 saved as model.safetensors (timm / Hugging Face) and as a
    torchvision-style .pth state dict load into --arch timm:resnet18, every backbone tensor bit-identical."""
    timm = _need_timm()
    from safetensors.torch import save_file

    from imgclf.config import TrainConfig
    from imgclf.training.pretrained import start_weights

    torch.manual_seed(123)
    source = timm.create_model("resnet18", pretrained=False, num_classes=1000)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    path = tmp_path / ("model.safetensors" if fmt == "safetensors" else "resnet18.pth")
    save_file(state, str(path)) if fmt == "safetensors" else torch.save(state, path)
    target = registry.build("timm:resnet18", 5, (SIZE, SIZE))
    config = TrainConfig(arch="timm:resnet18", weights=str(path))
    info = start_weights(target, config, list("abcde"))
    got = target.state_dict()
    body = [k for k in state if not k.startswith("fc.")]
    assert all(torch.equal(got[k], state[k]) for k in body)
    assert info["loaded"] == len(body) and info["skipped"] == ["fc.bias", "fc.weight"]


def test_weights_of_another_timm_model_are_refused(tmp_path):
    timm = _need_timm()
    from safetensors.torch import save_file

    from imgclf.config import TrainConfig
    from imgclf.training.pretrained import start_weights

    other = timm.create_model(TINY, pretrained=False)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(path))
    target = registry.build("timm:resnet18", 5, (SIZE, SIZE))
    with pytest.raises(UsageError, match="differ from the model|lacks"):
        start_weights(target, TrainConfig(arch="timm:resnet18", weights=str(path)), list("abcde"))


@pytest.mark.slow  # a fresh interpreter imports timm (and torchvision): seconds
def test_a_timm_model_file_round_trips_in_a_new_process(tmp_path):
    clf = _classifier()
    path = tmp_path / "t.imgclf"
    modelfile.save(clf, path)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 40, 36, 3), dtype=np.uint8)
    np.save(tmp_path / "x.npy", images)
    here = clf.predict_proba(list(images))
    code = (
        "import json, sys, numpy as np, imgclf; c = imgclf.load(sys.argv[1]); "
        "x = np.load(sys.argv[2]); print(json.dumps(c.predict_proba(list(x)).tolist()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path), str(tmp_path / "x.npy")],
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    there = np.array(json.loads(out.stdout.strip().splitlines()[-1]), dtype=np.float32)
    assert np.array_equal(there, here)
    assert modelfile.verify(path).ok


def test_a_timm_version_that_builds_other_tensors_is_refused_naming_both(tmp_path):
    from helpers import edit_manifest, rebuild, tensors_of

    clf = _classifier()
    path = tmp_path / "t.imgclf"
    modelfile.save(clf, path)
    blob = path.read_bytes()
    tensors = tensors_of(blob)
    first = next(k for k in tensors if k.startswith("model.") and k.endswith(".weight"))
    tensors["model.renamed.weight"] = tensors.pop(first)  # as another timm version might name it
    blob = edit_manifest(
        rebuild(blob, tensors), lambda m: m["architecture"]["args"].update(timm_version="0.0.1")
    )
    path.write_bytes(blob)
    with pytest.raises(ModelFileError) as exc:
        modelfile.load(path)
    msg = str(exc.value)
    assert "weights do not match the architecture" in msg
    assert (
        f"(the file was made with timm 0.0.1, timm {timm_backbone.installed_version()} is installed)" in msg
    )


def test_onnx_export_of_a_timm_model_passes_the_parity_gate(tmp_path):
    _need_timm()
    pytest.importorskip("onnxruntime")
    from imgclf.interop.onnx_export import export_onnx

    clf = _classifier()
    path = tmp_path / "t.imgclf"
    modelfile.save(clf, path)
    report = export_onnx(path, tmp_path / "t.onnx")
    assert (tmp_path / "t.onnx").exists()
    import imgclf

    onnx_clf = imgclf.load(tmp_path / "t.onnx")
    rng = np.random.default_rng(1)
    images = list(rng.integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8))
    np.testing.assert_allclose(onnx_clf.predict_proba(images), clf.predict_proba(images), atol=1e-5)
    assert report is not None


def _parity_dataset(tmp_path):
    from helpers import make_dataset

    return make_dataset(tmp_path / "data", {"training": 6, "validation": 2, "testing": 4})


def test_imagenet_normalisation_is_bitwise_the_same_on_evaluation_and_predict_paths(tmp_path):
    """The mean/std step that timm backbones use, through both paths (no timm needed)."""
    from imgclf.data.decode import load_split
    from imgclf.data.folders import scan_dataset
    from imgclf.images.preprocess import preprocess, to_tensor

    spec = PreprocessSpec(
        height=SIZE,
        width=SIZE,
        interpolation="bicubic",
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
    )
    samples = scan_dataset(_parity_dataset(tmp_path)).splits["testing"]
    evaluation = to_tensor(load_split(samples, spec).images, spec)
    assert torch.equal(preprocess([s.path for s in samples], spec), evaluation)
    assert float(evaluation.min()) < -1.0  # normalised, not merely rescaled


@pytest.mark.slow  # a fresh interpreter imports timm (and torchvision): seconds
def test_a_trained_timm_model_predicts_in_a_new_process_exactly_as_training_evaluated(tmp_path):
    _need_timm()
    from helpers import tiny_train_config
    from imgclf.cli.recipe_flags import backbone_preprocess
    from imgclf.training.pipeline import train

    pre = {**backbone_preprocess(f"timm:{TINY}"), "height": SIZE, "width": SIZE}
    config = tiny_train_config(
        arch=f"timm:{TINY}", arch_args={}, epochs=1, preprocess=PreprocessSpec.from_dict(pre)
    )
    result = train(_parity_dataset(tmp_path), tmp_path / "t.imgclf", config)
    assert result.classifier.preprocess.std == pytest.approx(tuple(pre["std"]))  # timm's, saved in the file
    assert result.classifier.preprocess.mean != (0.0, 0.0, 0.0)
    paths = result.evaluation.paths
    code = (
        "import json, sys, torch, imgclf; torch.set_num_threads(int(sys.argv[3])); "
        "print(json.dumps(imgclf.load(sys.argv[1]).predict_proba(json.loads(sys.argv[2])).tolist()))"
    )
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            str(tmp_path / "t.imgclf"),
            json.dumps(paths),
            str(torch.get_num_threads()),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=True,
    )
    assert json.loads(out.stdout.strip().splitlines()[-1]) == result.evaluation.probabilities.tolist()


def test_list_archs_prints_parameter_counts_and_the_timm_route(monkeypatch):
    from helpers import run_cli

    _no_timm(monkeypatch)
    code, out, err = run_cli("train", "--list-archs")
    assert code == 0 and err == ""
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    count = registry.parameter_count("seed_resnet", 10, (64, 64))
    assert f"{count:,}" in rows["seed_resnet"] and "small_cnn" in rows and "keras_graph" not in rows
    assert out.splitlines()[-1] == (
        "timm:NAME backbones: unavailable (timm is not installed; pip install 'imgclf[timm]')"
    )


def test_the_python_api_applies_a_timm_backbones_preprocessing_as_the_command_line_does(tmp_path):
    _need_timm()
    import imgclf
    from helpers import run_cli
    from imgclf.config import TrainConfig
    from imgclf.training.pipeline import train

    data = _parity_dataset(tmp_path)
    config = TrainConfig(arch=f"timm:{TINY}", epochs=1, batch_size=8, precision="fp32", device="cpu")
    assert not config.preprocess_given
    api = train(data, tmp_path / "api.imgclf", config).classifier.preprocess
    flags = ["--arch", f"timm:{TINY}", "--epochs", "1", "--batch-size", "8", "--precision", "fp32"]
    code, _, err = run_cli("train", "--dataset", data, "--model", tmp_path / "cli.imgclf", *flags)
    assert code == 0, err
    assert api == imgclf.load(tmp_path / "cli.imgclf").preprocess
    assert api == PreprocessSpec.from_dict(timm_backbone.data_config(TINY))
    assert api != PreprocessSpec()  # timm's size, mean and std, not our default


def test_a_given_preprocessing_and_our_own_architectures_keep_theirs():
    from imgclf.config import TrainConfig

    given = PreprocessSpec()  # equal to the default, but set by the caller: kept even for a timm backbone
    for config in (
        TrainConfig(arch=f"timm:{TINY}", preprocess=given),
        TrainConfig(arch=f"timm:{TINY}").replace(preprocess=given),
        TrainConfig.from_dict({"arch": f"timm:{TINY}", "preprocess": {}}),
    ):
        assert config.preprocess_given and timm_backbone.with_arch_preprocess(config) is config
    for arch in ("seed_resnet", "small_cnn"):
        config = TrainConfig(arch=arch)
        assert not config.preprocess_given and timm_backbone.with_arch_preprocess(config) is config
        assert config.preprocess == PreprocessSpec()
    unset = TrainConfig.from_dict({"arch": f"timm:{TINY}", "epochs": 2}).replace(seed=3)
    assert not unset.preprocess_given  # from_dict without "preprocess" and replace keep it unset
