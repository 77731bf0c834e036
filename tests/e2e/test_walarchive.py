"""A WalArchive run by the operator process against a PostgreSQL server of the test's own, into the
stack's S3, with default settings: it streams, takes the first base backup, archives segments and
the growing one, and says so in status and metrics; a slot dropped while the operator is away is a
gap (condition, Event, a new base backup, the window restarting after it); a SIGKILLed operator
loses no WAL and lists no unfinished base backup; deleting the WalArchive drops its slot; a slot
over maxRetainedWal fires the alert in the stack's Prometheus and, with onExceeded: drop, is dropped
as a gap."""

from __future__ import annotations

import json
import os
import secrets
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from habitat_operator import timestamps
from habitat_operator.engines.wal import records
from habitat_operator.engines.wal.layout import parse_lsn
from tests.e2e.conftest import OperatorProcess
from tests.e2e.helpers import (
    PrivateServer,
    condition,
    create_s3_secret,
    events,
    s3_storage,
    wait_for,
    walarchive,
)
from tests.e2e.prometheus import firing, scraping
from tests.harness import Kubectl, Stack

pytestmark = pytest.mark.e2e

NAME = "orders"
TIMEOUT = 240  # a look every 5s; status gets the LSNs every 30s on two shared cores


class Archive:
    """The WalArchive's objects in the stack's bucket."""

    def __init__(self, stack: Stack, prefix: str, namespace: str) -> None:
        self.client = boto3.client(
            "s3",
            endpoint_url=stack.s3_endpoint,
            aws_access_key_id=stack.s3_access_key,
            aws_secret_access_key=stack.s3_secret_key,
            region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}),
        )
        self.bucket = stack.s3_bucket
        self.root = f"{prefix}/{namespace}/{NAME}/"

    def listing(self, under: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.root + under
        )
        return sorted(
            item["Key"].removeprefix(self.root) for page in pages for item in page.get("Contents", [])
        )

    def check_entry(self, key: str) -> None:
        """The entry's tar is stored whole: its size is the entry's."""
        entry = json.loads(self.client.get_object(Bucket=self.bucket, Key=self.root + key)["Body"].read())
        tar = self.client.head_object(Bucket=self.bucket, Key=self.root + key.removesuffix(".json") + ".tar")
        assert tar["ContentLength"] == entry["sizeBytes"], (key, tar["ContentLength"], entry)

    def segments(self) -> list[str]:
        return [key.removeprefix("wal/") for key in self.listing("wal/") if len(key) == len("wal/") + 24]


@pytest.fixture
def archive_of(
    kubectl: Kubectl, stack: Stack, private_server: PrivateServer
) -> tuple[Archive, dict[str, Any]]:
    """The Secrets and the WalArchive's body (not applied yet), and where its objects go."""
    kubectl.run("create", "secret", "generic", "habitat-db", f"--from-literal=uri={private_server.uri}")
    create_s3_secret(kubectl, stack)
    prefix = f"e2e-wal-{secrets.token_hex(4)}"
    return Archive(stack, prefix, kubectl.namespace), walarchive(NAME, storage=s3_storage(stack, prefix))


def status(kubectl: Kubectl) -> dict[str, Any]:
    return dict(kubectl.get("walarchive", NAME).get("status") or {})


def streaming(kubectl: Kubectl, operator: OperatorProcess) -> dict[str, Any]:
    """Status, once Ready/Streaming with a base backup."""

    def ready() -> dict[str, Any] | None:
        found = status(kubectl)
        ok = found.get("phase") == "Ready" and found.get("lastBaseBackup")
        return found if ok and condition({"status": found}, "Ready")["reason"] == "Streaming" else None

    return wait_for(f"WalArchive {NAME} to stream", ready, TIMEOUT, operator)  # type: ignore[no-any-return]


def write_and_switch(server: PrivateServer, rows: int = 100) -> int:
    """Rows committed, then the segment switched: its end is where the archive must reach."""
    server.execute("CREATE TABLE IF NOT EXISTS ledger (id serial PRIMARY KEY, note text)")
    server.execute("INSERT INTO ledger (note) SELECT 'n' || g FROM generate_series(1, %s) g", rows)
    return parse_lsn(server.execute("SELECT pg_switch_wal()::text")[0])


