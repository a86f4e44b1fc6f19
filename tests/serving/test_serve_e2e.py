"""End to end: ``imgclf serve`` in a subprocess answers what ``imgclf predict --output x.jsonl`` writes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from servehelpers import ServerProcess, cli_env, write_model  # noqa: E402

from helpers import make_dataset  # noqa: E402
from imgclf.modelfile import load  # noqa: E402

pytestmark = pytest.mark.slow


def cli_predict(model, images, out, *extra) -> list[dict]:
    cmd = [
        sys.executable,
        "-m",
        "imgclf",
        "predict",
        "--model",
        model,
        "--images",
        images,
        "--output",
        out,
        *extra,
    ]
    proc = subprocess.run(list(map(str, cmd)), env=cli_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode in (0, 4), proc.stderr
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_server_answers_equal_cli_predict_value_for_value(tmp_path):
    model = write_model(tmp_path / "cells.imgclf")
    folder = make_dataset(tmp_path / "imgs", {"": 6})  # flat class folders, PNG/JPEG, several modes
    (folder / "ring" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    rows = cli_predict(model, folder, tmp_path / "x.jsonl", "--top-k", "2")
    assert len(rows) == 13 and sum("error" in r for r in rows) == 1
    with ServerProcess([model]) as server:
        # one multipart request, files named by the CLI's paths, in the CLI's order
        files = [("files", (r["path"], open(r["path"], "rb").read())) for r in rows]  # noqa: SIM115
        got = httpx.post(f"{server.url}/v1/models/cells/predict?top_k=2", files=files, timeout=60)
        assert got.status_code == 200, got.text
        assert got.json()["predictions"] == rows  # labels, confidences, probabilities, top_k, error text
        one = folder / "ring" / "ring_000.png"  # one image alone: equal to the library on that one image
        raw = httpx.post(f"{server.url}/v1/predict", content=one.read_bytes(), timeout=60)
        want = load(model).predict(one)[0]
        assert raw.json()["predictions"] == [
            {"label": want.label, "confidence": want.confidence, "probabilities": want.probabilities}
        ]
        code, err = server.stop()
    assert code == 0, err
