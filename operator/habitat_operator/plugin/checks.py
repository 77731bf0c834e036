"""One check of `kubectl habitat diagnose`: its outcome, what it looked at, and a hint for the next step."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any


class Result(StrEnum):
    PASS = "PASS"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Check:
    check: str  # the family: operator, crds, secret, database, broker, queue, storage, tls, alerts
    target: str  # what was looked at, e.g. "secret ns/habitat-db" (never a value)
    result: Result
    message: str
    hint: str = ""

    def row(self) -> dict[str, Any]:
        """RESULT first: the column people scan."""
        fields = asdict(self)
        return {"result": str(fields.pop("result")), **{key: str(value) for key, value in fields.items()}}


def passed(check: str, target: str, message: str) -> Check:
    return Check(check, target, Result.PASS, message)


def warned(check: str, target: str, message: str, hint: str) -> Check:
    return Check(check, target, Result.WARN, message, hint)


def failed(check: str, target: str, message: str, hint: str) -> Check:
    return Check(check, target, Result.FAIL, message, hint)


def any_failed(checks: Iterable[Check]) -> bool:
    return any(check.result is Result.FAIL for check in checks)
