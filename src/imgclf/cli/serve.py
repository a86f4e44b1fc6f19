"""``imgclf serve``: an HTTP inference server with a web page (needs the ``serve`` extra).

Usage::

    imgclf serve malaria.imgclf                       # http://127.0.0.1:8000/
    imgclf serve cells=malaria.imgclf other.imgclf --port 9000 --api-key-file key.txt
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
from collections.abc import Callable

from imgclf.cli.common import EPILOG, add_max_pixels_flag
from imgclf.serving.settings import BUDGET_BOUNDS, BUDGET_PER_MODEL_PIXEL, MB, ServeSettings

DEFAULTS = ServeSettings()

MAX_KEY_BYTES = 4096

DESCRIPTION = """Serve one or more model files over HTTP. Each model is named by its file stem, or by NAME in
NAME=PATH. Every model is loaded strictly, its self-check probes re-run and one warm-up inference done
before the server reports ready; a model that fails stops start-up (exit 3).

Routes: GET / (web page), POST /v1/predict and /v1/models/NAME/predict (raw image body, multipart files,
or JSON {"images": [base64, ...]}; ?top_k=K), GET /v1/models, GET /metrics, and the Open Inference
Protocol v2: GET /v2, /v2/health/live, /v2/health/ready, /v2/models/NAME, /v2/models/NAME/ready,
POST /v2/models/NAME/infer, POST /v2/repository/models/NAME/load (reload)."""

SIGNALS_EPILOG = """signals: SIGTERM (or Ctrl-C) turns readiness to 503, lets requests in flight finish
(at most --timeout-s), then exits 0. SIGHUP reloads every model file (load, verify, warm up, swap);
a damaged or different model keeps the old one serving.

example:
  imgclf serve malaria.imgclf
  curl --data-binary @cell.png http://127.0.0.1:8000/v1/predict"""


def _positive(kind: type) -> object:
    def parse(text: str) -> object:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value

    return parse


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not 0 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"expected 0 to 1000 ms, got {text!r}")
    return value


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    """Register ``imgclf serve``."""
    p = sub.add_parser(
        "serve",
        parents=[common],
        help="serve model files over HTTP (web page, JSON API, KServe v2 protocol)",
        description=DESCRIPTION,
        epilog=SIGNALS_EPILOG + "\n\n" + EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("models", nargs="+", metavar="MODEL", help="model file, or NAME=PATH (repeatable)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default 127.0.0.1; other addresses without --api-key-file warn)",
    )
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    _add_limit_flags(p)
    _add_connection_flags(p)
    p.add_argument(
        "--api-key-file",
        metavar="F",
        help="file holding an API key; then every route but /, its assets and the health checks"
        " needs 'Authorization: Bearer KEY'",
    )
    add_max_pixels_flag(p)
    p.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16"),  # imgclf.precision.PRECISIONS, not imported to build the parser
        help="torch models on the CPU: bf16 autocast where the CPU has AMX or AVX-512 BF16 and the "
        "file's probes keep their top-1 class (auto), or always fp32 / bf16; shown on stderr at load "
        "(default: $IMGCLF_PRECISION, else auto)",
    )
    p.set_defaults(func=run)


def _add_limit_flags(p: argparse.ArgumentParser) -> None:
    """Body, image-count, time and queue limits, and batching."""
    p.add_argument(
        "--max-body-mb",
        metavar="MB",
        type=_positive(float),
        default=DEFAULTS.max_body_bytes / MB,
        help="largest request body in MB; larger is refused with 413 before it is read (default %(default)g)",
    )
    p.add_argument(
        "--max-images-per-request",
        metavar="N",
        type=_positive(int),
        default=DEFAULTS.max_images,
        help="most images in one request; more is a 413 (default %(default)s)",
    )
    p.add_argument(
        "--timeout-s",
        metavar="S",
        type=_positive(float),
        default=DEFAULTS.timeout_s,
        help="deadline per request: 504 (408 while the body is still arriving), its work dropped;"
        " also the shutdown grace period (default %(default)g)",
    )
    p.add_argument(
        "--max-queue",
        type=_positive(int),
        default=DEFAULTS.max_queue,
        metavar="N",
        help="most images waiting for inference; beyond it 503 with Retry-After (default %(default)s)",
    )
    p.add_argument(
        "--batch-delay-ms",
        type=_non_negative,
        default=DEFAULTS.batch_delay_ms,
        metavar="D",
        help="gather concurrent requests into one batch, waiting up to D ms for requests already in"
        " progress; a lone request never waits (default %(default)g; 1.5x the images/s of 0 at 64"
        " clients, see docs/performance.md). A batched image's probabilities can differ from imgclf"
        " predict's by ~1e-7 (CPU kernels depend on the batch size); 0: each request is its own batch,"
        " bitwise equal to imgclf predict whatever the traffic",
    )
    _add_decode_flags(p)


def _add_decode_flags(p: argparse.ArgumentParser) -> None:
    """The per-request pixel budget and the decode pool."""
    low, high = (b / 1e6 for b in BUDGET_BOUNDS)
    p.add_argument(
        "--max-request-megapixels",
        metavar="MP",
        type=_positive(float),
        default=None,
        help="most decoded pixels, in millions, the images of one request may declare (read from their"
        " headers); more is a 413 before any is decoded (default: sized for each model,"
        f" {BUDGET_PER_MODEL_PIXEL}x its input pixels x --max-images-per-request, from {low:g} to {high:g})",
    )
    p.add_argument(
        "--decode-threads",
        metavar="N",
        type=_positive(int),
        default=DEFAULTS.decode_threads,
        help="threads that decode and resize request images, beside the one inference thread; a"
        " request that times out or whose client leaves stops at its next image (default %(default)s)",
    )