def archived_past(kubectl: Kubectl, lsn: int, operator: OperatorProcess) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        found = status(kubectl)
        archived = found.get("archivedLsn")
        return found if archived and parse_lsn(archived) >= lsn else None

    return wait_for(f"archivedLsn past {lsn:X}", reached, TIMEOUT, operator)  # type: ignore[no-any-return]


def slot_of(server: PrivateServer, slot: str) -> Any:
    return server.execute(
        "SELECT active, restart_lsn::text FROM pg_replication_slots WHERE slot_name = %s", slot
    )


def sample(operator: OperatorProcess, family: str, namespace: str) -> float | None:
    for metric in operator.metrics().values():
        for found in metric.samples:
            if found.name == family and found.labels.get("namespace") == namespace:
                return float(found.value)
    return None


def test_a_walarchive_streams_backs_up_reports_and_drops_its_slot_when_deleted(
    operator_alive: OperatorProcess,
    kubectl: Kubectl,
    private_server: PrivateServer,
    archive_of: tuple[Archive, dict[str, Any]],
) -> None:
    archive, body = archive_of
    kubectl.apply(body)
    found = streaming(kubectl, operator_alive)
    slot = found["slot"]
    assert slot_of(private_server, slot) is not None
    backup = found["lastBaseBackup"]["name"]
    assert f"base/{backup}.json" in archive.listing("base/") and f"base/{backup}.tar" in archive.listing(
        "base/"
    )
    assert "archive.json" in archive.listing()

    switched = write_and_switch(private_server)
    found = archived_past(kubectl, switched, operator_alive)
    assert archive.segments(), archive.listing()
    wait_for(
        "the growing segment archived", lambda: any(k.endswith(".partial") for k in archive.listing("wal/"))
    )
    window = wait_for(
        "the recovery window",
        lambda: (w := status(kubectl).get("recoveryWindow") or {}).get("from") and w.get("to") and w,
        TIMEOUT,
        operator_alive,
    )
    assert timestamps.parse(window["from"]) <= timestamps.parse(window["to"])

    namespace = kubectl.namespace
    assert sample(operator_alive, "habitat_walarchive_lag_bytes", namespace) is not None
    assert sample(operator_alive, "habitat_walarchive_streaming", namespace) == 1
    newest_commit = sample(
        operator_alive, "habitat_walarchive_last_archived_commit_timestamp_seconds", namespace
    )
    assert newest_commit is not None and 0 <= time.time() - newest_commit < TIMEOUT  # the live RPO

    kubectl.run("delete", "walarchive", NAME, "--wait=true", "--timeout=60s")
    wait_for("the slot dropped", lambda: slot_of(private_server, slot) is None, 60, operator_alive)
    assert archive.segments()  # the archive stays


