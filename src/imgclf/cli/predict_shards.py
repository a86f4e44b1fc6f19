"""Sharded ``imgclf predict``: under torchrun (one shard per rank) or ``--shard I/N`` (one shard per run).

The CLI layer over :mod:`imgclf.sharding` (shares, part files, their checks and the merge): the flags,
who merges, and the notes on stderr. Each process classifies its share into ``OUTPUT.parts/``; the
merging process feeds the checked parts, in input order, to the same code that writes a single process's
stdout, ``--output`` and ``--montage``; then the parts are removed.

Who merges: under torchrun, rank 0, after waiting for the other ranks' parts (a rank whose part file
stops growing for ``--shard-timeout`` seconds ends the wait with a one-line error naming it; a rank that
dies is noticed by torchrun, which stops the others). With ``--shard``, whichever run finds every part
finished merges (a lock on the parts folder keeps two from merging at once); the others exit 0 after a
note. A part of another shard that is damaged or made by another run (and not being rewritten) stops the
run with a one-line error naming it. The merged result is the same whoever merges. A re-run reuses every
finished part of the same run and classifies only the shards that lack one.

Usage::

    torchrun --nproc-per-node 4 -m imgclf predict --model m.imgclf --images cells/ --output preds.jsonl
    imgclf predict --model m.imgclf --images cells/ --output preds.csv --shard 0/2   # then --shard 1/2
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from typing import Any

from imgclf.errors import PartialFailure, UsageError
from imgclf.sharding import MAX_SHARDS

DEFAULT_SHARD_TIMEOUT = 600.0


def shard_spec(text: str) -> tuple[int, int]:
    """``I/N`` → ``(I, N)`` with ``0 <= I < N <= MAX_SHARDS`` (the argparse type of ``--shard``)."""
    match = re.fullmatch(r"([0-9]{1,20})/([0-9]{1,20})", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"expected I/N such as 0/2, got {text!r}")
    index, count = int(match.group(1)), int(match.group(2))
    if count > MAX_SHARDS:
        raise argparse.ArgumentTypeError(
            f"expected I/N with N <= {MAX_SHARDS} (and at most one shard per image), got {text!r}"
        )
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
        f"merges them into --output (needs --output; N at most the number of images and {MAX_SHARDS}; "
        "under torchrun each rank is one shard already)",
    )
    p.add_argument(
        "--shard-timeout",
        type=float,
        default=DEFAULT_SHARD_TIMEOUT,
        metavar="SECONDS",
        help="under torchrun: rank 0 gives up when another rank's part has not grown for this long "
        f"(default {DEFAULT_SHARD_TIMEOUT:g})",
    )


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
        UsageError: ``--shard`` under torchrun, no ``--output``, a bad ``--shard-timeout``, more shards
            than images.
        StorageError: A part cannot be written or read, a part of another shard is damaged or of another
            run, or a rank's part never came (torchrun).
        PartialFailure: After the merge, if some images could not be classified (exit 4).
    """
    from imgclf.cli.common import max_pixels_option
    from imgclf.sharding import ShardedPrediction

    index, count, torchrun = _check(args, world)
    paths = pick(args)
    from imgclf.precision import default_precision

    options = {"top_k": args.top_k, "batch_size": args.batch_size, **max_pixels_option(args)}
    precision = args.precision or default_precision()  # as the single-process path: --precision, else the env
    try:
        job = ShardedPrediction(
            args.model, paths, f"{args.output}.parts", count, precision=precision, **options
        )
    except UsageError:
        if torchrun and not world.is_main:
            return 0  # every rank finds the same; rank 0 alone reports it (a failing rank stops rank 0)
        raise
    clf = job.classifier  # the model loads first: a bad --model before any work
    class_names = clf.class_names
    # The same extra column and summary line as one process: the file has an out-of-distribution threshold.
    args.has_ood = isinstance(getattr(clf, "manifest", {}).get("ood"), dict)
    done = job.predict(index)
    where = f"shard {index}/{count}"
    if done.reused:
        _note(f"{where}: reusing its finished part {done.path} ({done.images} images)")
    else:
        more = f", {done.failed} could not be classified (listed at the merge)" if done.failed else ""
        instead = f" (replacing a part that {done.replaced})" if done.replaced else ""
        _note(f"{where}: classified {done.images} images into {done.path}{more}{instead}")
    if torchrun and not world.is_main:
        return 0  # rank 0 merges; a non-zero exit here would make torchrun stop rank 0
    if torchrun:
        job.wait(args.shard_timeout, name="rank")
    return _merge(args, job, report, index, class_names)


def _merge(
    args: argparse.Namespace,
    job: Any,
    report: Callable[[argparse.Namespace, list[str], Any, int], int],
    index: int,
    class_names: list[str],
) -> int:
    count = job.shards
    with job.merge_lock() as locked:
        states = job.states()
        if not states[index].finished:  # this shard's part was finished a moment ago: someone merged it since
            _note(f"shard {index}/{count} done; another run merged the parts into {args.output}")
            return 0
        # A part being rewritten (its temporary file is there) is waited for; any other bad part is refused.
        bad = [s for s in states if s.status == "bad" and not job.being_written(s.index)]
        if bad:
            raise job.refusal(bad[0])
        waiting = [s.index for s in states if not s.finished]
        if waiting:
            left = ", ".join(f"{j}/{count}" for j in waiting)
            _note(f"shard {index}/{count} done; shards still to finish: {left}; the last one merges")
            return 0
        if not locked:
            _note(f"shard {index}/{count} done; another run is merging the parts into {args.output}")
            return 0
        rows = job.merge()  # every part checked row by row before the first result is written
        try:
            code = report(args, class_names, rows, len(job.images))
        except PartialFailure:  # the output is written; only the exit status says some images failed
            job.remove_parts()
            raise
        job.remove_parts()
        return code
