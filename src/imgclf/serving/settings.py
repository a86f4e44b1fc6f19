"""The limits of one server: the ``imgclf serve`` flags' values and, once, their defaults.

Stdlib only, so the command line can read the defaults without importing the web stack.

Usage::

    settings = ServeSettings(max_images=16, timeout_s=10)
"""

from __future__ import annotations

from dataclasses import dataclass

MB = 1024 * 1024
# The default per-request pixel budget: this many times the pixels of a full request of model-sized
# images, within these bounds (a model never sees more than its input size; larger images only cost
# decoding time, and one image at the lower bound still fits).
BUDGET_PER_MODEL_PIXEL = 10
BUDGET_BOUNDS = (32_000_000, 64_000_000)


@dataclass(frozen=True)
class ServeSettings:
    """What a server accepts and how long it waits.

    Attributes:
        max_body_bytes: Largest request body (``--max-body-mb``); larger is a 413 before it is read.
        max_images: Most images in one request (``--max-images-per-request``).
        timeout_s: Deadline per request (``--timeout-s``); also the shutdown grace period.
        max_queue: Most images waiting for inference (``--max-queue``); beyond it a 503.
        batch_delay_ms: Longest wait to gather concurrent requests into one batch (``--batch-delay-ms``;
            only while other requests are in progress); 0 runs each request as its own batch, bitwise
            equal to ``imgclf predict`` on the same images whatever the traffic.
        api_key: The key every guarded route needs as ``Authorization: Bearer KEY`` (None: no key).
        header_timeout_s: Deadline for a request's line and headers, from the connection's first byte
            (or its opening) (``--header-timeout-s``); then 408, or a silent close if nothing came.
        body_timeout_s: Deadline for a request's body, from the end of its headers
            (``--body-timeout-s``); the connection is closed when it passes, answered or not. Also how
            long a client may leave its answers unread (the send buffer full) before it is reset.
        keep_alive_s: How long an idle connection is kept between requests (``--keep-alive-s``).
        max_connections: Most connections open at once (``--max-connections``); beyond it a 503 and
            close. Lowered at start to fit the process's open-file limit.
        max_header_bytes: Largest request line plus header block; larger is a 431.
        max_request_pixels: Most decoded pixels one request's images may declare
            (``--max-request-megapixels``); more is a 413 before any is decoded. None: sized for each
            model (:meth:`request_pixels`).
        decode_threads: Threads that decode requests' images (``--decode-threads``), beside the one
            inference thread.
    """

    max_body_bytes: int = 20 * MB
    max_images: int = 64
    timeout_s: float = 30.0
    max_queue: int = 1024
    # Gathering the requests of concurrent clients raises throughput, and a lone client never waits for
    # it; the figures behind this default are in docs/performance.md ("Serving").
    batch_delay_ms: float = 10.0
    api_key: bytes | None = None
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    # uvicorn's default is 5 s; under load (a busy 2-core machine) a benchmark client hit a connection
    # reset, most likely a pooled connection closed as it was reused. 15 s keeps them; an idle one costs
    # little.
    keep_alive_s: float = 15.0
    # Above the 2,000 idle or trickling connections the server must survive (docs/serve.md).
    max_connections: int = 4096
    max_header_bytes: int = 16 * 1024
    max_request_pixels: int | None = None
    decode_threads: int = 2

    def request_pixels(self, height: int, width: int) -> int:
        """Decoded pixels one request may declare for a model of input ``height`` x ``width``.

        ``max_request_pixels`` when set; otherwise ``BUDGET_PER_MODEL_PIXEL`` x ``max_images`` x the
        model's input pixels, within ``BUDGET_BOUNDS``.
        """
        if self.max_request_pixels is not None:
            return self.max_request_pixels
        low, high = BUDGET_BOUNDS
        return min(high, max(low, BUDGET_PER_MODEL_PIXEL * self.max_images * height * width))
