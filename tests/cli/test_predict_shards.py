"""Sharded ``imgclf predict`` (torchrun or ``--shard I/N``): same results as one process, resumable, never
merging stale, foreign or damaged parts. The oracle is always a single-process ``imgclf predict`` on the
same inputs. The library layer (``imgclf.sharding``) is tested in tests/test_sharding.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import imgclf
from helpers import make_classifier, make_dataset, run_cli
from imgclf import sharding
from imgclf.cli.predict_shards import shard_spec
from imgclf.data.listing import list_images
from imgclf.errors import StorageError

SRC = str(Path(imgclf.__file__).resolve().parent.parent)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Two tiny untrained models (fast, and distinct), 11 images of which one cannot be decoded."""
    base = tmp_path_factory.mktemp("shards")
    images = make_dataset(base / "images", {"": 5})
    (images / "ring" / "broken.png").write_bytes(b"not an image")
    models = []
    for seed in (0, 1):
        path = base / f"m{seed}.imgclf"
        imgclf.save(make_classifier(seed=seed), path)
        models.append(str(path))
    return models, str(images)


def _predict(model, images, output, *extra):
    return run_cli("predict", "--model", model, "--images", images, "--output", output, *extra)


def _single(model, images, output, *extra):
    code, out, err = _predict(model, images, output, *extra)
    assert code == 4, err  # the broken image
    return Path(output).read_bytes(), out


@pytest.mark.parametrize(("name", "extra"), [("p.jsonl", ()), ("p.csv", ("--top-k", "2"))])
def test_two_shard_runs_merge_to_the_single_process_result_line_for_line(setup, tmp_path, name, extra):
    (model, _), images = setup
    want_file, want_out = _single(model, images, str(tmp_path / f"single-{name}"), *extra)
    output = str(tmp_path / name)
    code0, out0, err0 = _predict(model, images, output, "--shard", "0/2", *extra)
    assert (code0, out0) == (0, "")  # not everything is done: no merge, no results, no failure yet
    assert "shards still to finish: 1/2" in err0 and not os.path.exists(output)
    code1, out1, err1 = _predict(model, images, output, "--shard", "1/2", *extra)
    assert code1 == 4  # the merge keeps predict's "some images failed" status
    assert Path(output).read_bytes() == want_file
    assert out1 == want_out  # the merging run prints every result, in input order
    assert err1.count("imgclf: error:") == 2  # the broken image's line and the summary, once each
    assert not os.path.exists(output + ".parts")  # parts removed after the merge


def test_shards_split_the_input_list_contiguously_each_path_once():
    paths = [f"{i}.png" for i in range(23)]
    for count in (1, 2, 3, 7, 23, 30):
        shares = [sharding.share(paths, j, count) for j in range(count)]
        assert [p for s in shares for p in s] == paths
        assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_a_rerun_classifies_only_the_shard_without_a_finished_part(setup, tmp_path, monkeypatch):
    (model, _), images = setup
    want_file, _ = _single(model, images, str(tmp_path / "single.jsonl"))
    output = str(tmp_path / "p.jsonl")
    assert _predict(model, images, output, "--shard", "0/2")[0] == 0
    classified = []
    original = imgclf.Classifier.iter_predict

    def counting(self, items, **kwargs):
        classified.extend(items)
        return original(self, items, **kwargs)

    monkeypatch.setattr(imgclf.Classifier, "iter_predict", counting)
    code, _, err = _predict(model, images, output, "--shard", "0/2")  # run again: its part is reused
    assert code == 0 and "shard 0/2: reusing its finished part" in err and classified == []
    code, _, err = _predict(model, images, output, "--shard", "1/2")
    paths = list_images([images])
    assert classified == sharding.share(paths, 1, 2)  # shard 1's images only
    assert code == 4 and Path(output).read_bytes() == want_file


