"""ReplayRun against the fake apiserver, a fake event store and a fake broker: killed at any publish,
it loses no event, and it says how many may have gone out twice."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
from prometheus_client import REGISTRY

from habitat_operator.api.common import API_VERSION
from habitat_operator.api.replayjob import EventSelector, ReplayReason
from habitat_operator.config import OperatorConfig
from habitat_operator.controllers.base.lifecycle import RetryLater
from habitat_operator.controllers.base.slots import OperationSlots
from habitat_operator.controllers.replayjob import metrics
from habitat_operator.controllers.replayjob import run as replay_run
from habitat_operator.controllers.replayjob.engines import ReplayEngines
from habitat_operator.controllers.replayjob.run import ReplayRun, restore_metrics
from habitat_operator.engines.postgres.events import Bound, Event, EventStore
from habitat_operator.engines.postgres.uri import ConnectionTarget
from habitat_operator.engines.rabbitmq.publisher import Failure, Message, Tally
from habitat_operator.errors import RetryableError
from tests.unit.bodies import NS, conditions
from tests.unit.fake_kube import FakeKube

PLURAL = "replayjobs"
TOTAL = 400


class Killed(BaseException):
    """The operator dying mid-publish: nothing catches it, nothing is written."""


class FakeStore:
    """Events 1..TOTAL, every one selected (the selector's SQL is the integration tests' business)."""

    def __init__(self) -> None:
        moment = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
        self.events = [Event(i, "t", moment, b"{}", "rk", None, None) for i in range(1, TOTAL + 1)]
        self.open_transactions: tuple[int, ...] = ()  # open when the bound is read
        self.open_for = 0  # looks at them before they have ended
        self.on_look: Any = None

    def connect(self, target: ConnectionTarget) -> AbstractAsyncContextManager[FakeStore]:
        return self._session()

    @asynccontextmanager
    async def _session(self) -> AsyncIterator[FakeStore]:
        yield self

    async def check_columns(self, store: EventStore) -> EventStore:
        return store

    async def bound(self, store: EventStore, selector: EventSelector) -> Bound:
        return Bound(self.events[-1].id, self.open_transactions)

    async def still_open(self, transactions: tuple[int, ...]) -> tuple[int, ...]:
        if self.on_look is not None:
            self.on_look()
        if self.open_for == 0:
            return ()
        self.open_for -= 1
        return transactions

    async def count_between(
        self, store: EventStore, selector: EventSelector, after: int, through: int
    ) -> int:
        return sum(after < e.id <= through for e in self.events)

    async def page(
        self,
        store: EventStore,
        selector: EventSelector,
        after: int,
        through: int,
        limit: int,
        max_bytes: int | None = None,
    ) -> list[Event]:
        return [e for e in self.events if after < e.id <= through][:limit]

    async def pages(
        self,
        store: EventStore,
        selector: EventSelector,
        after: int,
        through: int,
        limit: int,
        max_bytes: int | None = None,
    ) -> AsyncIterator[list[Event]]:
        while events := await self.page(store, selector, after, through, limit):
            yield events
            after = events[-1].id


class FakeBroker:
    """Confirms each message `lag` publishes later; checks that no id goes out unreserved."""

    def __init__(self, kube: FakeKube, lag: int = 7) -> None:
        self.kube = kube
        self.lag = lag
        self.delivered: list[int] = []
        self.kill_at: int | None = None
        self.fail_at: int | None = None  # the broker goes away when this many were delivered
        self.suspend_at: int | None = None  # a user sets spec.suspend when this many were delivered

    def __call__(self, target: Any, window: int, window_bytes: int) -> FakeBroker:
        self.tally = Tally()
        self.resent = 0
        self.failing = False
        self.confirmed_through: int | None = None
        self._open: list[int] = []
        return self

    async def open(self) -> FakeBroker:
        return self

    async def close(self) -> None:
        pass

    async def publish(self, message: Message) -> None:
        if self.kill_at is not None and len(self.delivered) == self.kill_at:
            raise Killed
        if self.fail_at is not None and len(self.delivered) == self.fail_at:
            raise RetryableError(ReplayReason.BROKER_UNAVAILABLE, "RabbitMQ at broker:5672 is unavailable")
        if self.suspend_at is not None and len(self.delivered) == self.suspend_at:
            self.kube.objects[(PLURAL, NS, "replay")]["spec"]["suspend"] = True
        reserved = self.kube.status(PLURAL, NS, "replay").get("reservedThrough")
        assert reserved is not None and message.key <= reserved, (message.key, reserved)
        self.delivered.append(message.key)
        self._open.append(message.key)
        if len(self._open) > self.lag:
            self._settle()
        await asyncio.sleep(0)

    def refuse(self, failure: Failure) -> None:
        raise AssertionError(f"every event here can be encoded, but {failure.key} was refused")

    def _settle(self) -> None:
        self.confirmed_through = self._open.pop(0)
        self.tally.confirmed += 1

    async def drain(self) -> None:
        while self._open:
            self._settle()

    @property
    def sent_through(self) -> int | None:
        return self._open[-1] if self._open else self.confirmed_through


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
def broker(fake_kube: FakeKube) -> FakeBroker:
    return FakeBroker(fake_kube)


def replayjob(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "ReplayJob",
        "metadata": {"name": "replay", "namespace": NS},
        "spec": {
            "source": {"database": {"secretRef": {"name": "events-db"}}},
            "selector": {"types": ["t"]},
            "target": {"rabbitmq": {"secretRef": {"name": "broker"}}, "queue": {"name": "q"}},
            "batchSize": 50,
            "checkpointInterval": "1ms",
            **spec,
        },
    }


def reconcile(
    kube: FakeKube, config: OperatorConfig, store: FakeStore, broker: FakeBroker
) -> RetryLater | None:
    """One step, given the fake event store and the fake broker as its engines."""
    engines = ReplayEngines(connect=store.connect, publisher=broker)
    run = ReplayRun(kube.object(PLURAL, NS, "replay"), config, OperationSlots(), engines)
    return asyncio.run(run.reconcile())


@pytest.fixture
def job(fake_kube: FakeKube) -> None:
    fake_kube.put_secret(NS, "events-db", {"uri": "postgresql://reader:pw@db:5432/habitat"})
    fake_kube.put_secret(NS, "broker", {"uri": "amqp://guest:pw@broker:5672/%2F"})
    fake_kube.add(PLURAL, replayjob())


def test_a_replay_publishes_every_event_once_in_order(
    fake_kube: FakeKube, config: OperatorConfig, store: FakeStore, broker: FakeBroker, job: None
) -> None:
    assert reconcile(fake_kube, config, store, broker) is None
    status = fake_kube.status(PLURAL, NS, "replay")
    assert broker.delivered == list(range(1, TOTAL + 1))
    assert (status["phase"], status["publishedEvents"], status["checkpoint"]) == ("Succeeded", TOTAL, TOTAL)
    assert "duplicatesAtMost" not in status and conditions(status)["Ready"] == ("True", "Succeeded")


@pytest.mark.parametrize("kill_at", [0, 1, 49, 50, 51, 199, 399])
def test_killed_at_any_publish_it_loses_nothing_and_bounds_duplicates(
    fake_kube: FakeKube, config: OperatorConfig, store: FakeStore, broker: FakeBroker, job: None, kill_at: int
) -> None:
    broker.kill_at = kill_at
    with pytest.raises(Killed):
        reconcile(fake_kube, config, store, broker)
    assert fake_kube.status(PLURAL, NS, "replay")["phase"] == "Running"
    broker.kill_at = None
    assert reconcile(fake_kube, config, store, broker) is None  # the next operator: interrupted, resumed
    status = fake_kube.status(PLURAL, NS, "replay")
    assert status["phase"] == "Succeeded" and status["publishedEvents"] == TOTAL
    assert set(broker.delivered) == set(range(1, TOTAL + 1))
    assert len(broker.delivered) - TOTAL <= status.get("duplicatesAtMost", 0)
    assert "Interrupted" in fake_kube.reasons("replay")


def test_suspended_before_it_starts_it_publishes_nothing(
    fake_kube: FakeKube, config: OperatorConfig, store: FakeStore, broker: FakeBroker
) -> None:
    fake_kube.add(PLURAL, replayjob(suspend=True))
    assert isinstance(reconcile(fake_kube, config, store, broker), RetryLater)
    status = fake_kube.status(PLURAL, NS, "replay")
    assert status["phase"] == "Suspended" and conditions(status)["Stalled"] == ("False", "Suspended")


def test_suspending_and_resuming_never_uses_up_retries(
    fake_kube: FakeKube, config: OperatorConfig, store: FakeStore, broker: FakeBroker, job: None
) -> None:
    spec = fake_kube.objects[(PLURAL, NS, "replay")]["spec"]
    spec["retry"] = {"limit": 1, "backoff": "1s"}
    for suspend_at in (50, 100, 150):  # more suspensions than the retry limit
        broker.suspend_at = suspend_at
        assert isinstance(reconcile(fake_kube, config, store, broker), RetryLater)
        assert fake_kube.status(PLURAL, NS, "replay")["phase"] == "Suspended"
        spec["suspend"] = False
    broker.fail_at = 200  # one failure: within the limit, so it is retried, after the first backoff
    assert reconcile(fake_kube, config, store, broker) == RetryLater(1.0)
    status = fake_kube.status(PLURAL, NS, "replay")
    assert (status["phase"], status["attempts"]) == ("Pending", 1)
    broker.fail_at = None
    assert reconcile(fake_kube, config, store, broker) is None
    status = fake_kube.status(PLURAL, NS, "replay")
    assert (status["phase"], status["attempts"], status["publishedEvents"]) == ("Succeeded", 2, TOTAL)
    assert set(broker.delivered) == set(range(1, TOTAL + 1))


def test_a_restarted_operator_continues_the_metrics_from_status(
    fake_kube: FakeKube, config: OperatorConfig, store: FakeStore, broker: FakeBroker, job: None
) -> None:
    labels = {"namespace": NS, "replayjob": "replay"}

    def sample(name: str, **extra: str) -> float | None:
        return REGISTRY.get_sample_value(name, {**labels, **extra})

    metrics.forget_replayjob(NS, "replay")
    broker.kill_at = 199
    with pytest.raises(Killed):
        reconcile(fake_kube, config, store, broker)
    published = fake_kube.status(PLURAL, NS, "replay")["publishedEvents"]
    assert 0 < published < TOTAL
    # Counted only once status has them: the series never runs ahead of what a restart restores.
    assert (sample("habitat_replay_events_total", result="published") or 0) <= published
    metrics.forget_replayjob(NS, "replay")  # a new operator process: no series yet
    restore_metrics(fake_kube.object(PLURAL, NS, "replay"))
    assert sample("habitat_replay_events_total", result="published") == published
    assert sample("habitat_replay_progress_ratio") == published / TOTAL
    broker.kill_at = None
    assert reconcile(fake_kube, config, store, broker) is None
    assert sample("habitat_replay_events_total", result="published") == TOTAL  # each event counted once
    metrics.forget_replayjob(NS, "replay")
    restore_metrics(fake_kube.object(PLURAL, NS, "replay"))  # finished: the dashboard keeps its 100%
    assert (sample("habitat_replay_progress_ratio"), sample("habitat_replay_rate_events_per_second")) == (
        1.0,
        0,
    )
    assert sample("habitat_replay_events_total", result="published") == TOTAL


def test_the_selection_is_counted_once_the_transactions_open_at_its_bound_have_ended(
    fake_kube: FakeKube,
    config: OperatorConfig,
    store: FakeStore,
    broker: FakeBroker,
    job: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(replay_run, "OPEN_TRANSACTIONS_POLL_SECONDS", 0)
    store.open_transactions, store.open_for = (41, 42), 3
    seen: list[tuple[Any, ...]] = []

    def look() -> None:
        status = fake_kube.status(PLURAL, NS, "replay")
        seen.append((status.get("phase"), conditions(status).get("Ready"), status.get("totalEvents")))

    store.on_look = look
    assert reconcile(fake_kube, config, store, broker) is None
    waiting = ("Pending", ("False", "WaitingForTransactions"), None)
    assert seen[1:] == [waiting] * 3  # counted only after the last look
    status = fake_kube.status(PLURAL, NS, "replay")
    assert (status["phase"], status["totalEvents"], status["publishedEvents"]) == ("Succeeded", TOTAL, TOTAL)


def test_transactions_that_stay_open_fail_the_attempt_and_the_next_reads_a_new_bound(
    fake_kube: FakeKube,
    config: OperatorConfig,
    store: FakeStore,
    broker: FakeBroker,
    job: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(replay_run, "OPEN_TRANSACTIONS_POLL_SECONDS", 0)
    monkeypatch.setattr(replay_run, "OPEN_TRANSACTIONS_WAIT_SECONDS", 0)
    store.open_transactions, store.open_for = (41,), 1000
    assert isinstance(reconcile(fake_kube, config, store, broker), RetryLater)
    status = fake_kube.status(PLURAL, NS, "replay")
    assert (status["phase"], conditions(status)["Ready"][1]) == ("Pending", "WaitingForTransactions")
    assert "still open after 0s (xids 41)" in status["message"] and "totalEvents" not in status
    assert broker.delivered == []
