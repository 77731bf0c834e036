"""Reads each metric trigger's source: its Secret (cached for a minute), then the engine, with a
timeout shorter than the polling interval. A failure is a Reading without a value, never zero.

A policy's author chooses the URLs the operator reaches: with `--allowed-metrics-endpoints`, a
Prometheus `serverAddress` whose host matches none of its patterns is refused (InvalidSpec), and so
is a RabbitMQ URL read from a trigger's Secret (a failure of that trigger, as the Secret is read at
each poll); a Prometheus failure reads in status only as unreachable or a bad response, its detail
logged.
"""

from __future__ import annotations

import asyncio
import time

import structlog

from habitat_operator.api.scalepolicy import QueueSource, ScalePolicyReason, ScalePolicySpec, Trigger
from habitat_operator.controllers.base.credentials import read_secret_text
from habitat_operator.controllers.base.endpoints import endpoint_allowed
from habitat_operator.controllers.scalepolicy import metrics
from habitat_operator.controllers.scalepolicy.decision import Reading, metric_triggers
from habitat_operator.engines.http import display
from habitat_operator.engines.prometheus.query import PrometheusFailure, instant_value
from habitat_operator.engines.rabbitmq.queue_depth import AmqpDepth, management_depth
from habitat_operator.engines.threads import in_thread
from habitat_operator.errors import OperationError, PermanentError

log = structlog.get_logger(__name__)

SECRET_TTL_SECONDS = 60.0
MAX_TIMEOUT_SECONDS = 10.0


def timeout_for(spec: ScalePolicySpec) -> float:
    """A source gets 80% of the interval (at most 10 s), so a slow one never delays the next poll."""
    return min(spec.polling_interval * 0.8, MAX_TIMEOUT_SECONDS)


def check_endpoints(spec: ScalePolicySpec, allowed: tuple[str, ...]) -> None:
    """Raises ValueError naming the first trigger whose serverAddress `allowed` refuses."""
    for trigger in spec.triggers:
        address = trigger.prometheus.server_address if trigger.prometheus else None
        if address is not None and not endpoint_allowed(address, allowed):
            raise ValueError(
                f"spec.triggers[{trigger.name}].prometheus.serverAddress: {display(address)} is not"
                " among the operator's --allowed-metrics-endpoints"
            )


class Sources:
    """One policy's trigger sources; the Secrets it read, by (name, key), with when it read them."""

    def __init__(self, namespace: str, name: str, allowed_endpoints: tuple[str, ...] = ()) -> None:
        self.namespace = namespace
        self.name = name
        self.allowed_endpoints = allowed_endpoints
        self._secrets: dict[tuple[str, str], tuple[float, str]] = {}
        self._amqp: dict[str, tuple[str, AmqpDepth]] = {}  # by trigger: its URI and open connection
        self._logged: dict[str, str] = {}  # by trigger: the failure's detail last logged

    async def read_all(self, spec: ScalePolicySpec) -> dict[str, Reading]:
        triggers = metric_triggers(spec)
        readings = await asyncio.gather(*(self._read(t, timeout_for(spec)) for t in triggers))
        return {t.name: r for t, r in zip(triggers, readings, strict=True)}

    async def _read(self, trigger: Trigger, timeout: float) -> Reading:
        labels = (self.namespace, self.name, trigger.name)
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                value = await self._value(trigger, timeout)
        except (OperationError, TimeoutError) as error:
            metrics.TRIGGER_ERRORS.labels(*labels).inc()
            message = error.message if isinstance(error, OperationError) else f"no answer within {timeout:g}s"
            if isinstance(error, PrometheusFailure) and self._logged.get(trigger.name) != error.detail:
                self._logged[trigger.name] = error.detail  # once per new detail, not every poll
                log.warning(
                    "prometheus trigger failed",
                    namespace=self.namespace,
                    scalepolicy=self.name,
                    trigger=trigger.name,
                    detail=error.detail,
                )
            return Reading(None, message)
        finally:
            metrics.TRIGGER_DURATION.labels(*labels).observe(time.monotonic() - started)
        metrics.TRIGGER_VALUE.labels(*labels).set(value)
        return Reading(value)

    async def _value(self, trigger: Trigger, timeout: float) -> float:
        if trigger.prometheus:
            p = trigger.prometheus
            return await in_thread(instant_value, p.server_address, p.query, timeout)
        q = trigger.rabbitmq
        assert q is not None
        connection = await self._secret(q.secret_ref.name, q.secret_ref.key)
        if not endpoint_allowed(connection, self.allowed_endpoints):
            raise PermanentError(
                ScalePolicyReason.SOURCE_UNAVAILABLE,
                f"{display(connection)} (Secret {q.secret_ref.name}) is not among the operator's"
                " --allowed-metrics-endpoints",
            )
        if q.source is QueueSource.AMQP:
            return float(await in_thread(self._amqp_reader(trigger.name, connection).read, q.queue, timeout))
        return float(await in_thread(management_depth, connection, q.vhost, q.queue, timeout))

    async def _secret(self, name: str, key: str) -> str:
        cached = self._secrets.get((name, key))
        if cached and time.monotonic() - cached[0] < SECRET_TTL_SECONDS:
            return cached[1]
        value = await read_secret_text(self.namespace, name, key)
        self._secrets[(name, key)] = (time.monotonic(), value)
        return value

    def _amqp_reader(self, trigger: str, uri: str) -> AmqpDepth:
        known = self._amqp.get(trigger)
        if known and known[0] == uri:
            return known[1]
        if known:
            known[1].close()  # the Secret changed
        reader = AmqpDepth(uri)
        self._amqp[trigger] = (uri, reader)
        return reader

    def close(self) -> None:
        for _, reader in self._amqp.values():
            reader.close()
        self._amqp.clear()

    def forget_secrets(self) -> None:
        """After a failure, read the Secrets again: a rotated password may be why."""
        self._secrets.clear()