def test_a_slot_dropped_while_the_operator_is_away_is_a_gap_then_a_new_base_backup(
    operator_alive: OperatorProcess,
    kubectl: Kubectl,
    private_server: PrivateServer,
    archive_of: tuple[Archive, dict[str, Any]],
) -> None:
    archive, body = archive_of
    kubectl.apply(body)
    found = streaming(kubectl, operator_alive)
    slot, first = found["slot"], found["lastBaseBackup"]["name"]
    archived_past(kubectl, write_and_switch(private_server), operator_alive)

    operator_alive.stop()
    wait_for("the slot released", lambda: (row := slot_of(private_server, slot)) and not row[0], 30)
    private_server.execute("SELECT pg_drop_replication_slot(%s)", slot)
    write_and_switch(private_server)  # WAL nobody keeps for the archive
    operator_alive.start()

    def gap_condition() -> bool:
        conditions = status(kubectl).get("conditions") or []
        return any(c.get("reason") == "GapDetected" for c in conditions)

    wait_for("a GapDetected condition", gap_condition, TIMEOUT, operator_alive)
    gap = status(kubectl)["gaps"][-1]
    assert gap["reason"] == "SlotMissing" and gap["fromLsn"]
    assert any(event["reason"] == "GapDetected" for event in events(kubectl))
    assert archive.listing("gaps/")
    assert slot_of(private_server, slot) is not None  # created again

    renewed = wait_for(
        "a base backup after the gap",
        lambda: (s := status(kubectl)).get("lastBaseBackup", {}).get("name") not in (None, first) and s,
        TIMEOUT,
        operator_alive,
    )
    detected = timestamps.parse(gap["detectedAt"])
    assert timestamps.parse(renewed["lastBaseBackup"]["startedAt"]) >= detected.replace(microsecond=0)
    window = wait_for(
        "the recovery window after the gap",
        lambda: (
            (w := status(kubectl).get("recoveryWindow") or {}).get("from")
            and timestamps.parse(w["from"]) > detected
            and w
        ),
        TIMEOUT,
        operator_alive,
    )
    assert window["from"] == renewed["lastBaseBackup"]["completedAt"]


