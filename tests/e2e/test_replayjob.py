"""ReplayJob against the real stack: events from PostgreSQL arrive in RabbitMQ queues, exactly as selected."""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest

from dev_stack import postgres, rabbitmq
from dev_stack.common import State, as_user
from sample_database import create_events
from tests.e2e.amqp import Broker, Received
from tests.e2e.conftest import OperatorProcess
from tests.e2e.helpers import condition, events, replayjob, wait_for, wait_phase
from tests.harness import REPO, Kubectl

pytestmark = pytest.mark.e2e

EVENTS = 600


@pytest.fixture
def broker(amqp_uri: str) -> Iterator[Broker]:
    connection = Broker(amqp_uri)
    yield connection
    connection.close()


@pytest.fixture
def store(fresh_database: str) -> str:
    with psycopg.connect(fresh_database) as conn:
        create_events(conn, EVENTS)
    return fresh_database


@pytest.fixture
def credentials(kubectl: Kubectl, store: str, amqp_uri: str) -> None:
    kubectl.run("create", "secret", "generic", "events-db", f"--from-literal=uri={store}")
    kubectl.run("create", "secret", "generic", "broker", f"--from-literal=uri={amqp_uri}")


def selected(uri: str, where: str, params: tuple[Any, ...] = ()) -> list[int]:
    """The ids a hand-written query selects: the expectation, independent of the operator's SQL."""
    with psycopg.connect(uri) as conn:
        rows = conn.execute(f"SELECT id FROM events WHERE {where} ORDER BY id", params).fetchall()
    return [row[0] for row in rows]


def wait_progress(
    kubectl: Kubectl, name: str, operator: OperatorProcess, beyond: int, field: str = "publishedEvents"
) -> None:
    """Until the job's status `field` (a count or the checkpoint) is above `beyond`: mid-replay."""
    wait_for(
        f"{name}'s {field} beyond {beyond}",
        lambda: (kubectl.get("replayjob", name).get("status", {}).get(field) or 0) > beyond,
        operator=operator,
        timeout=60,
    )


def ids(received: list[Received]) -> list[int]:
    return [int(m.message_id) for m in received]


def succeeded(kubectl: Kubectl, name: str, operator: OperatorProcess, timeout: float = 90) -> dict[str, Any]:
    obj = wait_phase(kubectl, "replayjob", name, {"Succeeded", "Failed"}, operator, timeout=timeout)
    assert obj["status"]["phase"] == "Succeeded", obj["status"]
    return obj


def test_each_selector_form_delivers_exactly_its_events_in_order(
    operator_alive: OperatorProcess, kubectl: Kubectl, credentials: None, store: str, broker: Broker
) -> None:
    forms: dict[str, tuple[dict[str, Any], str]] = {
        "ids": ({"eventIds": [5, 17, 300, 301]}, "id IN (5, 17, 300, 301)"),
        "types": (
            {"types": ["invoice.issued", "payment.received"]},
            "event_type IN ('invoice.issued', 'payment.received')",
        ),
        "window": (
            {"from": "2026-01-01T02:00:00Z", "to": "2026-01-01T03:00:00Z"},
            "occurred_at >= '2026-01-01T02:00:00Z' AND occurred_at < '2026-01-01T03:00:00Z'",
        ),
        "workflow": ({"correlationIds": ["allocation-run-0"]}, "correlation_id = 'allocation-run-0'"),
        "where": (
            {
                "where": [
                    {"column": "payload.account", "operator": "in", "values": ["acct-1", "acct-2"]},
                    {"column": "id", "operator": "lte", "value": "400"},
                    {"column": "headers.source", "operator": "eq", "value": "habitat-ledger"},
                ]
            },
            "payload->>'account' IN ('acct-1', 'acct-2') AND id <= 400",
        ),
    }
    queues = {}
    for name, (selector, _) in forms.items():
        exchange = broker.exchange()
        queues[name] = broker.queue(exchange)
        kubectl.apply(replayjob(name, selector, {"exchange": {"name": exchange}}))
    with psycopg.connect(store) as conn:
        payloads: dict[int, Any] = dict(conn.execute("SELECT id, payload FROM events").fetchall())
    for name, (_, where) in forms.items():
        obj = succeeded(kubectl, name, operator_alive)
        expected = selected(store, where)
        received = broker.drain(queues[name])
        assert ids(received) == expected, name  # exactly the selection, in id order
        status = obj["status"]
        assert status["totalEvents"] == status["publishedEvents"] == len(expected)
        assert status["checkpoint"] == expected[-1] and status["percent"] == "100%"
        assert condition(obj, "Ready")["status"] == "True"
        job = obj["metadata"]
        for message in received:
            assert message.body == payloads[int(message.message_id)]
            assert message.headers["source"] == "habitat-ledger"  # the event's own headers, unchanged
            assert message.headers["x-habitat-replay-job"] == f"{job['namespace']}/{name}"
            assert message.headers["x-habitat-replay-job-uid"] == job["uid"]
            assert message.headers["x-habitat-event-type"] == message.routing_key
            assert message.headers["x-habitat-replayed-at"].endswith("Z")
    metrics = operator_alive.scrape()
    assert (
        f'habitat_replay_events_total{{namespace="{kubectl.namespace}",replayjob="ids",'
        'result="published"} 4.0' in metrics
    )


