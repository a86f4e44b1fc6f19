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
    # Measured (docs/performance.md): 0.93x the in-process batched rate at 64 clients against 0.61x
    # unbatched, and no cost to a lone client, which never waits.
    batch_delay_ms: float = 10.0
    api_key: bytes | None = None
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
