"""Object storage's Prometheus metrics: every request to a bucket counted and timed, bytes moved.

Labels are fixed words (the request, the result, the direction): never a bucket, a key or a host.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

STORAGE_REQUESTS = Counter(
    "habitat_storage_requests_total",
    "Requests to object storage by operation (upload_part, get, delete, ...) and result (success, failure).",
    ["operation", "result"],
)
STORAGE_REQUEST_DURATION = Histogram(
    "habitat_storage_request_duration_seconds",
    "Time per request to object storage, by operation.",
    ["operation"],
)
STORAGE_BYTES = Counter(
    "habitat_storage_bytes_total",
    "Bytes moved to or from object storage, by direction (uploaded, downloaded).",
    ["direction"],
)