def _add_connection_flags(p: argparse.ArgumentParser) -> None:
    """Connection deadlines and the connection cap (docs/serve.md)."""
    p.add_argument(
        "--header-timeout-s",
        metavar="S",
        type=_positive(float),
        default=DEFAULTS.header_timeout_s,
        help="deadline for a request's line and headers, from the connection's first byte: 408 and"
        " close (a connection that sends nothing is closed) (default %(default)g)",
    )
    p.add_argument(
        "--body-timeout-s",
        metavar="S",
        type=_positive(float),
        default=DEFAULTS.body_timeout_s,
        help="deadline for a request's body, from the end of its headers: 408 if not yet answered,"
        " and close; also how long a client may leave its answers unread (default %(default)g)",
    )
    p.add_argument(
        "--keep-alive-s",
        metavar="S",
        type=_positive(float),
        default=DEFAULTS.keep_alive_s,
        help="close a connection idle this long between requests (default %(default)g)",
    )
    p.add_argument(
        "--max-connections",
        metavar="N",
        type=_positive(int),
        default=DEFAULTS.max_connections,
        help="most connections open at once; beyond it 503 and close. Lowered at start to fit the"
        " open-file limit (ulimit -n), whose soft value is raised to the hard one (default %(default)s)",
    )


def read_api_key(path: str) -> bytes:
    """The key in ``path`` (first line, surrounding whitespace removed), read bounded and non-blocking.

    Raises:
        UsageError: If the file is missing, not a regular file, too large or holds no key.
    """
    from imgclf.errors import UsageError
    from imgclf.fileio.reading import open_for_reading

    def refuse(problem: str, received: str) -> UsageError:
        return UsageError(
            problem,
            received=f"{path} ({received})",
            expected=f"a regular file of at most {MAX_KEY_BYTES} bytes holding one key",
            fix="write the key to a file: openssl rand -hex 32 > key.txt",
        )

    try:
        fd, st = open_for_reading(path)
    except OSError as exc:
        raise refuse("cannot read --api-key-file", exc.strerror or str(exc)) from None
    try:
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_KEY_BYTES:
            raise refuse(
                "unusable --api-key-file",
                f"{st.st_size} bytes" if stat.S_ISREG(st.st_mode) else "not a regular file",
            )
        data = os.read(fd, MAX_KEY_BYTES + 1)
    finally:
        os.close(fd)
    lines = data.strip().splitlines()
    key = lines[0].strip() if lines else b""
    if len(data) > MAX_KEY_BYTES or not key:
        raise refuse("unusable --api-key-file", "empty" if not key else "too large")
    return key


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    """``imgclf serve``: load every model (exit 3 if one fails), then serve until SIGTERM; exit 0."""
    import logging

    from imgclf.errors import UsageError

    try:
        from imgclf.serving.app import create_app
        from imgclf.serving.models import ModelStore, parse_model_arg
        from imgclf.serving.server import serve
    except ImportError as exc:
        raise UsageError(
            "imgclf serve needs the 'serve' extra",
            received=f"missing module {exc.name}",
            expected="fastapi, uvicorn, python-multipart, prometheus-client",
            fix="in the imgclf checkout: pip install '.[serve]' (torch-free: pip install './runtime[serve]')",
        ) from None
    if not 0 <= args.port <= 65535:
        raise UsageError(
            "--port out of range", received=args.port, expected="0 to 65535", fix="use --port 8000"
        )
    key = read_api_key(args.api_key_file) if args.api_key_file else None
    paths = _model_paths(args.models, parse_model_arg)
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="imgclf serve: %(message)s")
    if key is None and not _is_loopback(args.host):
        print(
            f"imgclf: warning: serving on {args.host} without --api-key-file: anyone who can reach this "
            "address can use the models",
            file=sys.stderr,
            flush=True,
        )
    from imgclf.precision import default_precision

    precision = args.precision or default_precision()  # a bad $IMGCLF_PRECISION: exit 2 before loading
    store = ModelStore.open(
        paths, args.max_pixels, precision
    )  # ModelFileError: the CLI's one-line error, exit 3
    settings = ServeSettings(
        max_body_bytes=int(args.max_body_mb * MB),
        max_images=args.max_images_per_request,
        timeout_s=args.timeout_s,
        max_queue=args.max_queue,
        batch_delay_ms=args.batch_delay_ms,
        api_key=key,
        header_timeout_s=args.header_timeout_s,
        body_timeout_s=args.body_timeout_s,
        keep_alive_s=args.keep_alive_s,
        max_connections=args.max_connections,
        max_request_pixels=None if (mp := args.max_request_megapixels) is None else int(mp * 1e6),
        decode_threads=args.decode_threads,
    )
    print(
        f"imgclf: serving {', '.join(paths)} on http://{args.host}:{args.port}/ "
        f"(inference: one worker thread, {_engine()})",
        file=sys.stderr,
        flush=True,
    )
    serve(create_app(store, settings), host=args.host, port=args.port, grace_s=args.timeout_s)
    return 0


def _model_paths(texts: list[str], parse_model_arg: Callable[[str], tuple[str, str]]) -> dict[str, str]:
    """``MODEL`` arguments → {name: path}; two models with one name are a usage error."""
    from imgclf.errors import UsageError

    paths: dict[str, str] = {}
    for text in texts:
        name, path = parse_model_arg(text)
        if name in paths:
            raise UsageError(
                "two models with one name", received=name, expected="unique names", fix="name them: NAME=PATH"
            )
        paths[name] = path
    return paths


def _engine() -> str:
    """What runs inference: all of it on one worker thread with this many intra-op threads."""
    try:  # an .onnx is served without torch
        import torch
    except ImportError:
        return "onnxruntime"
    return f"{torch.get_num_threads()} torch thread(s)"
