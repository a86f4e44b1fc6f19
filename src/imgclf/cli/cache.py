"""``imgclf cache info`` and ``imgclf cache clear``: see and empty the decode-once cache.

The cache (``$IMGCLF_CACHE_DIR``, else ``$XDG_CACHE_HOME/imgclf`` or ``~/.cache/imgclf``) holds every
training and evaluation image decoded and resized once, and the linear probe's embedding tables; it is
bounded (20 GiB per preprocessing spec, 4 GiB of tables) but survives ``make clean``.

Usage::

    from imgclf.cli.main import main
    main(["cache", "info"])
"""

from __future__ import annotations

import argparse
import json

from imgclf.cli.common import EPILOG
from imgclf.cli.output import stdout_line


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``imgclf cache {info,clear}``."""
    p = sub.add_parser(
        "cache",
        parents=[common],
        help="show or clear the decode-once image cache (and the linear probe's embeddings)",
        epilog=EPILOG,
        description="Where the decode-once cache is and how big it is (info), or delete it (clear). "
        "Deleting it is always safe: images are decoded again when next needed.",
    )
    p.set_defaults(func=cmd_cache)
    p.add_argument("action", choices=("info", "clear"), help="info: where and how big; clear: delete it")
    p.add_argument(
        "--cache-dir", metavar="DIR", help="cache folder (default $IMGCLF_CACHE_DIR or ~/.cache/imgclf)"
    )
    p.add_argument("--json", action="store_true", help="info as JSON")


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def cmd_cache(args: argparse.Namespace) -> int:
    """``imgclf cache info|clear``: one result line on stdout (or JSON)."""
    from imgclf.data.cache_admin import cache_usage, clear_cache

    if args.action == "clear":
        freed = clear_cache(args.cache_dir)
        usage = cache_usage(args.cache_dir)
        stdout_line(f"cleared {usage['path']}: freed {_mb(freed)}")
        return 0
    usage = cache_usage(args.cache_dir)
    if args.json:
        stdout_line(json.dumps(usage))
    else:
        stdout_line(
            f"{usage['path']}: {_mb(int(usage['bytes']))} in {usage['files']} file(s), "
            f"{usage['specs']} preprocessing spec(s), {usage['embeddings']} embedding table(s); "
            "clear it with: imgclf cache clear"
        )
    return 0