def test_a_queue_target_reaches_that_queue_alone(
    operator_alive: OperatorProcess, kubectl: Kubectl, credentials: None, store: str, broker: Broker
) -> None:
    exchange = broker.exchange()
    mine, other = broker.queue(exchange), broker.queue(exchange)
    kubectl.apply(replayjob("one-consumer", {"correlationIds": ["invoice-7"]}, {"queue": {"name": mine}}))
    succeeded(kubectl, "one-consumer", operator_alive)
    assert ids(broker.drain(mine)) == selected(store, "correlation_id = 'invoice-7'")
    assert broker.drain(other) == []


def test_dry_run_publishes_nothing_and_max_events_refuses(
    operator_alive: OperatorProcess, kubectl: Kubectl, credentials: None, store: str, broker: Broker
) -> None:
    queue = broker.queue()
    target = {"queue": {"name": queue}}
    kubectl.apply(replayjob("look", {"types": ["invoice.issued"]}, target, dryRun=True, sampleSize=3))
    kubectl.apply(replayjob("too-many", {"types": ["invoice.issued"]}, target, maxEvents=10))
    look = succeeded(kubectl, "look", operator_alive)
    expected = selected(store, "event_type = 'invoice.issued'")
    assert look["status"]["totalEvents"] == len(expected)
    assert [e["id"] for e in look["status"]["sample"]] == expected[:3]
    assert look["status"]["sample"][0]["eventType"] == "invoice.issued"
    refused = wait_phase(kubectl, "replayjob", "too-many", {"Failed"}, operator_alive)
    stalled = condition(refused, "Stalled")
    assert stalled["reason"] == "SelectionTooLarge"
    assert f"holds {len(expected)} events, more than spec.maxEvents (10)" in stalled["message"]
    assert broker.drain(queue) == []


