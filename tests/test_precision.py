"""Precision selection for torch prediction: native bf16 detection, the probe agreement check, the CLI."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import imgclf
from helpers import run_cli
from imgclf import precision
from imgclf.errors import UsageError
from imgclf.precision import PrecisionChoice, apply_precision, choose_precision, probe_inputs


@pytest.fixture
def no_native(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda: None)


@pytest.fixture
def amx(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda: "AMX")


def test_native_bf16_reads_torch_then_cpu_flags(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    monkeypatch.setattr(precision, "CPUINFO", str(info))
    assert precision.native_bf16() is None
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\n")
    assert precision.native_bf16() == "AVX-512 BF16"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert precision.native_bf16() == "AMX"


def test_auto_is_fp32_without_native_bf16(tiny_model, no_native):
    clf = imgclf.load(tiny_model.model_path)
    choice = choose_precision(clf, "auto", lambda: pytest.fail("probes are not needed"))
    assert choice == PrecisionChoice("fp32", "CPU has neither AMX nor AVX-512 BF16")


def test_auto_picks_bf16_when_native_and_probes_agree(tiny_model, amx):
    clf = imgclf.load(tiny_model.model_path)
    probes = probe_inputs(tiny_model.model_path)
    assert len(probes) > 0
    choice = choose_precision(clf, "auto", probes)
    assert (
        choice.precision == "bf16" and f"top-1 agrees with fp32 on all {len(probes)} probes" in choice.reason
    )
    fp32 = clf.predict_proba_uint8(probes)
    apply_precision(clf, choice)
    assert clf.autocast_dtype is torch.bfloat16
    bf16 = clf.predict_proba_uint8(probes)
    assert (bf16.argmax(1) == fp32.argmax(1)).all() and not np.array_equal(bf16, fp32)
    apply_precision(clf, PrecisionChoice("fp32", "requested"))
    assert np.array_equal(clf.predict_proba_uint8(probes), fp32)


def test_auto_keeps_fp32_when_bf16_changes_the_top1_class(tiny_model, amx):
    clf = imgclf.load(tiny_model.model_path)
    with torch.no_grad():  # a margin below bf16's resolution: fp32 says class 1, bf16 sees a tie
        clf.model.head.weight.zero_()
        clf.model.head.bias.copy_(torch.tensor([1.0, 1.0001]))
    probes = probe_inputs(tiny_model.model_path)
    choice = choose_precision(clf, "auto", probes)
    assert choice.precision == "fp32"
    assert f"bf16 changes the top-1 class on {len(probes)} of {len(probes)} probes" in choice.reason


def test_predict_cli_shows_the_choice(tiny_model, no_native):
    image = next((tiny_model.dataset / "testing").rglob("*.png"))
    code, out, err = run_cli(
        "predict", "--model", tiny_model.model_path, "--images", image, "--precision", "auto"
    )
    assert code == 0 and err == "imgclf: precision fp32 (CPU has neither AMX nor AVX-512 BF16)\n"
    code, out_bf16, err = run_cli(
        "predict", "--model", tiny_model.model_path, "--images", image, "--precision", "bf16"
    )
    assert code == 0 and err.startswith("imgclf: precision bf16 (requested; ")
    assert out.split("\t")[1] == out_bf16.split("\t")[1]
    code, _, err = run_cli(
        "predict", "--model", tiny_model.model_path, "--images", image, "--precision", "fp32"
    )
    assert code == 0 and err == ""


def test_bf16_is_refused_for_an_exported_model_and_a_bad_env_value(tiny_model, tmp_path, monkeypatch):
    onnx_path = tmp_path / "m.onnx"
    assert run_cli("export", tiny_model.model_path, "--out", onnx_path)[0] == 0
    image = next((tiny_model.dataset / "testing").rglob("*.png"))
    code, _, err = run_cli("predict", "--model", onnx_path, "--images", image, "--precision", "bf16")
    assert code == 2 and "--precision bf16 applies to an .imgclf model on the CPU" in err
    monkeypatch.setenv("IMGCLF_PRECISION", "fp16")
    code, _, err = run_cli("predict", "--model", tiny_model.model_path, "--images", image)
    assert code == 2 and "unknown precision in $IMGCLF_PRECISION" in err
    with pytest.raises(UsageError, match="unknown precision"):
        choose_precision(None, "half", np.zeros((0, 1, 1, 3)))


def test_the_server_applies_the_precision_from_the_environment(tiny_model, amx, monkeypatch, capsys):
    from imgclf.serving.models import load_served

    monkeypatch.setenv("IMGCLF_PRECISION", "auto")
    served = load_served("tiny", str(tiny_model.model_path))
    assert served.classifier.autocast_dtype is torch.bfloat16
    assert "imgclf: precision bf16 (CPU has AMX; top-1 agrees with fp32" in capsys.readouterr().err
    monkeypatch.setenv("IMGCLF_PRECISION", "fp32")
    assert load_served("tiny", str(tiny_model.model_path)).classifier.autocast_dtype is None


def test_the_server_takes_a_precision_flag_over_the_environment_and_keeps_it_on_reload(
    tiny_model, amx, monkeypatch
):
    pytest.importorskip("fastapi")
    from imgclf.serving import models, server

    opened = []
    original = models.ModelStore.open

    def record(*args, **kwargs):
        opened.append(original(*args, **kwargs))
        return opened[-1]

    monkeypatch.setattr(models.ModelStore, "open", record)
    monkeypatch.setattr(server, "serve", lambda *a, **k: None)  # load, then return instead of serving
    monkeypatch.setenv("IMGCLF_PRECISION", "fp32")
    path = str(tiny_model.model_path)
    code, _, err = run_cli("serve", f"m={path}", "--port", "0", "--precision", "auto")
    assert code == 0, err
    assert "imgclf: precision bf16 (CPU has AMX; top-1 agrees with fp32" in err
    store = opened[-1]
    assert store.precision == "auto" and store.get("m").classifier.autocast_dtype is torch.bfloat16
    assert store.reload("m").classifier.autocast_dtype is torch.bfloat16  # the flag, not the environment
    code, _, err = run_cli("serve", f"m={path}", "--port", "0")  # no flag: $IMGCLF_PRECISION (fp32)
    assert code == 0 and opened[-1].get("m").classifier.autocast_dtype is None and "precision" not in err
    code, _, err = run_cli("serve", f"m={path}", "--precision", "fp16")
    assert code == 2 and "invalid choice: 'fp16'" in err
    monkeypatch.setenv("IMGCLF_PRECISION", "half")
    code, _, err = run_cli("serve", f"m={path}", "--port", "0")
    assert code == 2 and "unknown precision in $IMGCLF_PRECISION" in err