def test_a_shard_replaces_its_own_part_of_another_model_or_other_options(setup, tmp_path):
    (model, other_model), images = setup
    output = str(tmp_path / "p.jsonl")
    assert _predict(other_model, images, output, "--shard", "0/2")[0] == 0  # a part of another model
    code, _, err = _predict(model, images, output, "--shard", "0/2", "--top-k", "2")
    assert code == 0 and "(replacing a part that was made with another model file (SHA-256 " in err
    code, _, err = _predict(model, images, output, "--shard", "0/2")  # the --top-k 2 part is not reused
    assert code == 0
    assert "replacing a part that was made with other options ({'top_k': 2, 'batch_size': 64}" in err
    code, _, err = _predict(model, images, output, "--shard", "1/2")
    assert code == 4 and "shard 0/2" not in err  # shard 0's part of this run is merged as it is
    assert Path(output).read_bytes() == _single(model, images, str(tmp_path / "single.jsonl"))[0]


@pytest.mark.parametrize("value", ["2/2", "-1/2", "1", "a/b", "0/0", "0/2/3", ""])
def test_bad_shard_values_are_one_line_usage_errors(setup, tmp_path, value):
    (model, _), images = setup
    code, out, err = _predict(model, images, str(tmp_path / "p.jsonl"), f"--shard={value}")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "argument --shard: expected I/N" in err


def test_shard_needs_output_and_is_refused_under_torchrun(setup, monkeypatch):
    (model, _), images = setup
    code, _, err = run_cli("predict", "--model", model, "--images", images, "--shard", "0/2")
    assert code == 2 and err.count("\n") == 1 and "sharded prediction needs --output" in err
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, _, err = run_cli("predict", "-m", model, "-i", images, "-o", "p.jsonl", "--shard", "0/2")
    assert code == 2 and err.count("\n") == 1 and "--shard cannot be combined with torchrun" in err


def test_rank_0_stops_waiting_for_a_rank_whose_part_does_not_grow(setup, tmp_path):
    (model, other_model), images = setup
    paths = list_images([images])
    parts = str(tmp_path / "p.jsonl.parts")
    job = sharding.ShardedPrediction(model, paths, parts, 2)
    job.predict(0)  # rank 0's part: finished
    with pytest.raises(StorageError, match=r"rank 1 did not finish .*; received no part .*0\.2 s") as e:
        job.wait(0.2, name="rank")
    assert "\n" not in str(e.value)
    sharding.ShardedPrediction(other_model, paths, parts, 2).predict(1)
    with pytest.raises(StorageError, match=r"rank 1 .*; received a part that was made with another model"):
        job.wait(0.2, name="rank")


def _torchrun(model, images, output, *extra, cwd):
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    argv += ["-m", "imgclf", "predict", "--model", model, "--images", images, "--output", output, *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, cwd=cwd)


@pytest.mark.slow
def test_torchrun_two_ranks_equal_one_process_line_for_line(setup, tmp_path):
    (model, _), images = setup
    extra = ("--top-k", "2", "--json")
    want_file, want_out = _single(model, images, str(tmp_path / "single.jsonl"), *extra)
    output = str(tmp_path / "p.jsonl")
    proc = _torchrun(model, images, output, *extra, cwd=tmp_path)
    assert "exitcode  : 4" in proc.stderr  # rank 0's status: one image failed (torchrun itself exits 1)
    assert "shard 0/2: classified 5 images" in proc.stderr and "shard 1/2: classified 6 images" in proc.stderr
    assert Path(output).read_bytes() == want_file
    assert proc.stdout == want_out  # rank 0 alone prints, every result once, in input order
    assert not os.path.exists(output + ".parts")


KILLED_MIDWAY = """
import os, signal, sys
import imgclf
from imgclf.cli.main import main
original = imgclf.Classifier.iter_predict
def dies_after_two(self, items, **kwargs):
    for n, p in enumerate(original(self, items, **kwargs)):
        if n == 2:
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup runs: as a crash or an OOM kill
        yield p
imgclf.Classifier.iter_predict = dies_after_two
main(["predict", "-m", sys.argv[1], "-i", sys.argv[2], "-o", sys.argv[3], "--shard", "1/2"])
"""