def children(parent: int, command: str) -> list[int]:
    """The processes named `command` that `parent` started."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)
            name = fields[0].split("(", 1)[1]
            ppid = int(fields[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if name == command and ppid == parent:
            found.append(int(stat.parent.name))
    return found


def no_wal_lost(archive: Archive, found: dict[str, Any]) -> None:
    assert not found.get("gaps"), found.get("gaps")
    assert records.holes(archive.segments(), 16 << 20) == []


def test_an_operator_killed_mid_stream_loses_no_wal(
    operator_alive: OperatorProcess,
    kubectl: Kubectl,
    private_server: PrivateServer,
    archive_of: tuple[Archive, dict[str, Any]],
) -> None:
    archive, body = archive_of
    kubectl.apply(body)
    streaming(kubectl, operator_alive)
    switched = write_and_switch(private_server)
    operator_alive.kill()
    switched = max(switched, write_and_switch(private_server))
    operator_alive.start()
    no_wal_lost(archive, archived_past(kubectl, switched, operator_alive))


def test_an_operator_killed_mid_base_backup_lists_no_unfinished_one_and_loses_no_wal(
    operator_alive: OperatorProcess,
    kubectl: Kubectl,
    private_server: PrivateServer,
    archive_of: tuple[Archive, dict[str, Any]],
) -> None:
    archive, body = archive_of
    # About 150 MB of data, so that a base backup lasts seconds, not a fraction of one that polling
    # misses; the checkpoint keeps its WAL out of what the new slot streams.
    private_server.execute(
        "CREATE TABLE bulk AS SELECT g, md5(g::text) || md5((-g)::text) AS filler"
        " FROM generate_series(1, 1500000) g"
    )
    private_server.execute("CHECKPOINT")
    body["spec"]["baseBackup"] = {"schedule": "* * * * *"}  # and one a minute after the first
    kubectl.apply(body)
    assert operator_alive.process is not None
    pid = operator_alive.process.pid
    wait_for("a base backup to run", lambda: children(pid, "pg_basebackup"), 120, operator_alive)
    operator_alive.kill()
    operator_alive.start()
    switched = write_and_switch(private_server)
    no_wal_lost(archive, archived_past(kubectl, switched, operator_alive))
    for key in (key for key in archive.listing("base/") if key.endswith(".json")):
        archive.check_entry(key)  # every base backup listed has its whole tar


@contextmanager
def stalled_receiver(operator: OperatorProcess) -> Iterator[int]:
    """The operator's pg_receivewal stopped (SIGSTOP) as a hung archiver is: it keeps its connection
    and the slot, which advances no more; continued on leaving (if it still runs)."""
    assert operator.process is not None
    pid = operator.process.pid
    found = wait_for("pg_receivewal", lambda: children(pid, "pg_receivewal"), 30, operator)
    os.kill(found[0], signal.SIGSTOP)
    try:
        yield found[0]
    finally:
        with suppress(ProcessLookupError):
            os.kill(found[0], signal.SIGCONT)


def hold_back(server: PrivateServer, segments: int) -> None:
    """`segments` more WAL segments on the server: a row and a switch each."""
    server.execute("CREATE TABLE IF NOT EXISTS churn (id serial PRIMARY KEY)")
    for _ in range(segments):
        server.execute("INSERT INTO churn DEFAULT VALUES")
        server.execute("SELECT pg_switch_wal()")


def budget_condition(found: dict[str, Any]) -> dict[str, Any]:
    return condition({"status": found}, "SlotOverBudget")


BUDGET = "48MiB"  # a fresh slot holds back up to two segments before its first one is confirmed


def test_a_slot_over_its_budget_fires_the_alert_then_with_on_exceeded_drop_is_dropped_as_a_gap(
    stack: Stack,
    operator_alive: OperatorProcess,
    kubectl: Kubectl,
    private_server: PrivateServer,
    archive_of: tuple[Archive, dict[str, Any]],
) -> None:
    """A hung archiver lets its slot hold back WAL past maxRetainedWal. `onExceeded: alert`: the alert
    fires in the stack's Prometheus, the condition and an Event say so, the slot stays. Then
    `onExceeded: drop`: the next look drops the slot, records a SlotDropped gap, streams on from a
    new slot and takes a base backup after the gap."""
    archive, body = archive_of
    body["spec"]["slot"] = {"maxRetainedWal": BUDGET}  # onExceeded: alert
    alert, labels = "HabitatWalSlotRetentionOverBudget", {"namespace": kubectl.namespace, "walarchive": NAME}
    with scraping(stack, operator_alive):
        kubectl.apply(body)
        found = streaming(kubectl, operator_alive)
        slot, first = found["slot"], found["lastBaseBackup"]["name"]
        assert not firing(stack, alert, **labels)
        with stalled_receiver(operator_alive):
            hold_back(private_server, 5)
            stalled_at = parse_lsn(private_server.execute("SELECT pg_current_wal_lsn()::text")[0])
            wait_for(f"{alert} to fire", lambda: firing(stack, alert, **labels), TIMEOUT, operator_alive)
            over = wait_for(  # at once (status gets slotRetainedBytes at most every 30s: not waited for)
                "the SlotOverBudget condition",
                lambda: (found := status(kubectl)) and budget_condition(found)["status"] == "True" and found,
                TIMEOUT,
                operator_alive,
            )
            assert budget_condition(over)["reason"] == "SlotRetentionExceeded"
            assert slot_of(private_server, slot) is not None and not over.get("gaps")  # alert only

            body["spec"]["slot"]["onExceeded"] = "drop"
            kubectl.apply(body)
            dropped = wait_for(
                "a SlotDropped gap",
                lambda: [g for g in status(kubectl).get("gaps") or [] if g["reason"] == "SlotDropped"],
                TIMEOUT,
                operator_alive,
            )
    warned = [e for e in events(kubectl) if e["reason"] == "SlotRetentionExceeded"]
    assert warned and f"over maxRetainedWal {BUDGET}" in warned[0]["message"], warned
    assert f"over maxRetainedWal {BUDGET} (onExceeded: drop)" in dropped[0]["message"], dropped
    assert condition({"status": status(kubectl)}, "Reconciling")["reason"] == "GapDetected"
    assert archive.listing("gaps/")
    # A new slot from the server's position then, streamed on, and a base backup after the gap.
    wait_for(
        "the slot created again and streamed on",
        lambda: (row := slot_of(private_server, slot)) and row[0] and parse_lsn(row[1]) >= stalled_at,
        TIMEOUT,
        operator_alive,
    )
    wait_for(
        "a base backup after the gap",
        lambda: status(kubectl).get("lastBaseBackup", {}).get("name") not in (None, first),
        TIMEOUT,
        operator_alive,
    )
    assert [g["reason"] for g in status(kubectl)["gaps"]] == ["SlotDropped"]  # dropped once
    assert budget_condition(status(kubectl))["status"] == "False"
