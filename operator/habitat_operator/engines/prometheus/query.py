"""A PromQL instant query that must come back as exactly one finite sample.

Whoever may create a ScalePolicy chooses the URL, so what a failure says in status is coarse:
`PrometheusUnreachable` (no answer: refused, timed out, TLS) or `PrometheusBadResponse` (an answer
that is not a Prometheus query result: an HTTP error, not JSON, another shape), never which of
those, so a policy cannot map the operator's network. The exact failure is the error's `detail`,
for the operator's log.
"""

from __future__ import annotations

import math
import urllib.parse
from typing import Any

from habitat_operator.api.scalepolicy import ScalePolicyReason
from habitat_operator.engines.http import display, get_json
from habitat_operator.errors import RetryableError


class PrometheusFailure(RetryableError):
    """A coarse reason and message for status; what exactly failed in `detail`, for the log only."""

    def __init__(self, reason: ScalePolicyReason, message: str, detail: str) -> None:
        super().__init__(reason, message)
        self.detail = detail


def instant_value(server: str, query: str, timeout: float) -> float:
    """The value of `query` now; a result of no sample or several is an error, not a zero."""
    arguments = urllib.parse.urlencode({"query": query, "timeout": f"{round(timeout * 1000)}ms"})
    where = f"Prometheus at {display(server)}"
    try:
        body = get_json(
            f"{server.rstrip('/')}/api/v1/query?{arguments}",
            timeout,
            ScalePolicyReason.PROMETHEUS_UNREACHABLE,
            bad_response=ScalePolicyReason.PROMETHEUS_BAD_RESPONSE,
        )
    except RetryableError as error:
        coarse = (
            "gave no answer"
            if error.reason is ScalePolicyReason.PROMETHEUS_UNREACHABLE
            else "gave no Prometheus query result"
        )
        raise PrometheusFailure(
            ScalePolicyReason(error.reason), f"{where} {coarse} ({error.reason})", error.message
        ) from None
    data: Any = body.get("data") if isinstance(body, dict) and body.get("status") == "success" else None
    if not isinstance(data, dict) or data.get("resultType") not in ("scalar", "vector", "matrix", "string"):
        raise PrometheusFailure(
            ScalePolicyReason.PROMETHEUS_BAD_RESPONSE,
            f"{where} gave no Prometheus query result ({ScalePolicyReason.PROMETHEUS_BAD_RESPONSE})",
            f"{display(server)} answered JSON that is not a successful query result",
        )
    kind, result = data.get("resultType"), data.get("result") or []
    try:
        if kind == "scalar":
            raw = result[1]
        elif kind == "vector" and len(result) == 1:
            raw = result[0]["value"][1]
        else:
            raise ValueError(f"{len(result) if isinstance(result, list) else 0} samples of type {kind}")
        value = float(raw)
    except (ValueError, TypeError, KeyError, IndexError) as error:
        raise RetryableError(
            ScalePolicyReason.QUERY_NOT_ONE_SAMPLE,
            f"the query on {display(server)} did not return one sample: {error}",
        ) from None
    if not math.isfinite(value):
        raise RetryableError(ScalePolicyReason.QUERY_NOT_ONE_SAMPLE, f"the query returned {raw}")
    return value