@pytest.mark.slow
def test_torchrun_after_a_crash_equals_one_process_and_redoes_only_the_missing_rank(setup, tmp_path):
    (model, _), images = setup
    want_file, want_out = _single(model, images, str(tmp_path / "single.csv"))
    output = str(tmp_path / "p.csv")
    assert _predict(model, images, output, "--shard", "0/2")[0] == 0  # shard 0's part: finished
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    argv = [sys.executable, "-c", KILLED_MIDWAY, model, images, output]
    killed = subprocess.run(argv, env=env, timeout=120, capture_output=True)
    assert killed.returncode == -9  # shard 1 was killed while writing its part: only a temporary file is left
    left = sorted(p.name for p in Path(output + ".parts").iterdir())
    assert left[0].startswith(".shard-1-of-2.jsonl.") and left[1:] == ["merge.lock", "shard-0-of-2.jsonl"]
    proc = _torchrun(model, images, output, cwd=tmp_path)
    assert "exitcode  : 4" in proc.stderr  # rank 0's status: one image failed (torchrun itself exits 1)
    assert "shard 0/2: reusing its finished part" in proc.stderr
    assert "shard 1/2: classified 6 images" in proc.stderr
    assert Path(output).read_bytes() == want_file and proc.stdout == want_out
    assert not os.path.exists(output + ".parts")  # parts, lock and the crashed temporary file are gone


def test_a_part_whose_images_changed_since_is_never_merged(setup, tmp_path):
    (model, _), original = setup
    images = shutil.copytree(original, tmp_path / "images")
    output = str(tmp_path / "p.jsonl")
    assert _predict(model, str(images), output, "--shard", "0/2")[0] == 0
    first = list_images([str(images)])[0]  # in shard 0's share
    Path(first).write_bytes(Path(list_images([str(images)])[-1]).read_bytes())  # same name, new content
    code, out, err = _predict(model, str(images), output, "--shard", "1/2")
    assert (code, out) == (5, "") and not os.path.exists(output)
    assert "shard-0-of-2.jsonl was made before some of its images changed" in err.splitlines()[-1]
    code, _, err = _predict(model, str(images), output, "--shard", "0/2")  # redoing shard 0 mends it
    assert code == 0 and os.path.exists(output)  # the broken image was the one replaced by a good one
    assert "replacing a part that was made before some of its images changed" in err


def test_the_parts_folder_in_the_way_is_a_one_line_storage_error(setup, tmp_path):
    (model, _), images = setup
    output = tmp_path / "p.jsonl"
    Path(f"{output}.parts").write_text("a file where the parts folder goes")
    code, _, err = _predict(model, images, str(output), "--shard", "0/2")
    assert code == 5 and err.count("\n") == 1 and "cannot create the folder for the prediction parts" in err


LIGHT = """
import contextlib, io, sys
from imgclf.cli.main import main
with contextlib.redirect_stdout(io.StringIO()):
    code = main(["predict", "-m", sys.argv[1], "-i", sys.argv[2], "-o", sys.argv[3], "--shard", "0/1"])
# import torch alone loads torch.distributed's core; the launcher and elastic agent are what must stay out.
heavy = ("matplotlib", "fastapi", "uvicorn", "onnx", "imgclf.training", "imgclf.serving.",
         "torch.distributed.run", "torch.distributed.elastic")
import torch.distributed
assert not torch.distributed.is_initialized()  # no process group
print(code, sorted(m for m in sys.modules if m.startswith(heavy) and m != "imgclf.serving.settings"))
"""


def test_sharded_predict_imports_no_training_server_onnx_or_process_group_code(setup, tmp_path):
    (model, _), images = setup
    argv = [sys.executable, "-c", LIGHT, model, images, str(tmp_path / "p.jsonl")]
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)
    assert proc.stdout.strip() == "4 []", proc.stderr  # 4: the broken image; the merge ran