def test_suspend_then_resume_completes_with_no_gap(
    operator_alive: OperatorProcess, kubectl: Kubectl, credentials: None, store: str, broker: Broker
) -> None:
    queue = broker.queue()
    job = replayjob(
        "paced",
        {"from": "2026-01-01T00:00:00Z"},
        {"queue": {"name": queue}},
        rateLimit=200,
        checkpointInterval="300ms",
    )
    kubectl.apply(job)
    wait_progress(kubectl, "paced", operator_alive, beyond=50)
    kubectl.run("patch", "replayjob", "paced", "--type=merge", "-p", '{"spec": {"suspend": true}}')
    paused = wait_phase(kubectl, "replayjob", "paced", {"Suspended"}, operator_alive)
    assert condition(paused, "Ready")["reason"] == "Suspended"
    assert {condition(paused, c)["status"] for c in ("Ready", "Reconciling", "Stalled")} == {"False"}
    assert paused["status"]["publishedEvents"] < EVENTS
    refused = kubectl.run(
        "patch", "replayjob", "paced", "--type=merge", "-p", '{"spec": {"batchSize": 5}}', check=False
    )
    assert refused.returncode != 0 and "only suspend and rateLimit" in refused.stderr
    kubectl.run(
        "patch",
        "replayjob",
        "paced",
        "--type=merge",
        "-p",
        '{"spec": {"suspend": false, "rateLimit": 100000}}',
    )
    obj = succeeded(kubectl, "paced", operator_alive)
    assert ids(broker.drain(queue)) == list(range(1, EVENTS + 1))  # every id once, in order
    assert obj["status"]["publishedEvents"] == EVENTS and "duplicatesAtMost" not in obj["status"]
    assert obj["status"]["attempts"] == 1  # suspending and resuming is not another attempt


def test_unroutable_messages_fail_the_replay_or_are_counted(
    operator_alive: OperatorProcess, kubectl: Kubectl, credentials: None, store: str, broker: Broker
) -> None:
    direct = broker.exchange("direct")
    invoices = broker.queue(direct, routing_key="invoice.issued")
    selector = {"types": ["invoice.issued", "payment.received"]}
    kubectl.apply(replayjob("strict", selector, {"exchange": {"name": direct}}))
    failed = wait_phase(kubectl, "replayjob", "strict", {"Failed"}, operator_alive)
    first_payment = selected(store, "event_type = 'payment.received'")[0]
    assert failed["status"]["firstFailure"]["eventId"] == first_payment
    assert condition(failed, "Stalled")["reason"] == "MessageReturned"
    assert f"event {first_payment} returned as unroutable" in failed["status"]["message"]
    broker.drain(invoices)

    kubectl.apply(replayjob("lenient", selector, {"exchange": {"name": direct}}, onError="continue"))
    obj = succeeded(kubectl, "lenient", operator_alive)
    payments = selected(store, "event_type = 'payment.received'")
    assert obj["status"]["failedEvents"] == len(payments)
    assert obj["status"]["firstFailure"]["eventId"] == payments[0]
    assert ids(broker.drain(invoices)) == selected(store, "event_type = 'invoice.issued'")


def test_an_event_whose_headers_amqp_cannot_carry_fails_the_replay_or_is_counted(
    operator_alive: OperatorProcess, kubectl: Kubectl, credentials: None, store: str, broker: Broker
) -> None:
    with psycopg.connect(store) as conn:  # JSON allows a float in headers; pika encodes none
        conn.execute(
            """UPDATE events SET headers = COALESCE(headers, '{}') || '{"weight": 1.5}' WHERE id IN (3, 7)"""
        )
    queue = broker.queue(broker.exchange())
    selector = {"eventIds": list(range(1, 11))}
    kubectl.apply(replayjob("strict-headers", selector, {"queue": {"name": queue}}))
    failed = wait_phase(kubectl, "replayjob", "strict-headers", {"Failed"}, operator_alive)
    assert condition(failed, "Stalled")["reason"] == "MessageNotEncodable"
    assert "event 3 cannot be sent: its headers hold a float" in failed["status"]["message"]
    broker.drain(queue)

    kubectl.apply(replayjob("lenient-headers", selector, {"queue": {"name": queue}}, onError="continue"))
    status = succeeded(kubectl, "lenient-headers", operator_alive)["status"]
    assert (status["publishedEvents"], status["failedEvents"], status["checkpoint"]) == (8, 2, 10)
    assert status["firstFailure"]["eventId"] == 3
    assert status["firstFailure"]["reason"] == "MessageNotEncodable"
    assert ids(broker.drain(queue)) == [1, 2, 4, 5, 6, 8, 9, 10]


