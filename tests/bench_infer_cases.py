"""``benchmarks/bench_infer.py`` runs every path in its CI-sized form: a check that it works, not a timing."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "bench_infer.py"


@pytest.mark.slow
def test_bench_infer_quick_run_reports_every_path(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_infer", SCRIPT)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "report.json"
    report = bench.main(["--quick", "--sizes", "32", "--threads", "1", "--json", str(out)])
    assert json.loads(out.read_text()) == report
    assert report["threads"] == 1 and report["cpu"]
    (model,) = report["models"]
    assert model["model"] == "32x32" and set(model["paths"]) == set(bench.PATHS)
    for name, figures in model["paths"].items():
        if "skipped" in figures:  # only what the machine or the environment cannot run
            assert name in ("torch bf16", "openvino fp32", "openvino int8"), figures
            continue
        assert figures["batch1_calls"] >= 2 and figures["batch64_calls"] >= 2
        assert 0 < figures["batch1_p50_ms"] <= figures["batch1_p99_ms"]
        assert figures["batch1_images_per_s"] > 0 and figures["batch64_images_per_s"] > 0
    printed = capsys.readouterr().out
    assert "# threads per runtime: 1" in printed and "| seed_resnet 32x32 | onnxruntime int8 |" in printed
