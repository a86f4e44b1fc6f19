"""Tests of imgclf.training.record: one RunRecord writes run.json, the checkpoint facts and the provenance,
with the keys earlier versions wrote (so their run folders resume and their files load)."""

from __future__ import annotations

import json
import types

from helpers import tiny_train_config
from imgclf.training.record import RunRecord
from imgclf.training.runfolder import read_record, write_record

# The keys, in order, of the three documents as imgclf 0.1.0 wrote them before the record was typed.
RUN_JSON_KEYS = [
    "run_id",
    "status",
    "dataset",
    "model",
    "plot",
    "skip_bad",
    "probes_from",
    "config",
    "class_names",
    "data_fingerprint",
    "versions",
    "files",
]
CHECKPOINT_INFO_KEYS = ["run_id", "class_names", "architecture", "data_fingerprint", "device", "distributed"]
PROVENANCE_KEYS = [
    "training",
    "epoch",
    "epochs_run",
    "seed",
    "device",
    "stopped_early",
    "metrics",
    "deterministic",
    "resumed_from",
    "distributed",
    "data",
    "history",
]


def _record(**changes) -> RunRecord:
    fields = {
        "run_id": "0123456789abcdef",
        "dataset": "/data/cells",
        "model": "/models/cells.imgclf",
        "plot": None,
        "skip_bad": False,
        "probes_from": 2,
        "config": tiny_train_config(),
        "class_names": ["ring", "square"],
        "layout": "splits",
        "data_fingerprint": "f" * 64,
        "files": {"training": [["training/ring/a.png", 0, "d" * 64]]},
        "counts": {"training": {"ring": 1, "square": 0}},
        "skipped": 0,
        "device": "cpu",
        "versions": {"imgclf": "0.1.0"},
    }
    return RunRecord(**{**fields, **changes})


def test_the_three_documents_keep_their_keys():
    record = _record()
    state = types.SimpleNamespace(epoch=2, stopped_early=False, history=[{"epoch": 1, "loss": 0.5}])
    assert list(record.run_json()) == RUN_JSON_KEYS
    assert list(record.checkpoint_info()) == CHECKPOINT_INFO_KEYS
    assert list(record.provenance(state, epoch=1, metrics={"loss": 0.5})) == PROVENANCE_KEYS


def test_the_documents_agree_on_the_facts_they_share():
    record = _record(resumed_from="epoch-0001.safetensors")
    state = types.SimpleNamespace(epoch=2, stopped_early=True, history=[])
    run, info = record.run_json(status="finished"), record.checkpoint_info()
    prov = record.provenance(state, epoch=1, metrics={})
    assert run["status"] == "finished" and run["run_id"] == info["run_id"] == "0123456789abcdef"
    assert run["class_names"] == info["class_names"] == ["ring", "square"]
    assert run["data_fingerprint"] == info["data_fingerprint"] == prov["data"]["fingerprint"]
    assert run["config"] == prov["training"] == tiny_train_config().to_dict()
    assert info["architecture"] == {"name": "small_cnn", "args": {"widths": [8, 16], "reg": 0.0001}}
    assert prov["resumed_from"] == "epoch-0001.safetensors" and prov["stopped_early"] is True
    assert prov["data"]["counts"] == {"training": {"ring": 1, "square": 0}}


def test_run_json_round_trips_through_the_run_folder(tmp_path):
    record = _record()
    write_record(tmp_path, record.run_json())
    back = read_record(tmp_path)
    assert back == {"format": "imgclf-run", **json.loads(json.dumps(record.run_json()))}