def test_bad_selectors_are_refused_at_apply_time_or_stall_with_the_field(
    operator_alive: OperatorProcess, kubectl: Kubectl, credentials: None
) -> None:
    target = {"queue": {"name": "nowhere"}}
    refusals: dict[str, dict[str, Any]] = {
        "selector.to must be after selector.from": {
            "from": "2026-02-01T00:00:00Z",
            "to": "2026-01-01T00:00:00Z",
        },
        "selector needs at least one of": {},
        "spec.selector.where[0].column": {"where": [{"column": "secret", "operator": "eq", "value": "1"}]},
        "spec.selector.where[0].operator": {"where": [{"column": "id", "operator": "; DROP", "value": "1"}]},
        "in and notIn take values": {"where": [{"column": "id", "operator": "in", "value": "1"}]},
    }
    for message, selector in refusals.items():
        result = kubectl.apply(replayjob("bad", selector, target), check=False)
        assert result.returncode != 0 and message in result.stderr, (message, result.stderr)
    job = replayjob("unmapped", {"types": ["x"]}, target)
    job["spec"]["source"]["columns"] = {"eventType": "kind"}
    kubectl.apply(job)
    failed = wait_phase(kubectl, "replayjob", "unmapped", {"Failed"}, operator_alive)
    stalled = condition(failed, "Stalled")
    assert stalled["reason"] == "InvalidSpec"
    assert stalled["message"] == "spec.source.columns.eventType: column 'kind' not found in table 'events'"


def test_the_events_command_lists_what_a_replayjob_replays(
    operator_alive: OperatorProcess,
    kubectl: Kubectl,
    credentials: None,
    store: str,
    broker: Broker,
    tmp_path: Any,
) -> None:
    selector: dict[str, Any] = {
        "types": ["period.close.step"],
        "where": [{"column": "id", "operator": "lt", "value": "200"}],
    }
    queue = broker.queue()
    job = replayjob("period-close", selector, {"queue": {"name": queue}})
    manifest = tmp_path / "job.yaml"
    manifest.write_text(json.dumps(job))
    command = [str(REPO / ".venv" / "bin" / "habitat-operator"), "events", "--database-uri", store]
    listed = subprocess.run(
        [*command, "-f", str(manifest), "-o", "json"], capture_output=True, text=True, check=True
    )
    by_flags = subprocess.run(
        [*command, "--type", "period.close.step", "--where", "id lt 200", "--count"],
        capture_output=True,
        text=True,
        check=True,
    )
    table = subprocess.run([*command, "-f", str(manifest)], capture_output=True, text=True, check=True)
    kubectl.apply(job)
    succeeded(kubectl, "period-close", operator_alive)
    replayed = ids(broker.drain(queue))
    assert [e["id"] for e in json.loads(listed.stdout)] == replayed
    assert by_flags.stdout.strip() == str(len(replayed))
    assert (
        table.stdout.splitlines()[0].split()[:2] == ["ID", "TYPE"]
        and len(table.stdout.splitlines()) == len(replayed) + 1
    )


def test_sigkill_mid_replay_loses_nothing_and_bounds_duplicates(
    operator_alive: OperatorProcess, kubectl: Kubectl, fresh_database: str, amqp_uri: str, broker: Broker
) -> None:
    total = 50_000
    with psycopg.connect(fresh_database) as conn:
        create_events(conn, total)
    kubectl.run("create", "secret", "generic", "events-db", f"--from-literal=uri={fresh_database}")
    kubectl.run("create", "secret", "generic", "broker", f"--from-literal=uri={amqp_uri}")
    queue = broker.queue()
    kubectl.apply(
        replayjob("big", {"from": "2026-01-01T00:00:00Z"}, {"queue": {"name": queue}}, rateLimit=8000)
    )
    wait_progress(kubectl, "big", operator_alive, beyond=1000, field="checkpoint")
    operator_alive.kill()
    killed_at = kubectl.get("replayjob", "big")["status"]
    assert killed_at["phase"] == "Running" and killed_at["publishedEvents"] < total
    operator_alive.start()
    obj = succeeded(kubectl, "big", operator_alive, timeout=120)
    received = ids(broker.drain(queue))
    assert set(received) == set(range(1, total + 1))  # every id at least once
    duplicates = len(received) - total
    assert duplicates <= obj["status"].get("duplicatesAtMost", 0)
    assert obj["status"]["publishedEvents"] == total and obj["status"]["checkpoint"] == total


