"""Operation slots (how many run at once) and the liveness heartbeat, without the stack."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from habitat_operator import health
from habitat_operator.controllers.base.slots import OperationSlots
from habitat_operator.metrics import OPERATIONS_QUEUED, OPERATIONS_RUNNING


def test_one_operation_per_database_and_a_cap_per_operator() -> None:
    waits: list[str] = []

    async def scenario() -> list[str]:
        slots = OperationSlots(max_operations=2, max_per_database=1)
        order: list[str] = []
        release = asyncio.Event()

        async def operation(name: str, database: str) -> None:
            async def on_wait(why: str) -> None:
                waits.append(f"{name}: {why}")

            async with slots.hold(database, on_wait):
                order.append(name)
                await release.wait()

        tasks = [
            asyncio.create_task(operation(name, database))
            for name, database in [("a1", "db-a"), ("a2", "db-a"), ("b1", "db-b"), ("c1", "db-c")]
        ]
        await asyncio.sleep(0.05)
        assert order == ["a1", "b1"]  # a2 waits for db-a, c1 for the operator's cap
        assert OPERATIONS_RUNNING._value.get() == 2
        assert OPERATIONS_QUEUED._value.get() == 2
        release.set()
        await asyncio.gather(*tasks)
        return order

    order = asyncio.run(scenario())
    assert sorted(order) == ["a1", "a2", "b1", "c1"]
    assert any(w.startswith("a2: another operation on db-a") for w in waits)
    assert any(w.startswith("c1: the operator runs 2 operations") for w in waits)
    assert OPERATIONS_RUNNING._value.get() == 0
    assert OPERATIONS_QUEUED._value.get() == 0


def test_a_cancelled_waiter_leaves_the_counts_right() -> None:
    async def scenario() -> None:
        slots = OperationSlots(max_operations=1, max_per_database=1)
        release = asyncio.Event()

        async def holder() -> None:
            async with slots.hold("db", _ignore):
                await release.wait()

        first = asyncio.create_task(holder())
        await asyncio.sleep(0.01)
        waiter = asyncio.create_task(holder())
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        release.set()
        await first

    asyncio.run(scenario())
    assert OPERATIONS_RUNNING._value.get() == 0
    assert OPERATIONS_QUEUED._value.get() == 0


async def _ignore(_: str) -> None:
    pass


def test_the_heartbeat_reports_a_starved_thread_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health, "STALL_SECONDS", 0.3)

    async def scenario() -> tuple[bool, bool]:
        loop = asyncio.get_running_loop()
        pool = ThreadPoolExecutor(max_workers=1)
        loop.set_default_executor(pool)
        beat = health.Heartbeat()
        task = asyncio.create_task(beat.run())
        await asyncio.sleep(0.1)
        healthy_before = beat.healthy()
        blocker = loop.run_in_executor(pool, time.sleep, 1.0)  # the one thread is taken
        await asyncio.sleep(0.7)
        starved = not beat.healthy()
        await blocker
        task.cancel()
        return healthy_before, starved

    healthy_before, starved = asyncio.run(scenario())
    assert healthy_before
    assert starved
