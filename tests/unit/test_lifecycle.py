"""OneShotRun's lifecycle, driven through BackupRun: invalid specs, Secrets waited for, interrupted
attempts and exceptions nobody expected."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from habitat_operator.api.common import Reason, RetryPolicy
from habitat_operator.config import OperatorConfig
from habitat_operator.controllers.backup.run import BackupEngines, BackupRun
from habitat_operator.controllers.base.lifecycle import RetryLater, backoff_seconds
from habitat_operator.controllers.base.slots import OperationSlots
from habitat_operator.errors import RetryableError
from tests.unit.bodies import (
    DB_SECRET,
    DB_URI,
    NS,
    backup_body,
    condition_messages,
    conditions,
    reconcile_backup,
)
from tests.unit.fake_engines import FakeDump
from tests.unit.fake_kube import FakeKube

BACKUPS = "backups"


def applied(kube: FakeKube, **spec: Any) -> None:
    kube.put_secret(NS, DB_SECRET, {"uri": DB_URI})
    kube.add(BACKUPS, backup_body(**spec))


# ---------------------------------------------------------------- invalid spec


def test_invalid_spec_fails_naming_the_field(
    fake_kube: FakeKube, dump: FakeDump, config: OperatorConfig
) -> None:
    fake_kube.add(BACKUPS, backup_body(storage={"filesystem": {"path": "/etc"}}), validate=False)

    assert reconcile_backup(fake_kube, config, dump, "nightly") is None

    status = fake_kube.status(BACKUPS, NS, "nightly")
    assert status["phase"] == "Failed"
    assert conditions(status)["Stalled"] == ("True", "InvalidSpec")
    assert status["message"].startswith("spec.storage.filesystem.path: ")
    assert "relative to the operator's backup root" in status["message"]
    assert "attempts" not in status
    assert [(e.type, e.reason) for e in fake_kube.events] == [("Warning", "InvalidSpec")]
    assert dump.requests == []
    assert reconcile_backup(fake_kube, config, dump, "nightly") is None
    assert len(fake_kube.patches) == 1


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"database": {"secretRef": {}}}, "spec.database.secretRef.name"),
        ({"database": None}, "spec"),  # exactly one of database or rabbitmq
        ({"retry": {"limit": 99}}, "spec.retry.limit"),
        ({"timeout": "soon"}, "spec.timeout"),
        ({"unknownField": 1}, "spec.unknownField"),
    ],
)
def test_invalid_spec_names_each_field(
    fake_kube: FakeKube, dump: FakeDump, config: OperatorConfig, spec: dict[str, Any], field: str
) -> None:
    body = backup_body(**spec)
    body["spec"] = {k: v for k, v in body["spec"].items() if v is not None}
    fake_kube.add(BACKUPS, body, validate=False)
    assert reconcile_backup(fake_kube, config, dump, "nightly") is None
    status = fake_kube.status(BACKUPS, NS, "nightly")
    assert (status["phase"], conditions(status)["Stalled"]) == ("Failed", ("True", "InvalidSpec"))
    assert f"{field}: " in status["message"]


def test_a_spec_that_is_not_an_object(fake_kube: FakeKube, dump: FakeDump, config: OperatorConfig) -> None:
    body = backup_body()
    body["spec"] = ["not", "an", "object"]
    fake_kube.add(BACKUPS, body, validate=False)
    assert reconcile_backup(fake_kube, config, dump, "nightly") is None
    assert conditions(fake_kube.status(BACKUPS, NS, "nightly"))["Stalled"] == ("True", "InvalidSpec")


# ---------------------------------------------------------------- Secrets


def test_missing_secret_waits_without_counting_an_attempt(
    fake_kube: FakeKube, dump: FakeDump, config: OperatorConfig
) -> None:
    fake_kube.add(BACKUPS, backup_body())

    assert reconcile_backup(fake_kube, config, dump, "nightly") == RetryLater(30.0)

    status = fake_kube.status(BACKUPS, NS, "nightly")
    assert status["phase"] == "Pending"
    assert conditions(status) == {
        "Ready": ("False", "SecretNotFound"),
        "Reconciling": ("False", "SecretNotFound"),
        "Stalled": ("True", "SecretNotFound"),
    }
    assert condition_messages(status) == {f"Secret {NS}/{DB_SECRET} not found; checking again every 30s"}
    assert "attempts" not in status
    assert dump.requests == []
    assert fake_kube.events == []

    # Looking again changes nothing: no write, no watch event.
    assert reconcile_backup(fake_kube, config, dump, "nightly") == RetryLater(30.0)
    assert len(fake_kube.patches) == 1

    fake_kube.put_secret(NS, DB_SECRET, {"uri": DB_URI})
    assert reconcile_backup(fake_kube, config, dump, "nightly") is None
    status = fake_kube.status(BACKUPS, NS, "nightly")
    assert (status["phase"], status["attempts"]) == ("Succeeded", 1)


def test_missing_key_names_only_the_key(fake_kube: FakeKube, dump: FakeDump, config: OperatorConfig) -> None:
    fake_kube.add(BACKUPS, backup_body())
    fake_kube.put_secret(NS, DB_SECRET, {"password": "hunter2", "connection-string": DB_URI})

    assert reconcile_backup(fake_kube, config, dump, "nightly") == RetryLater(30.0)

    status = fake_kube.status(BACKUPS, NS, "nightly")
    assert (status["phase"], conditions(status)["Stalled"]) == ("Pending", ("True", "SecretKeyNotFound"))
    [message] = condition_messages(status)
    assert f"Secret {NS}/{DB_SECRET} has no key 'uri'" in message
    everything = str(fake_kube.objects) + str(fake_kube.events)
    for other in ("password", "connection-string", "hunter2", DB_URI):
        assert other not in everything


def test_forbidden_secret_waits(fake_kube: FakeKube, dump: FakeDump, config: OperatorConfig) -> None:
    applied(fake_kube)
    fake_kube.forbid_secret(NS, DB_SECRET)
    assert reconcile_backup(fake_kube, config, dump, "nightly") == RetryLater(30.0)
    status = fake_kube.status(BACKUPS, NS, "nightly")
    assert conditions(status)["Stalled"] == ("True", "SecretForbidden")
    assert "RBAC" in status["conditions"][0]["message"]


def test_secret_not_text_fails(fake_kube: FakeKube, dump: FakeDump, config: OperatorConfig) -> None:
    applied(fake_kube)
    fake_kube.put_secret(NS, DB_SECRET, {"uri": b"\xff\xfe"})
    assert reconcile_backup(fake_kube, config, dump, "nightly") is None
    status = fake_kube.status(BACKUPS, NS, "nightly")
    assert (status["phase"], conditions(status)["Stalled"]) == ("Failed", ("True", "SecretNotText"))


# ---------------------------------------------------------------- interrupted attempts


def running(kube: FakeKube, attempts: int) -> None:
    """The status an operator leaves behind when it is killed during attempt `attempts`."""
    kube.set_status(
        BACKUPS,
        NS,
        "nightly",
        {
            "phase": "Running",
            "attempts": attempts,
            "startedAt": "2024-06-01T09:59:00Z",
            "observedGeneration": 1,
        },
    )


def test_interrupted_attempt_is_retried(fake_kube: FakeKube, dump: FakeDump, config: OperatorConfig) -> None:
    applied(fake_kube)
    running(fake_kube, 1)

    assert reconcile_backup(fake_kube, config, dump, "nightly") is None

    status = fake_kube.status(BACKUPS, NS, "nightly")
    assert (status["phase"], status["attempts"]) == ("Succeeded", 2)
    events = fake_kube.events_for("nightly")
    assert [(e.type, e.reason) for e in events] == [
        ("Warning", "Interrupted"),
        ("Normal", "Started"),
        ("Normal", "Succeeded"),
    ]
    assert events[0].message == "attempt 1 was interrupted; the operator restarted"
    assert events[1].message.startswith("attempt 2: ")


def test_interrupted_attempt_after_the_last_retry_fails(
    fake_kube: FakeKube, dump: FakeDump, config: OperatorConfig
) -> None:
    applied(fake_kube)
    running(fake_kube, 4)  # the default limit is 3 retries

    assert reconcile_backup(fake_kube, config, dump, "nightly") is None

    status = fake_kube.status(BACKUPS, NS, "nightly")
    assert status["phase"] == "Failed"
    assert status["attempts"] == 4
    assert conditions(status)["Stalled"] == ("True", "Interrupted")
    assert status["message"] == "attempt 4 was interrupted; the operator restarted and no retries are left"
    assert fake_kube.reasons("nightly") == ["Interrupted", "Interrupted"]
    assert dump.requests == []


def test_interrupted_last_allowed_attempt_gets_its_retry(
    fake_kube: FakeKube, dump: FakeDump, config: OperatorConfig
) -> None:
    applied(fake_kube)
    running(fake_kube, 3)
    assert reconcile_backup(fake_kube, config, dump, "nightly") is None
    status = fake_kube.status(BACKUPS, NS, "nightly")
    assert (status["phase"], status["attempts"]) == ("Succeeded", 4)


def test_interrupted_then_failing_attempt_is_retried(
    fake_kube: FakeKube, dump: FakeDump, config: OperatorConfig
) -> None:
    applied(fake_kube)
    running(fake_kube, 1)
    dump.fail(RetryableError(Reason.DATABASE_UNREACHABLE, "down"))
    assert reconcile_backup(fake_kube, config, dump, "nightly") == RetryLater(60.0)
    status = fake_kube.status(BACKUPS, NS, "nightly")
    assert (status["phase"], status["attempts"]) == ("Pending", 2)
    assert "retry 2/3 in 60s" in status["message"]


# ---------------------------------------------------------------- the unexpected


def test_unexpected_exception_is_retried_then_fails(
    fake_kube: FakeKube, dump: FakeDump, config: OperatorConfig
) -> None:
    applied(fake_kube, retry={"limit": 1})
    dump.fail(RuntimeError("boom\n  at line 2"), KeyError("artifact"))

    assert reconcile_backup(fake_kube, config, dump, "nightly") == RetryLater(30.0)

    status = fake_kube.status(BACKUPS, NS, "nightly")
    assert status["phase"] == "Pending"
    assert conditions(status)["Reconciling"] == ("True", "UnexpectedError")
    assert status["message"] == "unexpected RuntimeError: boom at line 2; retry 1/1 in 30s"
    assert fake_kube.events[-1].reason == "UnexpectedError"

    assert reconcile_backup(fake_kube, config, dump, "nightly") is None

    status = fake_kube.status(BACKUPS, NS, "nightly")
    assert (status["phase"], status["attempts"]) == ("Failed", 2)
    assert conditions(status)["Stalled"] == ("True", "UnexpectedError")
    assert status["message"] == "unexpected KeyError: 'artifact'"


def test_exception_without_text_is_still_readable(
    fake_kube: FakeKube, dump: FakeDump, config: OperatorConfig
) -> None:
    applied(fake_kube, retry={"limit": 0})
    dump.fail(RuntimeError())
    assert reconcile_backup(fake_kube, config, dump, "nightly") is None
    assert fake_kube.status(BACKUPS, NS, "nightly")["message"] == "unexpected RuntimeError: no detail"


def test_an_apiserver_error_before_starting_is_an_attempt(
    fake_kube: FakeKube, dump: FakeDump, config: OperatorConfig
) -> None:
    applied(fake_kube)
    fake_kube.fail_next("read_secret", ConnectionResetError("connection reset by peer"))
    assert reconcile_backup(fake_kube, config, dump, "nightly") == RetryLater(30.0)
    status = fake_kube.status(BACKUPS, NS, "nightly")
    assert (status["phase"], status["attempts"]) == ("Pending", 1)
    assert "unexpected ConnectionResetError: connection reset by peer" in status["message"]


def test_failed_before_starting_records_its_attempts(
    fake_kube: FakeKube, dump: FakeDump, config: OperatorConfig
) -> None:
    applied(fake_kube, retry={"limit": 1})
    for _ in range(2):
        fake_kube.fail_next("read_secret", ConnectionResetError("connection reset by peer"))
    assert reconcile_backup(fake_kube, config, dump, "nightly") == RetryLater(30.0)
    assert reconcile_backup(fake_kube, config, dump, "nightly") is None
    status = fake_kube.status(BACKUPS, NS, "nightly")
    assert (status["phase"], status["attempts"]) == ("Failed", 2)


def test_backoff_doubles_up_to_an_hour() -> None:
    policy = RetryPolicy(limit=20, backoff="30s")
    assert [backoff_seconds(policy, n) for n in (1, 2, 3, 4)] == [30.0, 60.0, 120.0, 240.0]
    assert backoff_seconds(policy, 20) == 3600.0


# ---------------------------------------------------------------- operation slots


def test_a_second_backup_of_a_database_queues_behind_the_first(
    fake_kube: FakeKube, dump: FakeDump, config: OperatorConfig
) -> None:
    fake_kube.put_secret(NS, DB_SECRET, {"uri": DB_URI})
    for name in ("first", "second"):
        fake_kube.add(BACKUPS, backup_body(name))

    async def scenario() -> None:
        slots = OperationSlots()  # at most one operation per database by default
        dump.gate = asyncio.Event()
        first = asyncio.create_task(
            BackupRun(fake_kube.object(BACKUPS, NS, "first"), config, slots, BackupEngines(dump)).reconcile()
        )
        while not dump.requests:
            await asyncio.sleep(0)
        second = asyncio.create_task(
            BackupRun(fake_kube.object(BACKUPS, NS, "second"), config, slots, BackupEngines(dump)).reconcile()
        )
        for _ in range(20):
            await asyncio.sleep(0)
        status = fake_kube.status(BACKUPS, NS, "second")
        assert status["phase"] == "Pending"
        assert conditions(status)["Reconciling"] == ("True", "Queued")
        assert "another operation on db.example:5432/app is running" in condition_messages(status).pop()
        assert len(dump.requests) == 1
        dump.gate.set()
        assert await first is None
        assert await second is None

    asyncio.run(scenario())
    for name in ("first", "second"):
        status = fake_kube.status(BACKUPS, NS, name)
        assert (status["phase"], status["attempts"]) == ("Succeeded", 1)