def wait_reason(kubectl: Kubectl, name: str, reason: str, operator: OperatorProcess) -> dict[str, Any]:
    """The job once its Ready condition has `reason`."""
    return dict(
        wait_for(
            reason,
            lambda: (
                (o := kubectl.get("replayjob", name)).get("status", {}).get("conditions")
                and condition(o, "Ready")["reason"] == reason
                and o
            ),
            operator=operator,
            timeout=60,
        )
    )


def completes_with_every_id(
    kubectl: Kubectl, name: str, operator: OperatorProcess, broker: Broker, queue: str
) -> None:
    """Unpaced after an outage, the job succeeds: every id delivered, duplicates within its bound."""
    kubectl.run("patch", "replayjob", name, "--type=merge", "-p", '{"spec": {"rateLimit": 100000}}')
    obj = succeeded(kubectl, name, operator, timeout=120)
    received = ids(broker.drain(queue))
    assert set(received) == set(range(1, EVENTS + 1))
    assert len(received) - EVENTS <= obj["status"].get("duplicatesAtMost", 0)
    assert obj["status"]["publishedEvents"] == EVENTS


def test_rabbitmq_stopped_mid_replay_resumes_and_delivers_every_id(
    operator_alive: OperatorProcess, kubectl: Kubectl, credentials: None, broker: Broker
) -> None:
    queue = broker.queue()
    retry = {"limit": 10, "backoff": "1s"}
    # 12 s of publishing: stopping RabbitMQ's app takes seconds on a busy machine, and must land mid-replay.
    kubectl.apply(
        replayjob(
            "outage", {"from": "2026-01-01T00:00:00Z"}, {"queue": {"name": queue}}, rateLimit=50, retry=retry
        )
    )
    wait_progress(kubectl, "outage", operator_alive, beyond=50)
    rabbitmq.rabbitmqctl("stop_app")
    try:
        down = wait_reason(kubectl, "outage", "BrokerUnavailable", operator_alive)
        assert condition(down, "Ready")["status"] == "False"
    finally:
        rabbitmq.rabbitmqctl("start_app")
    broker.reconnect()
    completes_with_every_id(kubectl, "outage", operator_alive, broker, queue)


def test_postgresql_stopped_mid_replay_retries_with_backoff_and_delivers_every_id(
    operator_alive: OperatorProcess, kubectl: Kubectl, credentials: None, store: str, broker: Broker
) -> None:
    queue = broker.queue()
    retry = {"limit": 10, "backoff": "1s"}
    kubectl.apply(
        replayjob(
            "dbdown",
            {"from": "2026-01-01T00:00:00Z"},
            {"queue": {"name": queue}},
            rateLimit=150,
            batchSize=20,  # many pages: the database is read again and again while it is down
            retry=retry,
        )
    )
    wait_progress(kubectl, "dbdown", operator_alive, beyond=50)
    postgres.stop_postgres()  # this session's stack only (HABITAT_STACK_DIR)
    try:
        down = wait_reason(kubectl, "dbdown", "DatabaseUnreachable", operator_alive)
        assert condition(down, "Ready")["status"] == "False" and down["status"]["phase"] == "Pending"
        retries = wait_for(  # the backoff doubles from spec.retry.backoff
            "a second retry",
            lambda: (
                (m := [e["message"] for e in events(kubectl) if e["reason"] == "DatabaseUnreachable"])[1:]
                and m
            ),
            operator=operator_alive,
            timeout=60,
        )
        assert any("retry 2/10 in 2s" in message for message in retries)
        assert not any(str(urlsplit(store).password) in message for message in retries)
    finally:
        postgres.restart_postgres()
    completes_with_every_id(kubectl, "dbdown", operator_alive, broker, queue)


