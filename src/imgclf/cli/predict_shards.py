"""Sharded ``imgclf predict``: under torchrun (one shard per rank) or ``--shard I/N`` (one shard per run).

The input list (the one a single process would classify, in the same order) is cut into ``N`` contiguous
shares of equal size (±1); shard ``I`` (0-based, like torchrun's ``RANK``) classifies share ``I`` into a
part file ``OUTPUT.parts/shard-I-of-N.jsonl`` (see :mod:`imgclf.cli.predict_parts`). Once every part is
finished, one process merges them in shard order, which is input order, through the same code that
writes a single process's stdout, ``--output`` and ``--montage``; then the parts are removed.

Who merges: under torchrun, rank 0, after waiting for the other ranks' parts (a rank whose part file
stops growing for ``--shard-timeout`` seconds ends the wait with a one-line error naming it; a rank that
dies is noticed by torchrun, which stops the others). With ``--shard``, whichever run finds every part
finished merges (a lock on the parts folder keeps two from merging at once); the others exit 0 after a
note. The merged result is the same whoever merges. A re-run reuses every finished part of the same
run and classifies only the shards that lack one.

Usage::

    torchrun --nproc-per-node 4 -m imgclf predict --model m.imgclf --images cells/ --output preds.jsonl
    imgclf predict --model m.imgclf --images cells/ --output preds.csv --shard 0/2   # then --shard 1/2
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from imgclf.errors import PartialFailure, StorageError, UsageError

DEFAULT_SHARD_TIMEOUT = 600.0
POLL_SECONDS = 0.5


def shard_spec(text: str) -> tuple[int, int]:
    """``I/N`` → ``(I, N)`` with ``0 <= I < N`` (the argparse type of ``--shard``)."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/N such as 0/2, got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise argparse.ArgumentTypeError(
            f"expected I/N with 0 <= I < N (shards count from 0, like torchrun's RANK), got {text!r}"
        )
    return index, count


def add_shard_flags(p: argparse.ArgumentParser) -> None:
    """The sharding flags of ``imgclf predict``."""
    p.add_argument(
        "--shard",
        type=shard_spec,
        metavar="I/N",
        help="classify share I of N (0-based) into OUTPUT.parts/; the run that finds all N parts finished "
        "merges them into --output (needs --output; under torchrun each rank is one shard already)",
    )
    p.add_argument(
        "--shard-timeout",
        type=float,
        default=DEFAULT_SHARD_TIMEOUT,
        metavar="SECONDS",
        help="under torchrun: rank 0 gives up when another rank's part has not grown for this long "
        f"(default {DEFAULT_SHARD_TIMEOUT:g})",
    )


