"""One ReplayJob, from Pending to Succeeded or Failed: selected events, in id order, to RabbitMQ.

The order protects against loss and bounds duplicates:
- the selection's highest id is read with the transactions then open, and the job waits until they
  have ended (ids come from a sequence before a commit, so one of them may still commit an id below
  the bound); only then is the selection counted, and its size and highest id are written to status
  before anything is published, so the replay is exactly the committed events up to that id, and a
  restart replays the same selection;
- `status.checkpoint` only ever names an id up to which every selected event is confirmed, so a
  restart that resumes after it never skips one;
- `status.reservedThrough` is written before any id above it is published, so after a crash at any
  line the events that may go out twice are exactly the selected ids in (checkpoint, reservedThrough],
  which the next attempt counts into `duplicatesAtMost`.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import suppress
from enum import StrEnum

from habitat_operator import timestamps
from habitat_operator.api.common import Phase, Reason
from habitat_operator.api.replayjob import (
    REPLAYJOB,
    OnError,
    ReplayFailure,
    ReplayJobSpec,
    ReplayJobStatus,
    ReplayReason,
    SampleEvent,
)
from habitat_operator.config import OperatorConfig
from habitat_operator.controllers.base import kube
from habitat_operator.controllers.base.credentials import read_connection, read_secret_text
from habitat_operator.controllers.base.lifecycle import OneShotRun, RetryLater
from habitat_operator.controllers.base.slots import OperationSlots
from habitat_operator.controllers.base.status import Edit, read_status
from habitat_operator.controllers.replayjob import metrics
from habitat_operator.controllers.replayjob.engines import (
    POSTGRES_TO_RABBITMQ,
    EventSource,
    Publisher,
    ReplayEngines,
)
from habitat_operator.controllers.replayjob.messages import Addressing, encoder, to_message
from habitat_operator.controllers.replayjob.progress import Progress
from habitat_operator.durations import parse_duration
from habitat_operator.engines.postgres.events import BEFORE_FIRST_ID, EventStore, Snapshot
from habitat_operator.engines.rabbitmq.properties import NotEncodable
from habitat_operator.engines.rabbitmq.publisher import Failure
from habitat_operator.engines.rabbitmq.uri import AmqpTarget
from habitat_operator.errors import OperationError, PermanentError, RetryableError

WINDOW = 1000  # messages in flight: ~15-20k msg/s here, where one confirm per message gives ~1.6k
SUSPENDED_RECHECK_SECONDS = 5.0
DRAIN_SECONDS = 10.0
# How long a new selection waits for the transactions open when its bound was read, and how often it looks.
OPEN_TRANSACTIONS_WAIT_SECONDS = 300.0
OPEN_TRANSACTIONS_POLL_SECONDS = 0.5


class ReplayRun(OneShotRun[ReplayJobSpec, ReplayJobStatus]):
    info = REPLAYJOB
    spec_model = ReplayJobSpec
    status_model = ReplayJobStatus

    def __init__(
        self,
        body: kube.JsonDict,
        config: OperatorConfig,
        slots: OperationSlots,
        engines: ReplayEngines = POSTGRES_TO_RABBITMQ,
    ) -> None:
        super().__init__(body, config, slots)
        self.engines = engines

    @property
    def uid(self) -> str:
        return str(self.body["metadata"]["uid"])

    async def execute(self, spec: ReplayJobSpec) -> RetryLater | None:
        if spec.suspend:
            return await self._suspended("suspended before it started")
        database = await read_connection(self.namespace, spec.source.database.secret_ref)
        async with self.engines.connect(database) as reader:
            store = await reader.check_columns(EventStore(spec.source.table, spec.source.columns))
            store.check_selector(spec.selector)
            if self.status.total_events is None:
                snapshot = await self._snapshot(spec, reader, store)
                if snapshot.count > spec.max_events:
                    raise _too_large(snapshot.count, spec.max_events)
                if spec.dry_run:
                    await self._dry_run(spec, reader, store, snapshot.count, snapshot.upper)
                    return None
                count, upper = snapshot.count, snapshot.upper

                def selected(status: ReplayJobStatus) -> None:
                    status.total_events, status.upper_bound = count, upper
                    status.published_events = status.failed_events = 0
                    status.progress, status.percent = f"0/{count}", "0%"

                await self.reporter.write(
                    "reconciling", Phase.PENDING, ReplayReason.REPLAYING, f"selected {count} events", selected
                )
            return await self._replay(spec, reader, store)

    # ---------------------------------------------------------------- the selection

    async def _snapshot(self, spec: ReplayJobSpec, reader: EventSource, store: EventStore) -> Snapshot:
        """The selection's highest id, then its size once every transaction open when that id was
        read has ended: from then on, no event with an id up to the bound can still appear."""
        bound = await reader.bound(store, spec.selector)
        if bound.upper is None:
            return Snapshot(0, None)
        waiting = await reader.still_open(bound.open_transactions)
        if waiting:
            await self.reporter.write(
                "reconciling",
                Phase.PENDING,
                ReplayReason.WAITING_FOR_TRANSACTIONS,
                f"waiting for {len(waiting)} transactions open when the selection's upper bound"
                f" ({bound.upper}) was read to end; they may still commit events below it",
            )
        deadline = time.monotonic() + OPEN_TRANSACTIONS_WAIT_SECONDS
        while waiting:
            if time.monotonic() > deadline:
                raise RetryableError(
                    ReplayReason.WAITING_FOR_TRANSACTIONS,
                    f"{len(waiting)} transactions open when the selection's upper bound was read"
                    f" were still open after {OPEN_TRANSACTIONS_WAIT_SECONDS:.0f}s"
                    f" (xids {', '.join(map(str, waiting[:5]))}); the next attempt reads a new bound",
                )
            await asyncio.sleep(OPEN_TRANSACTIONS_POLL_SECONDS)
            waiting = await reader.still_open(waiting)
        count = await reader.count_between(store, spec.selector, BEFORE_FIRST_ID, bound.upper)
        return Snapshot(count, bound.upper)

    # ---------------------------------------------------------------- dry run and suspension

    async def _dry_run(
        self, spec: ReplayJobSpec, reader: EventSource, store: EventStore, count: int, upper: int | None
    ) -> None:
        sample: list[SampleEvent] = []
        if upper is not None and spec.sample_size:
            budget = self.config.replay_batch_bytes
            pages = reader.pages(store, spec.selector, BEFORE_FIRST_ID, upper, spec.sample_size, budget)
            async for page in pages:  # pages within the byte budget, however large the payloads
                sample += [
                    SampleEvent(
                        id=e.id,
                        event_type=e.event_type,
                        occurred_at=timestamps.rfc3339(e.occurred_at),
                        routing_key=e.routing_key,
                        correlation_id=e.correlation_id,
                    )
                    for e in page[: spec.sample_size - len(sample)]
                ]
                if len(sample) == spec.sample_size:
                    break

        def sampled(status: ReplayJobStatus) -> None:
            status.total_events, status.upper_bound, status.published_events = count, upper, 0
            status.progress, status.sample = f"0/{count}", sample

        await self.succeed(
            f"dry run: {count} events would be replayed to {Addressing.of(spec.target).display};"
            " nothing was published",
            sampled,
        )

    async def _suspended(self, why: str, *edits: Edit[ReplayJobStatus]) -> RetryLater:
        metrics.stopped(self.namespace, self.name)

        def idle(status: ReplayJobStatus) -> None:
            status.rate_per_second, status.eta = 0.0, None

        await self.reporter.write(
            "paused",
            Phase.SUSPENDED,
            Reason.SUSPENDED,
            f"{why}; unset spec.suspend to resume from the checkpoint",
            idle,
            *edits,
        )
        return RetryLater(SUSPENDED_RECHECK_SECONDS)

    # ---------------------------------------------------------------- the replay

    async def _replay(self, spec: ReplayJobSpec, reader: EventSource, store: EventStore) -> RetryLater | None:
        status = self.status
        total, upper = status.total_events or 0, status.upper_bound
        after = BEFORE_FIRST_ID if status.checkpoint is None else status.checkpoint
        duplicates = status.duplicates_at_most or 0
        if status.reserved_through is not None and upper is not None and status.reserved_through > after:
            # The last attempt may have published these before it stopped: they may go out again.
            duplicates += await reader.count_between(
                store, spec.selector, after, min(status.reserved_through, upper)
            )
        addressing = Addressing.of(spec.target)
        metrics.started(self.namespace, self.name)

        def replaying(status: ReplayJobStatus) -> None:
            status.duplicates_at_most = duplicates or None
            status.reserved_through = status.checkpoint

        await self.start(
            ReplayReason.REPLAYING, f"replaying {total} events to {addressing.display}", replaying
        )
        if upper is None or after >= upper:
            await self._finish(None)
            return None
        uri = await read_secret_text(
            self.namespace, spec.target.rabbitmq.secret_ref.name, spec.target.rabbitmq.secret_ref.key
        )
        replay = _Replay(self, spec, AmqpTarget(uri), addressing, after)
        try:
            suspended = await replay.run(reader, store, upper)
        finally:
            await replay.close()
        if suspended:
            self._record_duration()
            # Not a failed attempt: resuming continues this one, so suspending never uses up spec.retry.
            self.attempts -= 1
            attempts = self.attempts

            def counted(status: ReplayJobStatus) -> None:
                status.attempts = attempts

            return await self._suspended(f"suspended at checkpoint {self.status.checkpoint}", counted)
        await self._finish(replay.first_failure)
        return None

    async def _finish(self, failure: Failure | None) -> None:
        status = self.status
        published, failed = status.published_events or 0, status.failed_events or 0
        message = f"replayed {published} of {status.total_events or 0} events in {self.elapsed:.1f}s"
        if failed:
            message += f"; {failed} failed (first: event {failure.key if failure else '?'})"
        self._record_duration()

        def finished(status: ReplayJobStatus) -> None:
            status.percent, status.eta, status.rate_per_second, status.reserved_through = (
                "100%",
                None,
                0.0,
                None,
            )

        await self.succeed(message, finished)

    def _record_duration(self) -> None:
        metrics.REPLAY_DURATION.labels(self.namespace, self.name).observe(self.elapsed)

    # ---------------------------------------------------------------- the lifecycle's hooks

    def cancellation_message(self) -> str:
        return (
            f"deleted while running: the replay stopped after checkpoint {self.status.checkpoint};"
            " what was published stays published"
        )

    def failure_edit(self, error: OperationError) -> Edit[ReplayJobStatus] | None:
        return error.edit if isinstance(error, _FieldsError) else None

    def record_failure(self, error: OperationError, elapsed: float | None) -> None:
        """A failed attempt; the stall clock keeps running while it is retried (HabitatReplayStalled)."""
        if elapsed is not None:
            metrics.REPLAY_DURATION.labels(self.namespace, self.name).observe(elapsed)
        metrics.REPLAY_RATE.labels(self.namespace, self.name).set(0)

    def record_outcome(self, succeeded: bool) -> None:
        metrics.stopped(self.namespace, self.name)
        metrics.REPLAY_RUNS.labels("success" if succeeded else "failure").inc()


def restore_metrics(body: kube.JsonDict) -> None:
    """After an operator restart, a replay's series come back from its status, so a dashboard sees
    no drop to zero. The stall clock is not restored (status does not say when events were last
    settled): the next attempt starts it, as a new one would."""
    status = read_status(ReplayJobStatus, body)
    if status.total_events is None or (body.get("spec") or {}).get("dryRun"):
        return
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    published, failed = status.published_events or 0, status.failed_events or 0
    metrics.settled(namespace, name, published, failed)
    metrics.REPLAY_PROGRESS.labels(namespace, name).set(
        Progress(status.total_events, published + failed).ratio
    )
    if status.phase not in (Phase.RUNNING, Phase.PENDING):
        metrics.REPLAY_RATE.labels(namespace, name).set(0)


class _FieldsError(PermanentError):
    """A permanent failure that also sets status fields (the counts, the first failed event)."""

    def __init__(self, reason: StrEnum, message: str, edit: Edit[ReplayJobStatus]) -> None:
        super().__init__(reason, message)
        self.edit = edit


def _too_large(count: int, limit: int) -> PermanentError:

    def counted(status: ReplayJobStatus) -> None:
        status.total_events = count

    return _FieldsError(
        ReplayReason.SELECTION_TOO_LARGE,
        f"the selection holds {count} events, more than spec.maxEvents ({limit});"
        " raise maxEvents to replay them",
        counted,
    )


class _Replay:
    """One attempt's publishing loop: pacing, reservations and checkpoints."""

    def __init__(
        self, run: ReplayRun, spec: ReplayJobSpec, broker: AmqpTarget, addressing: Addressing, after: int
    ) -> None:
        status = run.status
        self.owner = run
        self.spec = spec
        self.broker = broker
        self.addressing = addressing
        self.after = after
        self.interval = parse_duration(spec.checkpoint_interval).total_seconds()
        self.rate_limit = spec.rate_limit
        self.base_published = status.published_events or 0
        self.base_failed = status.failed_events or 0
        self.checkpoint = status.checkpoint
        self.base_duplicates = status.duplicates_at_most or 0
        self.batch_bytes = run.config.replay_batch_bytes
        self.reserved = after
        self.progress = Progress(status.total_events or 0)
        self.progress.observe(time.monotonic(), self.base_published + self.base_failed)
        self.publisher: Publisher | None = None
        self.first_failure: Failure | None = None
        self.job_name = f"{run.namespace}/{run.name}"
        self._pace_start = time.monotonic()
        self._paced = 0
        self._due = time.monotonic() + self.interval
        self._suspend_requested = False
        self._ids_per_second = 0.0
        self._first_sent: tuple[float, int] | None = None

    async def run(self, reader: EventSource, store: EventStore, upper: int) -> bool:
        """Publishes every selected event after the checkpoint; True when suspended midway."""
        self.publisher = await self.owner.engines.publisher(self.broker, WINDOW, self.batch_bytes).open()
        publish, refuse, tally = self.publisher.publish, self.publisher.refuse, self.publisher.tally
        uid = self.owner.uid
        fail_fast = self.spec.on_error is OnError.FAIL
        try:
            async for page in reader.pages(
                store, self.spec.selector, self.after, upper, self.spec.batch_size, self.batch_bytes
            ):
                marks = encoder(self.job_name, uid, timestamps.rfc3339(timestamps.now()))
                for event in page:  # the hot loop: a few attribute reads a message, no more
                    if self.rate_limit is not None:
                        await self._pace()
                    if event.id > self.reserved:
                        await self._write(reserve_past=max(event.id, page[-1].id))
                    try:
                        message = to_message(event, self.addressing, marks)
                    except NotEncodable as error:  # counted as failed, as a returned message is
                        refuse(Failure(event.id, ReplayReason.MESSAGE_NOT_ENCODABLE, str(error)))
                    else:
                        await publish(message)
                    if fail_fast and self.publisher.failing:  # known, if not yet settled in order
                        break
                    if time.monotonic() >= self._due:
                        await self._write(reserve_past=event.id)
                        if self._suspend_requested:
                            break
                else:
                    continue
                break
            await self.publisher.drain()
        except OperationError:
            await self._settle_and_write()
            raise
        await self._write(reserve_past=None)
        self.first_failure = tally.first_failure
        if self.first_failure is not None and fail_fast:
            raise self._failed()
        return self._suspend_requested

    def _failed(self) -> PermanentError:
        failure = self.first_failure
        assert failure is not None
        status = self.owner.status
        first = ReplayFailure(event_id=failure.key, reason=failure.reason, message=failure.message)

        def failed_at(status: ReplayJobStatus) -> None:
            status.first_failure = first

        return _FieldsError(
            failure.reason,
            f"event {failure.key} {failure.message}; stopped after {status.published_events or 0}"
            " published events (onError: fail)",
            failed_at,
        )

    async def _settle_and_write(self) -> None:
        """After a failure: what the broker still confirms counts; what it did not may go out again."""
        if self.publisher is None:
            return
        with suppress(OperationError, TimeoutError):
            async with asyncio.timeout(DRAIN_SECONDS):
                await self.publisher.drain()
        with suppress(Exception):  # the status write must not hide the failure that got us here
            await self._write(reserve_past=None, reserved=self.publisher.sent_through)

    async def close(self) -> None:
        if self.publisher is not None:
            await self.publisher.close()

    async def _pace(self) -> None:
        assert self.rate_limit is not None
        self._paced += 1
        ahead = self._pace_start + self._paced / self.rate_limit - time.monotonic()
        if ahead > 0.005:
            await asyncio.sleep(ahead)

    async def _write(self, reserve_past: int | None, reserved: int | None = None) -> None:
        """Writes the checkpoint and counts, reserves ids up to past `reserve_past` (None: nothing
        beyond what was sent), and picks up a changed suspend or rateLimit."""
        assert self.publisher is not None
        now = time.monotonic()
        sent = self.publisher.sent_through
        if sent is not None and sent != BEFORE_FIRST_ID:
            if self._first_sent is None:
                self._first_sent = (now, sent)
            elif now > self._first_sent[0]:
                self._ids_per_second = (sent - self._first_sent[1]) / (now - self._first_sent[0])
        if reserved is None:
            reserved = (
                sent if reserve_past is None else reserve_past + int(self._ids_per_second * self.interval * 2)
            )
        tally = self.publisher.tally
        published, failed = self.base_published + tally.confirmed, self.base_failed + tally.failed
        duplicates = self.base_duplicates + self.publisher.resent
        checkpoint = self.publisher.confirmed_through
        self.progress.observe(now, published + failed)
        failure = tally.first_failure
        progress = self.progress

        def progressed(status: ReplayJobStatus) -> None:
            status.checkpoint = self.checkpoint if checkpoint is None else checkpoint
            status.reserved_through = None if reserved is None or reserved == BEFORE_FIRST_ID else reserved
            status.duplicates_at_most = duplicates or None
            status.published_events, status.failed_events = published, failed
            status.progress, status.percent = progress.display(published), progress.percent
            status.rate_per_second, status.eta = round(progress.rate, 1), progress.eta
            status.first_failure = (
                None
                if failure is None
                else ReplayFailure(event_id=failure.key, reason=failure.reason, message=failure.message)
            )

        await self.owner.reporter.write(
            "reconciling",
            Phase.RUNNING,
            ReplayReason.REPLAYING,
            f"replaying {progress.total} events to {self.addressing.display}",
            progressed,
        )
        self._record_metrics(published, failed)
        if checkpoint is not None:
            self.checkpoint = checkpoint
        self.reserved = self.after if reserved is None else reserved
        self._due = now + self.interval
        await self._follow_spec()

    def _record_metrics(self, published: int, failed: int) -> None:
        ns, name = self.owner.namespace, self.owner.name
        if metrics.settled(ns, name, published, failed):
            metrics.progressed(ns, name)
        metrics.REPLAY_PROGRESS.labels(ns, name).set(self.progress.ratio)
        metrics.REPLAY_RATE.labels(ns, name).set(self.progress.rate)

    async def _follow_spec(self) -> None:
        """suspend and rateLimit may change while the replay runs; the rest of the spec cannot."""
        latest = await kube.get(REPLAYJOB.plural, self.owner.namespace, self.owner.name)
        spec = (latest or {}).get("spec") or {}
        self._suspend_requested = bool(spec.get("suspend"))
        rate = spec.get("rateLimit")
        if rate != self.rate_limit:
            self.rate_limit = rate
            self._pace_start, self._paced = time.monotonic(), 0