def test_deleting_a_running_replay_stops_it_and_what_was_published_stays(
    operator_alive: OperatorProcess, kubectl: Kubectl, credentials: None, broker: Broker
) -> None:
    queue = broker.queue()
    kubectl.apply(
        replayjob("doomed", {"from": "2026-01-01T00:00:00Z"}, {"queue": {"name": queue}}, rateLimit=100)
    )
    wait_progress(kubectl, "doomed", operator_alive, beyond=0)
    # Waits until the object is gone: the replay stops at once, and the finalizer goes with it.
    deleted = kubectl.run("delete", "replayjob", "doomed", "--timeout=5s", check=False)
    assert deleted.returncode == 0, deleted.stderr
    cancelled = wait_for(
        "the Cancelled Event",
        lambda: [e["message"] for e in events(kubectl) if e["reason"] == "Cancelled"],
        operator=operator_alive,
    )
    assert "what was published stays published" in cancelled[0]
    published = ids(broker.drain(queue))
    assert 0 < len(published) < EVENTS and published == list(range(1, len(published) + 1))
    assert broker.drain(queue, idle=1.0) == []  # nothing more arrives after the deletion


def rabbitmq_eval(expression: str) -> str:
    """An Erlang expression evaluated on the stack's RabbitMQ node; what it printed."""
    env = rabbitmq.rabbitmq_env(State.load())
    argv = as_user("rabbitmq", ["/usr/sbin/rabbitmqctl", "-n", env["RABBITMQ_NODENAME"], "eval", expression])
    result = subprocess.run(
        argv, env={**os.environ, **env}, check=True, capture_output=True, text=True, timeout=60
    )
    return result.stdout.strip()


@contextmanager
def broker_max_message_size(limit: int) -> Iterator[None]:
    """The broker's max_message_size for channels opened meanwhile (RabbitMQ reads it per channel)."""
    before = rabbitmq_eval("application:get_env(rabbit, max_message_size).")  # {ok,134217728}
    rabbitmq_eval(f"application:set_env(rabbit, max_message_size, {limit}).")
    try:
        yield
    finally:
        if before.startswith("{ok,"):
            rabbitmq_eval(f"application:set_env(rabbit, max_message_size, {before[4:-1]}).")
        else:
            rabbitmq_eval("application:unset_env(rabbit, max_message_size).")


def test_a_message_over_the_brokers_max_message_size_fails_alone_or_is_skipped(
    operator_alive: OperatorProcess, kubectl: Kubectl, credentials: None, store: str, broker: Broker
) -> None:
    large = [100, 101, 400]
    with psycopg.connect(store) as conn:
        conn.execute(
            "UPDATE events SET payload = jsonb_build_object('blob', repeat('x', 150000)) WHERE id = ANY(%s)",
            (large,),
        )
        row = conn.execute("SELECT octet_length(payload::text) FROM events WHERE id = 100").fetchone()
    assert row is not None
    size = row[0]
    selector = {"from": "2026-01-01T00:00:00Z"}
    strict, lenient = broker.queue(), broker.queue()
    retry = {"limit": 2, "backoff": "1s"}
    with broker_max_message_size(100_000):
        kubectl.apply(replayjob("strict-size", selector, {"queue": {"name": strict}}, retry=retry))
        failed = wait_phase(kubectl, "replayjob", "strict-size", {"Failed", "Succeeded"}, operator_alive)
        kubectl.apply(
            replayjob("lenient-size", selector, {"queue": {"name": lenient}}, onError="continue", retry=retry)
        )
        status = succeeded(kubectl, "lenient-size", operator_alive)["status"]
    stalled = condition(failed, "Stalled")
    assert (failed["status"]["phase"], stalled["reason"]) == ("Failed", "MessageTooLarge"), stalled
    assert (
        f"event 100 is {size} bytes, larger than the broker's max_message_size (100000 bytes)"
        in (stalled["message"])
    )
    assert failed["status"]["attempts"] == 1 and failed["status"]["firstFailure"]["eventId"] == 100
    sent = Counter(ids(broker.drain(strict)))
    assert 100 not in sent and max(sent.values()) <= 2  # no resend loop: at most once more, once
    assert sent.keys() >= set(range(1, 100))

    assert (status["publishedEvents"], status["failedEvents"], status["checkpoint"]) == (597, 3, EVENTS)
    assert status["firstFailure"]["eventId"] == 100
    assert status["firstFailure"]["reason"] == "MessageTooLarge"
    received = ids(broker.drain(lenient))
    assert set(received) == set(range(1, EVENTS + 1)) - set(large)
    assert len(received) - 597 <= status.get("duplicatesAtMost", 0)