def test_a_shard_that_finds_another_merging_leaves_the_merge_to_it(setup, tmp_path):
    fcntl = pytest.importorskip("fcntl")
    (model, _), images = setup
    output = str(tmp_path / "p.jsonl")
    assert _predict(model, images, output, "--shard", "0/2")[0] == 0
    with open(os.path.join(output + ".parts", "merge.lock"), "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a merging run holds it
        code, out, err = _predict(model, images, output, "--shard", "1/2")
    assert (code, out) == (0, "") and "another run is merging the parts" in err
    assert not os.path.exists(output)
    code, _, err = _predict(model, images, output, "--shard", "1/2")  # lock released: this run merges
    assert code == 4 and "reusing its finished part" in err and os.path.exists(output)


# -- edge cases: the shard count, and parts that must not be merged -------------------------------------


def test_a_huge_shard_count_is_refused_at_once():
    with pytest.raises(Exception, match=r"expected I/N with N <= 10000 .* got '0/99999999999'"):
        shard_spec("0/99999999999")
    assert shard_spec("9999/10000") == (9999, 10000)


@pytest.mark.parametrize("value", ["0/99999999999", "0/10001", "0/" + "9" * 30, "٠/٢"])
def test_a_huge_or_odd_shard_count_is_a_one_line_usage_error(setup, tmp_path, value):
    (model, _), images = setup
    code, out, err = _predict(model, images, str(tmp_path / "p.jsonl"), f"--shard={value}")
    assert (code, out) == (2, "") and err.count("\n") == 1 and "argument --shard: expected I/N" in err


def test_more_shards_than_images_is_a_one_line_usage_error(setup, tmp_path):
    (model, _), images = setup  # 11 images
    output = str(tmp_path / "p.jsonl")
    code, out, err = _predict(model, images, output, "--shard", "0/12")
    assert (code, out) == (2, "") and err.count("\n") == 1
    assert "error: too many shards; received 12 shards for 11 image(s); expected 1 … 11" in err
    assert not os.path.exists(output + ".parts")  # refused before any work


def test_more_torchrun_ranks_than_images_fails_once_from_rank_0(setup, tmp_path, monkeypatch):
    (model, _), images = setup
    output = str(tmp_path / "p.jsonl")
    monkeypatch.setenv("WORLD_SIZE", "12")
    monkeypatch.setenv("RANK", "3")
    code, out, err = _predict(model, images, output, "--shard-timeout", "0.5")
    assert (code, out, err) == (0, "", "")  # other ranks exit quietly: a failing rank would stop rank 0
    monkeypatch.setenv("RANK", "0")
    code, out, err = _predict(model, images, output, "--shard-timeout", "0.5")
    assert (code, out) == (2, "") and err.count("\n") == 1 and "too many shards; received 12 shards" in err
    assert not os.path.exists(output + ".parts")


def _part(output, index, count=2):
    return Path(output + ".parts") / f"shard-{index}-of-{count}.jsonl"


def _refused(model, images, output, shard, part):
    """Run ``--shard shard``: it must refuse to merge, naming ``part``, and write nothing."""
    code, out, err = _predict(model, images, output, "--shard", shard)
    assert (code, out) == (5, ""), err
    notes, last = err.splitlines()[:-1], err.splitlines()[-1]
    assert last.startswith(f"imgclf: error: cannot merge the prediction parts: {part} ")
    assert [n for n in notes if "error" in n] == []  # the shard's own note, then the one error line
    assert not os.path.exists(output)
    return last


def _edit_part(path, edit):
    lines = Path(path).read_text().splitlines(keepends=True)
    Path(path).write_text("".join(edit(lines)))


def _header(lines, **changes):
    import json

    header = json.loads(lines[0])
    header.update(changes)
    return [json.dumps(header) + "\n", *lines[1:]]


DAMAGE = {
    "cut mid-row": lambda text: text[: len(text) - 30],
    "cut at a row end": lambda text: "".join(text.splitlines(keepends=True)[:-1]),
    "a row added": lambda text: text + text.splitlines(keepends=True)[-1],
    "rows swapped": lambda text: "".join((lambda ls: [ls[0], ls[2], ls[1], *ls[3:]])(text.splitlines(True))),
    "garbage header": lambda text: "not json\n" + text.split("\n", 1)[1],
    "empty": lambda text: "",
    "a row not a prediction": lambda text: text.replace('"confidence": ', '"confidence": "x", "c": ', 1),
}
WHY = {
    "cut mid-row": "is damaged: a line is cut off",
    "cut at a row end": "is damaged: it holds 4 rows, its header says 5",
    "a row added": "is damaged: it holds more rows than the 5 its header says",
    "rows swapped": "is damaged: row 1 is for ",
    "garbage header": "is damaged: it does not start with a prediction part's header",
    "empty": "is damaged: it does not start with a prediction part's header",
    "a row not a prediction": "is damaged: row 1 is not a prediction",
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_part_is_refused_by_name_and_nothing_is_written(setup, tmp_path, damage):
    (model, _), images = setup
    output = str(tmp_path / "p.jsonl")
    assert _predict(model, images, output, "--shard", "0/2")[0] == 0
    part = _part(output, 0)
    part.write_text(DAMAGE[damage](part.read_text()))
    err = _refused(model, images, output, "1/2", part)
    assert WHY[damage] in err and "classify shard 0 of 2 again" in err
    code, _, err = _predict(model, images, output, "--shard", "0/2")  # its own shard replaces it
    assert code == 4 and f"replacing a part that {WHY[damage]}" in err
    assert Path(output).read_bytes() == _single(model, images, str(tmp_path / "single.jsonl"))[0]


def test_a_part_of_another_model_is_refused_by_name(setup, tmp_path):
    (model, other_model), images = setup
    output = str(tmp_path / "p.jsonl")
    assert _predict(other_model, images, output, "--shard", "1/2")[0] == 0
    err = _refused(model, images, output, "0/2", _part(output, 1))
    assert "was made with another model file (SHA-256 " in err


def test_a_part_of_another_input_list_is_refused_by_name(setup, tmp_path):
    (model, _), images = setup
    output = str(tmp_path / "p.jsonl")
    assert _predict(model, str(Path(images) / "square"), output, "--shard", "1/2")[0] == 0
    err = _refused(model, images, output, "0/2", _part(output, 1))
    assert "was made for another input list (5 images, this run has 11" in err
    # Same length, another order: --sample 11 of the 11 images is the same set, shuffled.
    code, _, err = _predict(model, images, output, "--shard", "1/2", "--sample", "11", "--seed", "7")
    assert code == 5 and "0-of-2.jsonl was made for another input list (11 images, this run has 11" in err
    err = _refused(model, images, output, "0/2", _part(output, 1))
    assert "was made for another input list (11 images, this run has 11" in err


def test_a_copied_part_holds_another_shard_and_is_refused(setup, tmp_path):
    (model, _), images = setup
    output = str(tmp_path / "p.jsonl")
    assert _predict(model, images, output, "--shard", "0/2")[0] == 0
    shutil.copy(_part(output, 0), _part(output, 1))  # a duplicate of shard 0 where shard 1's part goes
    err = _refused(model, images, output, "0/2", _part(output, 1))
    assert "holds the predictions of shard 0 of 2, not of shard 1 of 2 (a copied or renamed part)" in err


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"shard": 1}, "holds the predictions of shard 1 of 2, not of shard 0 of 2"),
        ({"shards": 3}, "holds the predictions of shard 0 of 3, not of shard 0 of 2"),
        ({"rows": 6}, "is damaged: its header says rows 6, shard 0 of 2 has 5"),
        ({"start": 1}, "is damaged: its header says start 1, shard 0 of 2 has 0"),
        ({"imgclf_predict_part": 1}, "was written by another imgclf version (part format 1, this one reads"),
    ],
)
def test_a_part_whose_header_does_not_match_its_shard_is_refused(setup, tmp_path, changes, why):
    (model, _), images = setup
    output = str(tmp_path / "p.jsonl")
    assert _predict(model, images, output, "--shard", "0/2")[0] == 0
    _edit_part(_part(output, 0), lambda lines: _header(lines, **changes))
    assert why in _refused(model, images, output, "1/2", _part(output, 0))


