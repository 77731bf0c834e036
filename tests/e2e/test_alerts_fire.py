"""The shipped alerts in a real Prometheus (the stack's), scraping the running operator: a Backup
that fails fires HabitatBackupFailed, and a schedule that never succeeds fires HabitatBackupTooOld."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.e2e.conftest import OperatorProcess
from tests.e2e.helpers import backup, wait_for
from tests.e2e.prometheus import firing, scraping
from tests.harness import Kubectl, Stack

pytestmark = pytest.mark.e2e


@pytest.fixture
def prometheus(stack: Stack, operator_alive: OperatorProcess) -> Iterator[Stack]:
    with scraping(stack, operator_alive):
        yield stack


def test_failed_backup_and_stale_schedule_fire_in_prometheus(
    prometheus: Stack, kubectl: Kubectl, namespace: str, operator_alive: OperatorProcess
) -> None:
    kubectl.run(
        "create",
        "secret",
        "generic",
        "broken-db",
        "--from-literal=uri=postgresql://nobody:x@127.0.0.1:1/none",
    )
    broken = {"secretRef": {"name": "broken-db"}}
    kubectl.apply(backup("doomed", database=broken, retry={"limit": 0, "backoff": "1s"}))
    started = time.monotonic()
    # An every-minute schedule that never succeeds is "too old" two minutes after its creation.
    kubectl.apply(backup("stale", database=broken, schedule="* * * * *", retry={"limit": 0, "backoff": "1s"}))

    wait_for(
        "HabitatBackupFailed to fire",
        lambda: firing(prometheus, "HabitatBackupFailed", namespace=namespace, backup="doomed"),
        timeout=60,
        operator=operator_alive,
    )
    failed_after = time.monotonic() - started
    wait_for(
        "HabitatBackupTooOld to fire",
        lambda: firing(prometheus, "HabitatBackupTooOld", namespace=namespace, backup="stale"),
        timeout=200,
        operator=operator_alive,
    )
    too_old_after = time.monotonic() - started
    print(
        f"HabitatBackupFailed fired after {failed_after:.0f}s, HabitatBackupTooOld after {too_old_after:.0f}s"
    )
    assert not firing(prometheus, "HabitatBackupTooOld", namespace=namespace, backup="doomed")