def bodies(broker: Broker, queue: str) -> dict[str, bytes]:
    """Each message's body as it arrived, by message id (an empty body is no JSON)."""
    received = {}
    for method, properties, body in broker.channel.consume(queue, auto_ack=True, inactivity_timeout=0.5):
        if method is None:
            break
        received[properties.message_id] = body
    broker.channel.cancel()
    return received


def test_a_null_payload_is_an_empty_body_and_optional_columns_may_be_absent(
    operator_alive: OperatorProcess, kubectl: Kubectl, credentials: None, store: str, broker: Broker
) -> None:
    with psycopg.connect(store) as conn:  # an event store with no routing key, correlation or headers
        conn.execute(
            "CREATE TABLE ledger (id bigint PRIMARY KEY, event_type text NOT NULL,"
            " occurred_at timestamptz NOT NULL, payload jsonb)"
        )
        conn.execute(
            "INSERT INTO ledger SELECT g, 'ledger.posted',"
            " '2026-01-01'::timestamptz + g * interval '1 minute',"
            " CASE WHEN g = 3 THEN NULL ELSE jsonb_build_object('n', g) END FROM generate_series(1, 5) g"
        )
    queue = broker.queue()
    job = replayjob("fixed-queue", {"types": ["ledger.posted"]}, {"queue": {"name": queue}})
    job["spec"]["source"]["table"] = "ledger"
    kubectl.apply(job)
    status = succeeded(kubectl, "fixed-queue", operator_alive)["status"]
    assert (status["publishedEvents"], status["failedEvents"]) == (5, 0)
    expected = {str(n): json.dumps({"n": n}).encode() for n in (1, 2, 4, 5)}
    assert bodies(broker, queue) == {**expected, "3": b""}

    by_workflow = replayjob("by-workflow", {"correlationIds": ["period-close-1"]}, {"queue": {"name": queue}})
    by_workflow["spec"]["source"]["table"] = "ledger"
    kubectl.apply(by_workflow)
    stalled = condition(
        wait_phase(kubectl, "replayjob", "by-workflow", {"Failed"}, operator_alive), "Stalled"
    )
    assert (stalled["reason"], stalled["message"]) == (
        "InvalidSpec",
        "spec.selector.correlationIds: table 'ledger' has no 'correlation_id' column"
        " (name it in spec.source.columns.correlationId)",
    )