def test_a_foreign_part_being_rewritten_is_waited_for_not_refused(setup, tmp_path):
    (model, other_model), images = setup
    output = str(tmp_path / "p.jsonl")
    assert _predict(other_model, images, output, "--shard", "1/2")[0] == 0
    temp = _part(output, 1).with_name(f".shard-1-of-2.jsonl.{os.getpid()}.0a1b2c3d.imgclf-tmp")
    temp.write_text("")  # as shard 1 writes its new part
    code, out, err = _predict(model, images, output, "--shard", "0/2")
    assert (code, out) == (0, "") and "shards still to finish: 1/2" in err


def test_under_torchrun_rank_0_checks_every_row_before_merging(setup, tmp_path, monkeypatch):
    (model, _), images = setup
    output = str(tmp_path / "p.jsonl")
    assert _predict(model, images, output, "--shard", "1/2")[0] == 0  # rank 1's part, as torchrun's would be
    part = _part(output, 1)
    part.write_text(DAMAGE["rows swapped"](part.read_text()))  # its header still matches the run
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    code, out, err = _predict(model, images, output, "--shard-timeout", "5")
    assert (code, out) == (5, "") and not os.path.exists(output)
    assert f"error: cannot merge the prediction parts: {part} is damaged: row 1 is for " in err


