"""The one daemon driver (handlers/driver.py): what each step's result counts as in
`habitat_operator_reconcile_total`, how long it sleeps, and a deletion mid-step."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, cast

import kopf
import pytest
from kopf._cogs.aiokits.aioenums import FlagSetter
from prometheus_client import REGISTRY

from habitat_operator.controllers.base.core import Recheck, RetryLater
from habitat_operator.handlers import driver
from habitat_operator.handlers.driver import drive

KIND = "DriverTest"


def counted(result: str) -> float:
    return (
        REGISTRY.get_sample_value("habitat_operator_reconcile_total", {"kind": KIND, "result": result}) or 0.0
    )


class Steps:
    """A run whose steps are given in order; `reconcile` returns (or raises) the next one."""

    def __init__(self, *steps: Callable[[], Awaitable[RetryLater | None]]) -> None:
        self.steps = list(steps)
        self.taken = 0
        self.was_cancelled = False

    def run_for(self, _: dict[str, Any]) -> Steps:
        return self

    async def reconcile(self) -> RetryLater | None:
        self.taken += 1
        return await self.steps.pop(0)()

    async def cancelled(self) -> None:
        self.was_cancelled = True


def returns(value: RetryLater | None) -> Callable[[], Awaitable[RetryLater | None]]:
    async def step() -> RetryLater | None:
        return value

    return step


async def raises() -> RetryLater | None:
    raise ConnectionResetError("the status write failed")


def body() -> kopf.Body:
    return kopf.Body(
        cast(kopf.RawBody, {"metadata": {"uid": "u1", "name": "x", "namespace": "ns", "generation": 1}})
    )


def drive_until_done(steps: Steps, stopper: FlagSetter[Any] | None = None) -> None:
    stopper = stopper or FlagSetter()

    async def scenario() -> None:
        async with asyncio.timeout(2):
            await drive(KIND, body(), stopper.async_waiter, steps.run_for)

    asyncio.run(scenario())


@pytest.fixture(autouse=True)
def short_error_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(driver, "ERROR_RETRY_SECONDS", 0.01)


def test_a_step_with_nothing_left_to_do_counts_as_success() -> None:
    before = counted("success")
    drive_until_done(Steps(returns(None)))
    assert counted("success") == before + 1


def test_a_step_that_asks_to_run_again_counts_as_requeue_and_a_recheck_as_success() -> None:
    requeued, succeeded = counted("requeue"), counted("success")
    steps = Steps(returns(RetryLater(0.01)), returns(Recheck(0.01)), returns(None))
    drive_until_done(steps)
    assert steps.taken == 3
    assert counted("requeue") == requeued + 1
    assert counted("success") == succeeded + 2


def test_a_step_that_raises_counts_as_error_and_the_daemon_tries_again() -> None:
    errors, succeeded = counted("error"), counted("success")
    steps = Steps(raises, returns(None))
    drive_until_done(steps)
    assert steps.taken == 2
    assert counted("error") == errors + 1
    assert counted("success") == succeeded + 1


def test_deleting_the_object_mid_step_cancels_it_says_so_and_counts_nothing() -> None:
    stopper: FlagSetter[Any] = FlagSetter()
    started = asyncio.Event()

    async def long_step() -> RetryLater | None:
        started.set()
        await asyncio.sleep(60)
        raise AssertionError("never reached")

    steps = Steps(long_step)
    before = {result: counted(result) for result in ("success", "requeue", "error")}

    async def scenario() -> None:
        task = asyncio.create_task(drive(KIND, body(), stopper.async_waiter, steps.run_for))
        await started.wait()
        stopper.set(reason=kopf.DaemonStoppingReason.RESOURCE_DELETED)
        async with asyncio.timeout(2):
            await task

    asyncio.run(scenario())
    assert steps.was_cancelled
    assert {result: counted(result) for result in before} == before


def test_a_step_whose_own_status_ends_the_daemon_finishes_and_counts() -> None:
    """A one-shot run writes Succeeded, so its object stops matching the daemon's filter, and Kopf
    stops the daemon while the step still posts its Event: the step finishes, and counts."""
    stopper: FlagSetter[Any] = FlagSetter()
    finished = []

    async def ending_step() -> RetryLater | None:
        stopper.set(reason=kopf.DaemonStoppingReason.FILTERS_MISMATCH)  # the watch saw "Succeeded"
        await asyncio.sleep(0.05)  # the Event it posts after the status
        finished.append(True)
        return None

    steps = Steps(ending_step)
    before = counted("success")
    drive_until_done(steps, stopper)
    assert finished == [True]
    assert not steps.was_cancelled
    assert counted("success") == before + 1
