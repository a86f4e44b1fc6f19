"""The decode-once cache: hits skip Pillow, changes are re-decoded, results equal the direct path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from helpers import assert_same_tensors, make_dataset
from imgclf.config import PreprocessSpec
from imgclf.data import decode
from imgclf.data.decode import decode_into, load_split, open_cache
from imgclf.data.decode_cache import DecodeCache
from imgclf.data.folders import scan_dataset
from imgclf.errors import DatasetError
from imgclf.images.preprocess import preprocess_uint8

SPEC = PreprocessSpec(height=24, width=24)


@pytest.fixture
def samples(tmp_path: Path):
    root = make_dataset(tmp_path / "data", {"training": 9})
    return scan_dataset(root, val_split=0.0, test_split=0.0).splits["training"]


def _counting(calls: list[int]):
    def decoder(paths, out, progress=None, *, rows=None, spec):
        calls.append(len(paths))
        return decode_into(paths, out, progress, rows=rows, spec=spec)

    return decoder


def test_cache_equals_direct_decode_and_second_run_decodes_nothing(samples, tmp_path):
    direct = load_split(samples, SPEC)
    calls: list[int] = []
    first = load_split(samples, SPEC, cache=DecodeCache(tmp_path / "c", SPEC, _counting(calls)))
    second = load_split(samples, SPEC, cache=DecodeCache(tmp_path / "c", SPEC, _counting(calls)))
    assert calls == [len(samples), 0] or calls == [len(samples)]
    assert isinstance(second.images, np.memmap)
    for dec in (first, second):
        assert np.array_equal(dec.images, direct.images)
        assert dec.digests == direct.digests and dec.paths == direct.paths
        assert np.array_equal(dec.labels, direct.labels)
    for path, row in zip(second.paths, second.images, strict=True):
        assert np.array_equal(row, preprocess_uint8(path, SPEC))


def test_only_changed_files_are_decoded_again(samples, tmp_path):
    load_split(samples, SPEC, cache=open_cache(SPEC, tmp_path / "c"))
    changed = Path(samples[3].path)
    from PIL import Image

    Image.new("RGB", (30, 30), (250, 0, 0)).save(changed, format=Image.open(changed).format)
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10_000_000))
    calls: list[int] = []
    dec = load_split(samples, SPEC, cache=DecodeCache(tmp_path / "c", SPEC, _counting(calls)))
    assert calls == [1]
    assert np.array_equal(dec.images[3], preprocess_uint8(str(changed), SPEC))
    assert np.array_equal(dec.images, load_split(samples, SPEC).images)


def test_a_different_spec_uses_a_different_cache(samples, tmp_path):
    load_split(samples, SPEC, cache=open_cache(SPEC, tmp_path / "c"))
    calls: list[int] = []
    other = PreprocessSpec(height=24, width=24, interpolation="nearest")
    dec = load_split(samples, other, cache=DecodeCache(tmp_path / "c", other, _counting(calls)))
    assert calls == [len(samples)]
    assert np.array_equal(dec.images, load_split(samples, other).images)
    assert len(list((tmp_path / "c" / "v1").iterdir())) == 2


def test_bad_files_are_remembered_and_reported_identically(samples, tmp_path):
    Path(samples[2].path).write_bytes(b"not an image at all")
    cache_dir = tmp_path / "c"
    with pytest.raises(DatasetError, match="1 file\\(s\\) are not readable images"):
        load_split(samples, SPEC, cache=open_cache(SPEC, cache_dir))
    calls: list[int] = []
    dec = load_split(samples, SPEC, skip_bad=True, cache=DecodeCache(cache_dir, SPEC, _counting(calls)))
    assert sum(calls) == 0
    assert [p for p, _ in dec.skipped] == [samples[2].path]
    assert len(dec) == len(samples) - 1
    assert np.array_equal(dec.images, load_split(samples, SPEC, skip_bad=True).images)


def test_an_interrupted_build_leaves_no_partial_pack(samples, tmp_path):
    def exploding(paths, out, progress=None, *, rows=None, spec):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        load_split(samples, SPEC, cache=DecodeCache(tmp_path / "c", SPEC, exploding))
    packs = list((tmp_path / "c").rglob("*.npy"))
    assert packs == []
    dec = load_split(samples, SPEC, cache=open_cache(SPEC, tmp_path / "c"))
    assert np.array_equal(dec.images, load_split(samples, SPEC).images)


def test_a_damaged_index_or_missing_pack_is_rebuilt(samples, tmp_path):
    cache_dir = tmp_path / "c"
    load_split(samples, SPEC, cache=open_cache(SPEC, cache_dir))
    index = next(cache_dir.rglob("index.json"))
    index.write_text("{ not json")
    calls: list[int] = []
    load_split(samples, SPEC, cache=DecodeCache(cache_dir, SPEC, _counting(calls)))
    assert calls == [len(samples)]
    for pack in cache_dir.rglob("*.npy"):
        pack.unlink()
    calls.clear()
    dec = load_split(samples, SPEC, cache=DecodeCache(cache_dir, SPEC, _counting(calls)))
    assert calls == [len(samples)]
    assert np.array_equal(dec.images, load_split(samples, SPEC).images)


def test_size_bound_evicts_least_recently_used_packs(tmp_path):
    roots = [make_dataset(tmp_path / f"d{i}", {"training": 4}, seed=i) for i in range(3)]
    cache_dir = tmp_path / "c"
    pack_bytes = 8 * 24 * 24 * 3 + 128
    for root in roots:
        split = scan_dataset(root, val_split=0.0, test_split=0.0).splits["training"]
        load_split(split, SPEC, cache=DecodeCache(cache_dir, SPEC, decode_into, max_bytes=2 * pack_bytes))
        time.sleep(0.01)
    packs = list(cache_dir.rglob("packs/*.npy"))
    assert len(packs) == 2
    index = json.loads(next(cache_dir.rglob("index.json")).read_text())
    live = {p.stem for p in packs}
    assert {v[0] for v in index["entries"].values()} <= live


CONCURRENT = """
import sys, numpy as np
from imgclf.config import PreprocessSpec
from imgclf.data.folders import scan_dataset
from imgclf.data.decode import load_split, open_cache
spec = PreprocessSpec(height=24, width=24)
split = scan_dataset(sys.argv[1], val_split=0.0, test_split=0.0).splits["training"]
dec = load_split(split, spec, cache=open_cache(spec, sys.argv[2]))
print(int(np.asarray(dec.images, dtype=np.int64).sum()))
"""


def test_concurrent_runs_share_the_cache_safely(tmp_path):
    root = make_dataset(tmp_path / "data", {"training": 30})
    cache_dir = tmp_path / "c"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CONCURRENT, str(root), str(cache_dir)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    split = scan_dataset(root, val_split=0.0, test_split=0.0).splits["training"]
    expected = str(int(load_split(split, SPEC).images.astype(np.int64).sum()))
    assert outs == [expected] * 3
    json.loads(next(cache_dir.rglob("index.json")).read_text())


def test_streaming_from_a_memory_map_trains_identically(tmp_path, tiny_config, monkeypatch):
    from imgclf.training import loop, state

    root = make_dataset(tmp_path / "data", {"training": 8})
    split = scan_dataset(root, val_split=0.0, test_split=0.0).splits["training"]
    load_split(  # fills the cache; the second read is served from its memory map
        split, tiny_config.preprocess, cache=open_cache(tiny_config.preprocess, tmp_path / "c")
    )
    mapped = load_split(
        split, tiny_config.preprocess, cache=open_cache(tiny_config.preprocess, tmp_path / "c")
    )
    assert isinstance(mapped.images, np.memmap)

    def run(stage):
        monkeypatch.setattr(loop, "stage_images", stage)
        run_state = state.create_state(tiny_config, 2)
        loop.fit(tiny_config, run_state, mapped)
        return run_state.model.state_dict()

    resident = run(loop.stage_images)
    streamed = run(lambda images, device, share=0.5: None)
    assert_same_tensors(resident, streamed)


def test_default_cache_dir_honours_the_environment(monkeypatch, tmp_path):
    from imgclf.data.decode_cache import default_cache_dir

    monkeypatch.setenv("IMGCLF_CACHE_DIR", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x"
    monkeypatch.delenv("IMGCLF_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "imgclf"
    assert decode.open_cache(SPEC).root == tmp_path / "xdg" / "imgclf"


def test_parallel_decoding_in_worker_processes_equals_sequential(samples, monkeypatch):
    Path(samples[4].path).write_bytes(b"GIF89a but not really")
    paths = [s.path for s in samples]
    seq = np.zeros((len(paths), 24, 24, 3), np.uint8)
    par = np.zeros_like(seq)
    seq_result = decode_into(paths, seq, spec=SPEC, workers=1)
    monkeypatch.setattr(decode, "PARALLEL_MIN", 1)
    monkeypatch.setattr(
        decode, "_chunks", lambda n, workers: [range(a, min(a + 2, n)) for a in range(0, n, 2)]
    )
    seen: list[int] = []
    par_result = decode_into(paths, par, seen.append, spec=SPEC, workers=2, rows=list(range(len(paths))))
    assert par_result == seq_result
    assert list(par_result[1]) == [4]
    assert np.array_equal(par, seq) and par[4].sum() == 0 and par.any()
    assert sum(seen) == len(paths) and len(seen) > 2


def test_the_size_bound_can_be_set_from_the_environment(monkeypatch, tmp_path):
    from imgclf.errors import UsageError

    monkeypatch.setenv("IMGCLF_CACHE_MAX_BYTES", "12345")
    assert open_cache(SPEC, tmp_path).max_bytes == 12345
    monkeypatch.setenv("IMGCLF_CACHE_MAX_BYTES", "lots")
    with pytest.raises(UsageError, match="IMGCLF_CACHE_MAX_BYTES is not a positive integer"):
        open_cache(SPEC, tmp_path)


def test_cache_info_and_clear_from_the_command_line(samples, tmp_path):
    from helpers import run_cli

    cache_dir = tmp_path / "c"
    load_split(samples, SPEC, cache=DecodeCache(cache_dir, SPEC, decode_into))
    (cache_dir / "notes-of-another-program.txt").write_text("not ours")
    code, out, _ = run_cli("cache", "info", "--cache-dir", cache_dir, "--json")
    info = json.loads(out)
    assert code == 0 and info["path"] == str(cache_dir) and info["bytes"] > 18 * 24 * 24 * 3
    assert info["specs"] == 1 and info["files"] >= 2
    code, out, _ = run_cli("cache", "info", "--cache-dir", cache_dir)
    assert out.startswith(f"{cache_dir}: ") and "imgclf cache clear" in out
    code, out, _ = run_cli("cache", "clear", "--cache-dir", cache_dir)
    assert code == 0 and out.startswith(f"cleared {cache_dir}: freed ")
    assert json.loads(run_cli("cache", "info", "--cache-dir", cache_dir, "--json")[1])["bytes"] == 0
    assert sorted(p.name for p in cache_dir.iterdir()) == ["notes-of-another-program.txt"]
    calls: list[int] = []
    again = load_split(samples, SPEC, cache=DecodeCache(cache_dir, SPEC, _counting(calls)))
    assert len(again) == 18 and sum(calls) == 18  # decoded afresh after the clear


def test_make_clean_says_where_the_cache_is():
    makefile = (Path(__file__).parents[2] / "Makefile").read_text()
    clean = makefile.split("\nclean:", 1)[1]
    assert "IMGCLF_CACHE_DIR" in clean and "imgclf cache clear" in clean


def test_without_fcntl_the_cache_fails_with_one_clear_line_not_an_import_error(tmp_path, monkeypatch):
    import subprocess
    import sys

    from helpers import run_cli
    from imgclf.data import decode_cache as cache
    from imgclf.errors import UsageError

    lines = [
        "import sys",
        "sys.modules['fcntl'] = None",
        "import imgclf.data.decode_cache",
        "import imgclf.data.decode",
    ]
    code = "\n".join([*lines, "print(1)"])
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert child.stdout.strip() == "1", child.stderr  # importing works where fcntl is missing
    monkeypatch.setattr(cache, "fcntl", None)
    with pytest.raises(UsageError, match=r"needs POSIX file locks.*--no-cache"):
        open_cache(SPEC, tmp_path)
    code, out, err = run_cli("cache", "clear", "--cache-dir", tmp_path)
    assert code == 2 and out == "" and len(err.splitlines()) == 1 and "needs POSIX file locks" in err