def test_the_selection_waits_for_transactions_open_when_its_bound_was_read(
    operator_alive: OperatorProcess, kubectl: Kubectl, credentials: None, store: str, broker: Broker
) -> None:
    insert = (
        "INSERT INTO events (event_type, occurred_at, payload, routing_key, headers)"
        " VALUES ('ledger.late', '2026-01-02', '{}', 'ledger.late', '{}') RETURNING id"
    )
    held = [psycopg.connect(store), psycopg.connect(store)]  # each in a transaction until it commits
    committed = psycopg.connect(store, autocommit=True)
    try:
        late = []
        for transaction in held:  # an id taken, then many committed after it
            late.append(transaction.execute(insert).fetchone())
            for _ in range(300):
                committed.execute(insert)
        queue = broker.queue()
        kubectl.apply(replayjob("gap-safe", {"from": "2026-01-01T00:00:00Z"}, {"queue": {"name": queue}}))
        waiting = wait_reason(kubectl, "gap-safe", "WaitingForTransactions", operator_alive)
        assert "transactions open when the selection's upper bound" in condition(waiting, "Ready")["message"]
        assert waiting["status"]["phase"] == "Pending" and "totalEvents" not in waiting["status"]
        for transaction in held:
            transaction.commit()
    finally:
        for connection in (*held, committed):
            connection.close()
    status = succeeded(kubectl, "gap-safe", operator_alive)["status"]
    expected = selected(store, "TRUE")
    assert [row[0] for row in late if row] == [EVENTS + 1, EVENTS + 302]
    assert ids(broker.drain(queue)) == expected  # the late ones too, in their place
    assert status["totalEvents"] == status["publishedEvents"] == len(expected) == EVENTS + 602


def rss_kib(pid: int, field: str) -> int:
    """VmRSS (now) or VmHWM (the peak since the last reset) of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")


def test_replay_memory_is_bounded_in_bytes_whatever_the_payload_sizes(
    operator_alive: OperatorProcess, kubectl: Kubectl, fresh_database: str, amqp_uri: str, broker: Broker
) -> None:
    total = 1500
    with psycopg.connect(fresh_database) as conn:  # about 190 KB each: 285 MB in all
        create_events(conn, total)
        conn.execute("UPDATE events SET payload = jsonb_build_object('blob', repeat(md5(id::text), 6000))")
    kubectl.run("create", "secret", "generic", "events-db", f"--from-literal=uri={fresh_database}")
    kubectl.run("create", "secret", "generic", "broker", f"--from-literal=uri={amqp_uri}")
    queue = broker.queue()
    assert operator_alive.process is not None
    pid = operator_alive.process.pid
    before = rss_kib(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak starts again from now
    job = replayjob("heavy", {"from": "2026-01-01T00:00:00Z"}, {"queue": {"name": queue}}, batchSize=10000)
    kubectl.apply(job)
    status = succeeded(kubectl, "heavy", operator_alive, timeout=300)["status"]
    growth_mib = (rss_kib(pid, "VmHWM") - before) / 1024
    assert status["publishedEvents"] == total
    assert broker.channel.queue_declare(queue, passive=True).method.message_count == total
    assert growth_mib < 100, f"peak RSS grew by {growth_mib:.0f} MiB during the replay"


def test_replay_memory_counts_every_column_an_event_brings_not_only_its_payload(
    operator_alive: OperatorProcess, kubectl: Kubectl, fresh_database: str, amqp_uri: str, broker: Broker
) -> None:
    total = 120
    with psycopg.connect(fresh_database) as conn:  # 2 MB routing keys: 240 MB that AMQP cannot carry
        create_events(conn, total)
        conn.execute("UPDATE events SET payload = '{}', routing_key = repeat(md5(id::text), 62500)")
    kubectl.run("create", "secret", "generic", "events-db", f"--from-literal=uri={fresh_database}")
    kubectl.run("create", "secret", "generic", "broker", f"--from-literal=uri={amqp_uri}")
    assert operator_alive.process is not None
    pid = operator_alive.process.pid
    before = rss_kib(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    target = {"exchange": {"name": broker.exchange()}}
    selector = {"from": "2026-01-01T00:00:00Z"}
    kubectl.apply(replayjob("long-keys", selector, target, batchSize=10000, onError="continue"))
    status = succeeded(kubectl, "long-keys", operator_alive, timeout=300)["status"]
    growth_mib = (rss_kib(pid, "VmHWM") - before) / 1024
    assert (status["publishedEvents"], status["failedEvents"]) == (0, total)
    assert status["firstFailure"]["reason"] == "MessageNotEncodable"
    assert "routing key is longer than AMQP's 255 bytes" in status["firstFailure"]["message"]
    assert growth_mib < 100, f"peak RSS grew by {growth_mib:.0f} MiB during the replay"
