"""A PromQL instant query that must come back as exactly one finite sample."""

from __future__ import annotations

import math
import urllib.parse
from typing import Any

from habitat_operator.api.scalepolicy import ScalePolicyReason
from habitat_operator.engines.http import display, get_json
from habitat_operator.errors import RetryableError


def instant_value(server: str, query: str, timeout: float) -> float:
    """The value of `query` now; a result of no sample or several is an error, not a zero."""
    arguments = urllib.parse.urlencode({"query": query, "timeout": f"{round(timeout * 1000)}ms"})
    body = get_json(
        f"{server.rstrip('/')}/api/v1/query?{arguments}", timeout, ScalePolicyReason.SOURCE_UNAVAILABLE
    )
    data: dict[str, Any] = (body.get("data") if isinstance(body, dict) else None) or {}
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
