"""The engines a ReplayJob's run is given (a Protocol per engine family), so that a unit test hands
it stand-ins instead of patching module paths."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from habitat_operator.api.replayjob import EventSelector
from habitat_operator.engines.postgres import events
from habitat_operator.engines.postgres.events import Bound, Event, EventStore
from habitat_operator.engines.postgres.uri import ConnectionTarget
from habitat_operator.engines.rabbitmq.publisher import ConfirmingPublisher, Failure, Message, Tally
from habitat_operator.engines.rabbitmq.uri import AmqpTarget


class EventSource(Protocol):
    """A session on the event store, as `engines.postgres.events.EventReader` offers it."""

    async def check_columns(self, store: EventStore) -> EventStore: ...
    async def bound(self, store: EventStore, selector: EventSelector) -> Bound: ...
    async def still_open(self, transactions: tuple[int, ...]) -> tuple[int, ...]: ...
    async def count_between(
        self, store: EventStore, selector: EventSelector, after: int, through: int
    ) -> int: ...
    def pages(
        self,
        store: EventStore,
        selector: EventSelector,
        after: int,
        through: int,
        limit: int,
        max_bytes: int | None = None,
    ) -> AsyncIterator[list[Event]]: ...


class ConnectEvents(Protocol):
    def __call__(self, target: ConnectionTarget) -> AbstractAsyncContextManager[EventSource]: ...


class Publisher(Protocol):
    """A channel in confirm mode, as `engines.rabbitmq.publisher.ConfirmingPublisher` offers it."""

    @property
    def tally(self) -> Tally: ...
    @property
    def failing(self) -> bool: ...
    @property
    def resent(self) -> int: ...
    @property
    def confirmed_through(self) -> int | None: ...
    @property
    def sent_through(self) -> int | None: ...
    async def open(self) -> Publisher: ...
    async def close(self) -> None: ...
    async def publish(self, message: Message) -> None: ...
    def refuse(self, failure: Failure) -> None: ...
    async def drain(self) -> None: ...


class NewPublisher(Protocol):
    def __call__(self, target: AmqpTarget, window: int, window_bytes: int) -> Publisher: ...


@dataclass(frozen=True)
class ReplayEngines:
    connect: ConnectEvents
    publisher: NewPublisher


POSTGRES_TO_RABBITMQ = ReplayEngines(connect=events.connect, publisher=ConfirmingPublisher)