def test_sharded_output_has_the_ood_column_and_summary_of_one_process(setup, tmp_path):
    import numpy as np

    from imgclf.ood import fit_ood

    _, images = setup
    like = np.random.default_rng(5).integers(96, 160, (40, 16, 16, 3), dtype=np.uint8)
    clf = make_classifier(seed=6)
    clf.manifest["ood"] = fit_ood(clf, like[:20], np.arange(20) % 2, like[20:])
    model = str(tmp_path / "ood.imgclf")
    imgclf.save(clf, model)
    for name in ("p.csv", "p.jsonl"):
        want_file, want_out = _single(model, images, str(tmp_path / f"single-{name}"))
        output = str(tmp_path / name)
        assert _predict(model, images, output, "--shard", "1/2")[0] == 0
        code, out, err = _predict(model, images, output, "--shard", "0/2")
        assert code == 4 and Path(output).read_bytes() == want_file and out == want_out
        assert "unlike_training_data" in want_file.decode()
        assert "image(s) unlike the training data" in err


def test_precision_applies_to_each_shard_and_is_part_of_its_run(setup, tmp_path):
    import json

    (model, _), images = setup
    output = str(tmp_path / "p.jsonl")
    code, _, err = _predict(model, images, output, "--shard", "0/2", "--precision", "bf16")
    assert code == 0 and "imgclf: precision bf16 (requested" in err
    header = json.loads(Path(output + ".parts/shard-0-of-2.jsonl").read_text().splitlines()[0])
    assert header["options"]["precision"] == "bf16"
    code, _, err = _predict(model, images, output, "--shard", "1/2", "--precision", "fp32")
    assert code != 0 and "was made with other options" in err  # no merge of bf16 and fp32 parts


def test_sharded_multi_label_output_is_the_single_process_output(setup, tmp_path):
    _, images = setup
    clf = make_classifier(("a", "b", "c"), seed=7)
    clf.manifest["task"] = {"type": "multi_label", "thresholds": [0.45, 0.5, 0.55], "balance": "none"}
    model = str(tmp_path / "multi.imgclf")
    imgclf.save(clf, model)
    for name in ("p.csv", "p.jsonl"):
        want_file, want_out = _single(model, images, str(tmp_path / f"single-{name}"))
        output = str(tmp_path / name)
        assert _predict(model, images, output, "--shard", "0/2")[0] == 0
        code, out, _ = _predict(model, images, output, "--shard", "1/2")
        assert code == 4 and Path(output).read_bytes() == want_file and out == want_out
    assert '"labels": [' in want_file.decode()