def share(paths: list[str], index: int, count: int) -> list[str]:
    """Shard ``index``'s contiguous share of ``paths``; the shares in order are ``paths`` exactly once."""
    return paths[index * len(paths) // count : (index + 1) * len(paths) // count]


def part_path(output: str, index: int, count: int) -> str:
    """Where shard ``index`` of ``count`` keeps its part for ``output``."""
    return os.path.join(f"{output}.parts", f"shard-{index}-of-{count}.jsonl")


def _note(text: str) -> None:
    from imgclf.errors import safe_text

    print(f"imgclf: {safe_text(text)}", file=sys.stderr, flush=True)


def _check(args: argparse.Namespace, world: Any) -> tuple[int, int, bool]:
    torchrun = world.distributed
    if args.shard is not None and torchrun:
        raise UsageError(
            "--shard cannot be combined with torchrun",
            received=f"--shard {args.shard[0]}/{args.shard[1]} with WORLD_SIZE={world.size}",
            expected="either --shard I/N or torchrun",
            fix="drop --shard: under torchrun each rank classifies its own share",
        )
    if not args.output:
        raise UsageError(
            "sharded prediction needs --output",
            received="no --output",
            expected="--output FILE.jsonl or FILE.csv (the shards' parts are kept beside it)",
            fix="add --output preds.jsonl",
        )
    if not args.shard_timeout > 0:
        raise UsageError(
            "--shard-timeout must be positive", received=args.shard_timeout, expected="> 0", fix="use 600"
        )
    index, count = (world.rank, world.size) if torchrun else args.shard
    return index, count, torchrun


def run_sharded(
    args: argparse.Namespace,
    world: Any,
    *,
    pick: Callable[[argparse.Namespace], list[str]],
    report: Callable[[argparse.Namespace, list[str], Any, int], int],
) -> int:
    """Classify this process's shard, then merge (rank 0, or whichever ``--shard`` run finds all done).

    Args:
        args: The parsed ``predict`` flags (``--output`` required).
        world: :class:`imgclf.world.World` of this process.
        pick: ``predict``'s input list (the same on every shard).
        report: ``predict``'s writer of stdout, ``--output`` and ``--montage`` for a prediction stream.

    Returns:
        0 (or ``report``'s code when this process merges).

    Raises:
        UsageError: ``--shard`` under torchrun, no ``--output``, a bad ``--shard-timeout``.
        StorageError: A part cannot be written or read, or a rank's part never came (torchrun).
        PartialFailure: After the merge, if some images could not be classified (exit 4).
    """
    from imgclf.cli.common import max_pixels_option
    from imgclf.cli.predict_parts import file_digest, inputs_digest, run_key
    from imgclf.interop.files import load

    index, count, torchrun = _check(args, world)
    clf = load(args.model, **max_pixels_option(args))
    paths = pick(args)
    options = {"top_k": args.top_k, "batch_size": args.batch_size, **max_pixels_option(args)}
    model, everything = file_digest(args.model), inputs_digest(paths)

    def key(j: int) -> str:
        return run_key(model, everything, options, share(paths, j, count), j, count)

    mine = key(index)
    _classify_share(args, clf, share(paths, index, count), mine, index, count)
    if torchrun and not world.is_main:
        return 0  # rank 0 merges; a non-zero exit here would make torchrun stop rank 0
    keys = [mine if j == index else key(j) for j in range(count)]  # the others' images stat'ed now
    if torchrun:
        _wait_for_parts(args.output, keys, args.shard_timeout)
    return _merge(args, keys, clf.class_names, len(paths), report, index)


def _classify_share(
    args: argparse.Namespace, clf: Any, mine: list[str], key: str, index: int, count: int
) -> None:
    from imgclf.cli.predict_parts import finished, write_part

    path = part_path(args.output, index, count)
    if finished(path, key):
        _note(f"shard {index}/{count}: reusing its finished part {path} ({len(mine)} images)")
        return
    _make_folder(os.path.dirname(path))
    predictions = clf.iter_predict(mine, top_k=args.top_k, batch_size=args.batch_size, errors="return")
    failed = write_part(path, key, index, count, len(mine), predictions)
    more = f", {failed} could not be classified (listed at the merge)" if failed else ""
    _note(f"shard {index}/{count}: classified {len(mine)} images into {path}{more}")


def _make_folder(folder: str) -> None:
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:
        from imgclf.fileio.reading import os_reason

        raise StorageError(
            "cannot create the folder for the prediction parts",
            received=f"{folder} ({os_reason(exc)})",
            expected="a folder that can be created beside --output",
            fix=f"move or remove what is at {folder}, or choose another --output",
        ) from None


def _growth(output: str, index: int, count: int) -> tuple[int, ...]:
    """Sizes of shard ``index``'s temporary part files: they grow while it classifies."""
    from imgclf.fileio.writing import TMP_SUFFIX

    folder, name = os.path.split(part_path(output, index, count))
    try:
        with os.scandir(folder) as entries:
            temps = [e for e in entries if e.name.startswith(f".{name}.") and e.name.endswith(TMP_SUFFIX)]
            return tuple(sorted(e.stat().st_size for e in temps))
    except OSError:
        return ()


def _wait_for_parts(output: str, keys: list[str], timeout: float) -> None:
    """Wait until every shard's part is finished; fail naming a shard whose part stopped growing."""
    from imgclf.cli.predict_parts import finished

    count = len(keys)
    seen = {j: (_growth(output, j, count), time.monotonic()) for j in range(count)}
    while True:
        missing = [j for j in range(count) if not finished(part_path(output, j, count), keys[j])]
        if not missing:
            return
        now = time.monotonic()
        for j in missing:
            size = _growth(output, j, count)
            if size != seen[j][0]:
                seen[j] = (size, now)
            elif now - seen[j][1] > timeout:
                path = part_path(output, j, count)
                state = "a part of another run at" if os.path.exists(path) else "no part"
                raise StorageError(
                    f"rank {j} did not finish its share of the prediction",
                    received=f"{state} {path}, and no progress for {timeout:g} s",
                    expected=f"all {count} ranks to write their parts",
                    fix=f"check rank {j}'s log; re-run the same command (finished parts are kept), "
                    "or raise --shard-timeout",
                )
        time.sleep(POLL_SECONDS)


@contextlib.contextmanager
def _merge_lock(folder: str) -> Iterator[bool]:
    """An exclusive lock on the parts folder, held while merging; ``False`` if another process holds it."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; two --shard runs finishing at the same instant may both merge
        yield True
        return
    try:
        fd = os.open(os.path.join(folder, "merge.lock"), os.O_RDWR | os.O_CREAT, 0o644)
    except FileNotFoundError:  # the folder is gone: another process merged and cleaned up
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def _merge(
    args: argparse.Namespace,
    keys: list[str],
    class_names: list[str],
    total: int,
    report: Callable[[argparse.Namespace, list[str], Any, int], int],
    index: int,
) -> int:
    from imgclf.cli.predict_parts import finished, read_part

    count = len(keys)
    parts = [part_path(args.output, j, count) for j in range(count)]
    with _merge_lock(os.path.dirname(parts[0])) as locked:
        waiting = [j for j in range(count) if not finished(parts[j], keys[j])]
        if index in waiting:  # this shard's part was finished a moment ago: someone merged it since
            _note(f"shard {index}/{count} done; another run merged the parts into {args.output}")
            return 0
        if waiting:
            left = ", ".join(f"{j}/{count}" for j in waiting)
            _note(f"shard {index}/{count} done; shards still to finish: {left}; the last one merges")
            return 0
        if not locked:
            _note(f"shard {index}/{count} done; another run is merging the parts into {args.output}")
            return 0
        rows = (row for j in range(count) for row in read_part(parts[j], keys[j]))
        try:
            code = report(args, class_names, rows, total)
        except PartialFailure:  # the output is written; only the exit status says some images failed
            _remove_parts(parts)
            raise
        _remove_parts(parts)
        return code


def _remove_parts(parts: list[str]) -> None:
    folder = os.path.dirname(parts[0])
    for p in [*parts, os.path.join(folder, "merge.lock")]:
        with contextlib.suppress(OSError):
            os.unlink(p)
    with contextlib.suppress(OSError):
        os.rmdir(folder)  # only if nothing else (another sharding's parts) is left in it
