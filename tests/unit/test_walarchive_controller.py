"""WalArchiveRun against the fake apiserver, with stand-ins for the replication, receiver, upload,
base backup and catalog engines (the archive's own records go to a real folder store): streaming
and the first base backup, a failure, a retry, a missing Secret, RBAC that refuses the Secret, an
invalid spec, gaps (a missing slot, a slot past the archive, another server), a slot over its
budget (alert and drop), suspend, and the daemon's end (deletion mid-look, the operator stopping)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import kopf
import pytest
from kopf._cogs.aiokits.aioenums import FlagSetter

from habitat_operator import timestamps
from habitat_operator.api.common import API_VERSION, Reason
from habitat_operator.api.wal import WalReason
from habitat_operator.api.walarchive import WalArchiveSpec
from habitat_operator.config import OperatorConfig
from habitat_operator.controllers.base.core import Recheck, RetryLater
from habitat_operator.controllers.base.slots import OperationSlots
from habitat_operator.controllers.walarchive import metrics
from habitat_operator.controllers.walarchive import run as run_module
from habitat_operator.controllers.walarchive.engines import Archive, PostgresWal
from habitat_operator.controllers.walarchive.run import SPOOL_FOLDER, WalArchiveRun
from habitat_operator.controllers.walarchive.streams import Streams
from habitat_operator.engines.postgres.replication import ServerIdentity, SlotState
from habitat_operator.engines.postgres.uri import ConnectionTarget
from habitat_operator.engines.wal import catalog
from habitat_operator.engines.wal.basebackup import BaseBackupEntry
from habitat_operator.engines.wal.catalog import RecoveryWindow
from habitat_operator.engines.wal.layout import ArchiveLayout, parse_lsn
from habitat_operator.engines.wal.store import FolderStore
from habitat_operator.engines.wal.uploader import PartialUpload, UploadResult
from habitat_operator.errors import OperationError, PermanentError, RetryableError
from habitat_operator.handlers import walarchive as handler
from habitat_operator.handlers.driver import Shared, Wakeups
from tests.unit.bodies import DB_SECRET, NS, conditions, restore_body
from tests.unit.fake_kube import Clock, FakeKube, JsonDict

# The handler's daemon, called as Kopf calls it (with only the arguments it reads).
stream_daemon = cast(Callable[..., Coroutine[Any, Any, None]], handler.stream)
ARCHIVES = "walarchives"
NAME = "orders"
SLOT = "habitat_team_a_orders"
URI = "postgresql://archiver:hunter2@db.example:5432/app"
SEGMENT = 16 << 20
SYSTEM_ID = "7300000000000000001"


def archive_body(**spec: Any) -> JsonDict:
    return {
        "apiVersion": API_VERSION,
        "kind": "WalArchive",
        "metadata": {"name": NAME, "namespace": NS},
        "spec": {
            "database": {"secretRef": {"name": DB_SECRET}},
            "storage": {"filesystem": {"path": "wal"}},
            **spec,
        },
    }


def new_slot(slot: str) -> SlotState:
    """A slot just created: it has reserved no WAL yet."""
    return SlotState(slot, None, False, 0, None)


def base_backup_entry(backup_id: str, lsn: int, at: datetime, size: int) -> BaseBackupEntry:
    return BaseBackupEntry(backup_id, lsn, lsn, 1, at, at, 150004, SYSTEM_ID, size, "0" * 64, False, "zstd")


class FakeReceiver:
    def __init__(self, target: ConnectionTarget, slot: str, application_name: str, synchronous: bool) -> None:
        self.target, self.slot = target, slot
        self.application_name, self.synchronous = application_name, synchronous
        self._running = False
        self._error: OperationError | None = None
        self.stopped = False

    @property
    def running(self) -> bool:
        return self._running

    @property
    def last_error(self) -> OperationError | None:
        return self._error

    def fail(self, error: str) -> None:
        self._running, self._error = False, RetryableError(WalReason.REPLICATION_REFUSED, error)

    async def start(self) -> None:
        self._running = True

    async def stop(self) -> None:
        self._running, self.stopped = False, True


class FakeWal(PostgresWal):
    """The server, its slots, pg_receivewal, the uploader, pg_basebackup and the catalog, as a
    test sets them; identity and gap records go through the real folder store."""

    def __init__(self) -> None:
        self.identity = ServerIdentity(SYSTEM_ID, 150004, 1, SEGMENT)
        self.slots: dict[str, SlotState] = {}
        self.receivers: list[FakeReceiver] = []
        self.archived_lsn: int | None = parse_lsn("0/3000000")
        self.created: list[str] = []
        self.dropped: list[str] = []
        self.fail: dict[str, BaseException] = {}  # the next call of that name raises it
        self.gate: asyncio.Event | None = None  # upload_ready waits for it
        self.uploading = asyncio.Event()
        self.base_backups: list[str] = []
        self.retained = 0
        self.window: tuple[datetime | None, datetime | None] = (None, None)
        self.retention_runs = 0
        self.catalog_newest: BaseBackupEntry | None = None
        self.catalog_reads = 0

    def _maybe_fail(self, name: str) -> None:
        if name in self.fail:
            raise self.fail.pop(name)

    async def server_identity(self, target: ConnectionTarget) -> ServerIdentity:
        self._maybe_fail("server_identity")
        return self.identity

    async def slot_state(self, target: ConnectionTarget, slot: str) -> SlotState | None:
        self._maybe_fail("slot_state")
        found = self.slots.get(slot)
        if found is None:
            return None
        return SlotState(slot, self.archived_lsn, True, self.retained, "reserved")

    async def create_slot(self, target: ConnectionTarget, slot: str) -> bool:
        self.created.append(slot)
        self.slots[slot] = new_slot(slot)
        return True

    async def drop_slot(self, target: ConnectionTarget, slot: str) -> bool:
        self.dropped.append(slot)
        return self.slots.pop(slot, None) is not None

    def receiver(
        self, target: ConnectionTarget, slot: str, spool: Path, application_name: str, synchronous: bool
    ) -> FakeReceiver:
        made = FakeReceiver(target, slot, application_name, synchronous)
        self.receivers.append(made)
        return made

    async def upload_ready(self, spool: Path, archive: Archive) -> UploadResult:
        self.uploading.set()
        if self.gate is not None:
            await self.gate.wait()
        self._maybe_fail("upload_ready")
        return UploadResult(1, SEGMENT, self.archived_lsn, None)

    async def upload_partial(
        self, spool: Path, archive: Archive, previous: PartialUpload | None
    ) -> PartialUpload | None:
        return None

    async def take_base_backup(
        self, target: ConnectionTarget, archive: Archive, backup_id: str
    ) -> BaseBackupEntry:
        self.base_backups.append(backup_id)
        self._maybe_fail("take_base_backup")
        now = timestamps.now()
        return base_backup_entry(backup_id, self.archived_lsn or 0, now, 5 << 20)

    async def newest_base_backup(self, archive: Archive) -> BaseBackupEntry | None:
        self.catalog_reads += 1
        return self.catalog_newest

    async def recovery_window(self, archive: Archive) -> RecoveryWindow:
        return RecoveryWindow(*self.window)

    async def apply_retention(self, archive: Archive, keep_since: datetime) -> int:
        self.retention_runs += 1
        return 0

    @property
    def receiver_now(self) -> FakeReceiver:
        return self.receivers[-1]


class Daemon:
    """One archive's looks in one event loop (a base backup runs beside them, as in the operator)."""

    def __init__(self, kube: FakeKube, config: OperatorConfig, wal: FakeWal) -> None:
        self.kube, self.config, self.wal = kube, config, wal
        self.streams = Streams(wal)
        self.slots = OperationSlots()

    def run(self) -> WalArchiveRun:
        return WalArchiveRun(self.kube.object(ARCHIVES, NS, NAME), self.config, self.slots, self.streams)

    async def look(self) -> RetryLater | None:
        step = await self.run().reconcile()
        for _ in range(5):  # let a base backup started by this look finish
            await asyncio.sleep(0)
        return step

    def status(self) -> JsonDict:
        return self.kube.status(ARCHIVES, NS, NAME)

    def message(self, type_: str = "Ready") -> str:
        return str(next(c["message"] for c in self.status()["conditions"] if c["type"] == type_))

    @property
    def uid(self) -> str:
        return str(self.kube.object(ARCHIVES, NS, NAME)["metadata"]["uid"])


@pytest.fixture(autouse=True)
def no_series() -> None:
    """Each test starts without the archive's series (the registry is the process's)."""
    metrics.forget_archive(NS, NAME)


@pytest.fixture
def wal() -> FakeWal:
    return FakeWal()


@pytest.fixture
def daemon(fake_kube: FakeKube, config: OperatorConfig, wal: FakeWal) -> Daemon:
    fake_kube.put_secret(NS, DB_SECRET, {"uri": URI})
    fake_kube.add(ARCHIVES, archive_body())
    return Daemon(fake_kube, config, wal)


def play(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def archive_folder(config: OperatorConfig) -> Path:
    return config.backup_root / "wal" / NS / NAME


def gap_entries(config: OperatorConfig) -> list[JsonDict]:
    folder = archive_folder(config) / "gaps"
    return [
        json.loads(p.read_text()) for p in sorted(folder.glob("*.json")) if not p.name.endswith(".meta.json")
    ]


def put_segment(config: OperatorConfig, name: str) -> None:
    folder = archive_folder(config) / "wal"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(b"segment")


def gaps_counted(reason: str) -> float:
    return float(metrics.GAPS.labels(NS, NAME, reason)._value.get())


# ---------------------------------------------------------------- streaming


def test_the_first_look_creates_the_slot_streams_and_takes_the_first_base_backup(
    daemon: Daemon, wal: FakeWal, fake_kube: FakeKube, config: OperatorConfig
) -> None:
    async def scenario() -> None:
        assert await daemon.look() == Recheck(5.0)
        assert wal.created == [SLOT]
        receiver = wal.receiver_now
        assert (receiver.slot, receiver.application_name, receiver.synchronous) == (
            SLOT,
            f"habitat-walarchive-{NS}-{NAME}",
            False,
        )
        assert receiver.running
        assert len(wal.base_backups) == 1
        status = daemon.status()
        assert status["phase"] == "Pending"
        assert conditions(status)["Reconciling"] == ("True", "BaseBackupRunning")

        wal.window = (timestamps.now(), timestamps.now())
        assert await daemon.look() == Recheck(5.0)  # collects the base backup
        status = daemon.status()
        assert status["phase"] == "Ready"
        assert conditions(status)["Ready"] == ("True", "Streaming")
        assert conditions(status)["SlotOverBudget"] == ("False", "SlotRetentionWithinBudget")
        assert status["lastBaseBackup"]["name"] == wal.base_backups[0]
        assert status["lastBaseBackup"]["size"] == "5.0 MiB"
        assert (status["slot"], status["archivedLsn"], status["timeline"]) == (SLOT, "0/3000000", 1)
        assert status["recoveryWindow"]["from"] == "2024-06-01T10:00:00Z"
        assert wal.retention_runs == 1
        assert fake_kube.reasons(NAME) == ["BaseBackupSucceeded"]

        patches = len(fake_kube.patches)
        assert await daemon.look() == Recheck(5.0)
        assert len(fake_kube.patches) == patches  # nothing changed: no write
        assert len(wal.receivers) == 1 and len(wal.base_backups) == 1

    play(scenario)
    identity = json.loads((archive_folder(config) / "archive.json").read_text())
    assert identity["systemIdentifier"] == SYSTEM_ID and identity["segmentSize"] == SEGMENT
    assert "hunter2" not in json.dumps(fake_kube.status(ARCHIVES, NS, NAME))


def test_the_schedule_takes_the_next_base_backup(daemon: Daemon, wal: FakeWal, clock: Clock) -> None:
    async def scenario() -> None:
        await daemon.look()
        await daemon.look()
        assert len(wal.base_backups) == 1
        clock.advance(24 * 3600)  # past 02:00 of the next day (the default schedule)
        await daemon.look()
        assert len(wal.base_backups) == 2

    play(scenario)


def test_a_new_interval_or_budget_takes_effect_without_restarting_the_receiver(
    daemon: Daemon, wal: FakeWal, fake_kube: FakeKube
) -> None:
    async def scenario() -> None:
        await daemon.look()
        fake_kube.edit_spec(ARCHIVES, NS, NAME, partialUploadInterval="2s")
        assert await daemon.look() == Recheck(2.0)
        fake_kube.edit_spec(ARCHIVES, NS, NAME, slot={"maxRetainedWal": "8GiB", "onExceeded": "drop"})
        await daemon.look()
        assert len(wal.receivers) == 1 and wal.receiver_now.running
        fake_kube.edit_spec(ARCHIVES, NS, NAME, synchronous=True)
        await daemon.look()
        assert wal.receivers[0].stopped and wal.receiver_now.synchronous
        assert wal.dropped == []

    play(scenario)


def test_retention_waits_while_a_restore_reads_the_archive(
    daemon: Daemon, wal: FakeWal, fake_kube: FakeKube
) -> None:
    restore = restore_body(
        source={"pointInTime": {"walArchiveRef": {"name": NAME}, "target": {"latest": True}}}
    )
    fake_kube.add("restores", restore, validate=False)  # pointInTime is the Restore's own branch's field
    fake_kube.set_status("restores", NS, "restore", {"phase": "Running"})

    async def scenario() -> None:
        await daemon.look()
        await daemon.look()
        assert wal.retention_runs == 0
        fake_kube.set_status("restores", NS, "restore", {"phase": "Succeeded"})
        stream = daemon.streams.get(daemon.uid)
        assert stream is not None
        stream.retention_at = 0.0  # its next look at retention is due
        await daemon.look()
        assert wal.retention_runs == 1

    play(scenario)


def test_the_slot_name_cannot_change() -> None:
    old = WalArchiveSpec.model_validate(archive_body(slot={"name": "orders"})["spec"])
    with pytest.raises(ValueError, match=r"slot\.name cannot be changed"):
        WalArchiveSpec.model_validate(archive_body(slot={"name": "orders_2"})["spec"]).check_update(old)
    WalArchiveSpec.model_validate(
        archive_body(slot={"name": "orders", "onExceeded": "drop"})["spec"]
    ).check_update(old)


def test_a_base_backup_in_the_archive_counts_when_status_does_not_know_it(
    daemon: Daemon, wal: FakeWal, clock: Clock
) -> None:
    started = timestamps.now()
    wal.catalog_newest = base_backup_entry("20240601T100000Z", 0, started, 7 << 20)
    clock.advance(60)

    async def scenario() -> None:
        await daemon.look()
        await daemon.look()
        assert wal.base_backups == []  # the archive has one, newer than the schedule's last run
        assert daemon.status()["lastBaseBackup"]["name"] == "20240601T100000Z"
        assert daemon.status()["phase"] == "Ready"
        assert wal.catalog_reads == 1

    play(scenario)


# ---------------------------------------------------------------- failures, waits, invalid specs


def test_replication_refused_stalls_and_the_next_look_tries_again(
    daemon: Daemon, wal: FakeWal, fake_kube: FakeKube
) -> None:
    wal.fail["server_identity"] = PermanentError(
        Reason.AUTHENTICATION_FAILED, 'no pg_hba.conf entry for replication connection from host "10.0.0.7"'
    )

    async def scenario() -> None:
        assert await daemon.look() == RetryLater(30.0)
        status = daemon.status()
        assert status["phase"] == "Stalled"
        assert conditions(status)["Stalled"] == ("True", "AuthenticationFailed")
        assert "pg_hba.conf" in daemon.message("Stalled")
        assert wal.receivers == [] and wal.created == []
        assert fake_kube.reasons(NAME) == ["AuthenticationFailed"]

        assert await daemon.look() == Recheck(5.0)
        assert wal.receiver_now.running

    play(scenario)


def test_a_receiver_that_keeps_failing_stalls_with_its_error_and_no_credentials(
    daemon: Daemon, wal: FakeWal, fake_kube: FakeKube
) -> None:
    async def scenario() -> None:
        await daemon.look()
        wal.receiver_now.fail(f"could not connect to {URI}: FATAL: must be superuser or replication role")
        await daemon.look()
        status = daemon.status()
        assert status["phase"] == "Stalled"
        assert conditions(status)["Stalled"] == ("True", "ReplicationRefused")
        assert "replication role" in daemon.message() and "hunter2" not in daemon.message()
        await daemon.look()
        assert fake_kube.reasons(NAME).count("ReplicationRefused") == 1  # one Event, not one per look

    play(scenario)


def test_a_refused_receiver_restarts_with_a_rotated_secret(
    daemon: Daemon, wal: FakeWal, fake_kube: FakeKube
) -> None:
    async def scenario() -> None:
        await daemon.look()
        first = wal.receiver_now
        first.fail("FATAL: password authentication failed for user archiver")
        await daemon.look()
        assert len(wal.receivers) == 1  # the same Secret: the receiver's own backoff goes on
        fake_kube.put_secret(NS, DB_SECRET, {"uri": URI.replace("hunter2", "rotated")})
        await daemon.look()
        assert first.stopped and wal.receiver_now.running
        assert "rotated" in wal.receiver_now.target.conninfo()
        assert conditions(daemon.status())["Stalled"][0] == "False"

    play(scenario)


def test_an_error_mid_look_is_retried_at_the_next_look_without_restarting_the_receiver(
    daemon: Daemon, wal: FakeWal
) -> None:
    async def scenario() -> None:
        await daemon.look()
        await daemon.look()
        wal.fail["upload_ready"] = RetryableError(Reason.STORAGE_UNREACHABLE, "storage is unreachable")
        assert await daemon.look() == RetryLater(30.0)
        assert conditions(daemon.status())["Stalled"] == ("True", "StorageUnreachable")
        assert wal.receiver_now.running  # WAL keeps arriving in the spool meanwhile

        assert await daemon.look() == Recheck(5.0)
        assert conditions(daemon.status())["Ready"] == ("True", "Streaming")
        assert len(wal.receivers) == 1

    play(scenario)


def test_storage_that_refuses_the_keys_is_opened_again_at_the_next_look(daemon: Daemon, wal: FakeWal) -> None:
    async def scenario() -> None:
        await daemon.look()
        stream = daemon.streams.get(daemon.uid)
        assert stream is not None
        before = stream.archive
        wal.fail["upload_ready"] = PermanentError(
            Reason.STORAGE_AUTH_FAILED, "the bucket refused the access key"
        )
        assert await daemon.look() == RetryLater(30.0)
        assert conditions(daemon.status())["Stalled"] == ("True", "StorageAuthFailed")
        assert await daemon.look() == Recheck(5.0)  # the keys read again, the storage opened again
        assert stream.archive is not before
        assert len(wal.receivers) == 1 and wal.receiver_now.running  # streaming on meanwhile

    play(scenario)


def test_a_failed_base_backup_is_reported_and_retried_after_a_backoff(
    daemon: Daemon, wal: FakeWal, fake_kube: FakeKube
) -> None:
    wal.fail["take_base_backup"] = PermanentError(Reason.VERIFICATION_FAILED, "base/x.tar: checksum mismatch")

    async def scenario() -> None:
        await daemon.look()
        await daemon.look()
        status = daemon.status()
        assert (status["phase"], conditions(status)["Stalled"]) == ("Pending", ("True", "BaseBackupFailed"))
        assert "checksum mismatch; trying again in 60s" in daemon.message()
        assert "BaseBackupFailed" in fake_kube.reasons(NAME)
        assert metrics.BASE_BACKUPS.labels(NS, NAME, "failure")._value.get() == 1

        await daemon.look()
        assert len(wal.base_backups) == 1  # not before its backoff
        stream = daemon.streams.get(daemon.uid)
        assert stream is not None
        stream.base_backup_retry_at = 0.0  # the backoff has passed
        await daemon.look()
        await daemon.look()
        assert len(wal.base_backups) == 2
        assert daemon.status()["phase"] == "Ready"

    play(scenario)


def test_a_missing_secret_is_waited_for(daemon: Daemon, wal: FakeWal, fake_kube: FakeKube) -> None:
    del fake_kube.secrets[(NS, DB_SECRET)]

    async def scenario() -> None:
        assert await daemon.look() == RetryLater(30.0)
        status = daemon.status()
        assert status["phase"] == "Pending"
        assert conditions(status)["Stalled"] == ("True", "SecretNotFound")
        assert wal.receivers == []

        fake_kube.put_secret(NS, DB_SECRET, {"uri": URI})
        assert await daemon.look() == Recheck(5.0)

    play(scenario)


def test_an_archive_that_cannot_stream_after_a_restart_keeps_its_gauges_from_status(
    daemon: Daemon, fake_kube: FakeKube
) -> None:
    del fake_kube.secrets[(NS, DB_SECRET)]
    fake_kube.set_status(
        ARCHIVES,
        NS,
        NAME,
        {
            "lagBytes": 4096,
            "recoveryWindow": {"from": "2024-06-01T02:00:00Z", "to": "2024-06-01T09:59:00Z"},
            "lastBaseBackup": {"name": "x", "completedAt": "2024-06-01T02:10:00Z", "sizeBytes": 1024},
        },
    )

    async def scenario() -> None:
        assert await daemon.look() == RetryLater(30.0)

    play(scenario)
    assert metrics.LAG_BYTES.labels(NS, NAME)._value.get() == 4096
    assert (
        metrics.LAST_ARCHIVED_COMMIT.labels(NS, NAME)._value.get()
        == datetime(2024, 6, 1, 9, 59, tzinfo=UTC).timestamp()
    )
    assert (
        metrics.BASE_BACKUP_LAST_SUCCESS.labels(NS, NAME)._value.get()
        == datetime(2024, 6, 1, 2, 10, tzinfo=UTC).timestamp()
    )


def test_rbac_that_refuses_the_secret_stalls_naming_it(
    daemon: Daemon, wal: FakeWal, fake_kube: FakeKube
) -> None:
    fake_kube.forbid_secret(NS, DB_SECRET)

    async def scenario() -> None:
        assert await daemon.look() == RetryLater(30.0)
        assert conditions(daemon.status())["Stalled"] == ("True", "SecretForbidden")
        assert f"not allowed to read Secret {NS}/{DB_SECRET}" in daemon.message("Stalled")
        assert wal.receivers == []

    play(scenario)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"partialUploadInterval": "2h"}, "spec.partialUploadInterval"),
        ({"slot": {"maxRetainedWal": "1MiB"}}, "spec.slot.maxRetainedWal"),
        ({"slot": {"name": "Bad-Name"}}, "spec.slot.name"),
    ],
)
def test_an_invalid_spec_stalls_naming_the_field(
    fake_kube: FakeKube, config: OperatorConfig, wal: FakeWal, spec: JsonDict, field: str
) -> None:
    fake_kube.put_secret(NS, DB_SECRET, {"uri": URI})
    fake_kube.add(ARCHIVES, archive_body(**spec), validate=False)
    daemon = Daemon(fake_kube, config, wal)

    async def scenario() -> None:
        assert await daemon.look() == RetryLater(30.0)
        assert conditions(daemon.status())["Stalled"] == ("True", "InvalidSpec")
        assert field in daemon.message("Stalled")
        assert wal.receivers == []

    play(scenario)


# ---------------------------------------------------------------- gaps


def test_a_slot_missing_at_start_is_a_gap_and_a_base_backup_follows_at_once(
    daemon: Daemon, wal: FakeWal, fake_kube: FakeKube, config: OperatorConfig
) -> None:
    put_segment(config, "000000010000000000000002")  # the archive reaches 0/3000000
    fake_kube.set_status(
        ARCHIVES,
        NS,
        NAME,
        {"lastBaseBackup": {"name": "20240601T090000Z", "startedAt": "2024-06-01T09:00:00Z"}},
    )
    before = gaps_counted("SlotMissing")

    async def scenario() -> None:
        await daemon.look()
        assert wal.created == [SLOT]
        assert len(wal.base_backups) == 1  # at once, not at the schedule
        status = daemon.status()
        assert status["gaps"][0]["reason"] == "SlotMissing"
        assert status["gaps"][0]["fromLsn"] == "0/3000000"
        assert conditions(status)["Reconciling"] == ("True", "GapDetected")
        assert "GapDetected" in fake_kube.reasons(NAME)

        await daemon.look()  # the base backup after the gap: the window restarts
        assert conditions(daemon.status())["Ready"] == ("True", "Streaming")

    play(scenario)
    assert gaps_counted("SlotMissing") == before + 1
    [entry] = gap_entries(config)
    assert (entry["reason"], entry["fromLsn"], entry["toLsn"]) == ("SlotMissing", "0/3000000", None)


def test_a_slot_that_resumes_past_the_archive_and_the_spool_is_a_gap(
    daemon: Daemon, wal: FakeWal, config: OperatorConfig
) -> None:
    put_segment(config, "000000010000000000000002")  # reaches 0/3000000
    wal.slots[SLOT] = new_slot(SLOT)
    wal.archived_lsn = parse_lsn("0/5000100")  # the slot's restart_lsn: its segment starts at 0/5000000

    async def scenario() -> None:
        await daemon.look()
        assert wal.created == []
        assert daemon.status()["gaps"][0]["reason"] == "SegmentMissing"

    play(scenario)
    [entry] = gap_entries(config)
    assert (entry["fromLsn"], entry["toLsn"]) == ("0/3000000", "0/5000000")
    assert "persistent volume" in entry["message"]


def test_wal_still_in_the_spool_is_no_gap(daemon: Daemon, wal: FakeWal, config: OperatorConfig) -> None:
    put_segment(config, "000000010000000000000002")
    spool = config.backup_root / SPOOL_FOLDER / NS / daemon.uid
    spool.mkdir(parents=True)
    (spool / "000000010000000000000004").write_bytes(b"")  # reaches 0/5000000
    (spool / "000000010000000000000005.partial").write_bytes(b"")
    wal.slots[SLOT] = new_slot(SLOT)
    wal.archived_lsn = parse_lsn("0/5000100")

    async def scenario() -> None:
        await daemon.look()
        assert "gaps" not in daemon.status()

    play(scenario)
    assert gap_entries(config) == []


def test_a_slot_lost_before_any_wal_was_archived_is_a_gap_the_catalog_reads(
    daemon: Daemon, wal: FakeWal, config: OperatorConfig
) -> None:
    wal.archived_lsn = None  # nothing uploaded yet

    async def scenario() -> None:
        await daemon.look()
        wal.slots.clear()
        await daemon.look()
        [gap] = daemon.status()["gaps"]
        assert gap["reason"] == "SlotMissing" and gap["fromLsn"] == "0/0"  # everything before is lost

    play(scenario)
    [found] = catalog.gaps(FolderStore(config.backup_root / "wal" / NS), ArchiveLayout(NAME))
    assert (found.reason, found.from_lsn) == ("SlotMissing", 0)


def test_another_server_behind_the_same_uri_is_a_gap(
    daemon: Daemon, wal: FakeWal, config: OperatorConfig, clock: Clock
) -> None:
    async def scenario() -> None:
        await daemon.look()
        await daemon.look()
        await daemon.streams.close(daemon.uid)  # the operator restarts
        clock.advance(60)
        wal.identity = ServerIdentity("7400000000000000002", 150004, 1, SEGMENT)
        wal.slots.clear()
        put_segment(config, "000000010000000000000002")
        await daemon.look()
        [gap] = daemon.status()["gaps"]
        assert gap["reason"] == "SystemIdentifierChanged"
        assert len(wal.base_backups) == 2

    play(scenario)
    identity = json.loads((archive_folder(config) / "archive.json").read_text())
    assert identity["systemIdentifier"] == "7400000000000000002"
    assert [entry["reason"] for entry in gap_entries(config)] == ["SystemIdentifierChanged"]


def test_a_hole_between_archived_segments_is_a_gap_found_with_retention(
    daemon: Daemon, wal: FakeWal, config: OperatorConfig, clock: Clock
) -> None:
    put_segment(config, "000000010000000000000002")
    put_segment(config, "000000010000000000000005")  # 0/3000000 to 0/5000000 missing
    wal.slots[SLOT] = new_slot(SLOT)

    async def scenario() -> None:
        await daemon.look()
        assert "gaps" not in daemon.status()
        clock.advance(60)
        await daemon.look()  # the first base backup is in: retention, and the look for holes
        [gap] = daemon.status()["gaps"]
        assert (gap["reason"], gap["fromLsn"], gap["toLsn"]) == ("SegmentMissing", "0/3000000", "0/5000000")
        await daemon.look()  # a base backup at the next look
        assert len(wal.base_backups) == 2
        stream = daemon.streams.get(daemon.uid)
        assert stream is not None
        stream.retention_at = 0.0
        await daemon.look()  # found again: the gap entry accounts for it
        assert len(daemon.status()["gaps"]) == 1

    play(scenario)


# ---------------------------------------------------------------- the slot's budget


def test_a_slot_over_budget_raises_an_event_and_a_condition_once(
    daemon: Daemon, wal: FakeWal, fake_kube: FakeKube
) -> None:
    async def scenario() -> None:
        await daemon.look()
        await daemon.look()
        wal.retained = 5 << 30  # over the default 4GiB
        await daemon.look()
        await daemon.look()
        assert fake_kube.reasons(NAME).count("SlotRetentionExceeded") == 1
        assert conditions(daemon.status())["SlotOverBudget"] == ("True", "SlotRetentionExceeded")
        assert wal.dropped == []
        assert metrics.SLOT_RETAINED_BYTES.labels(NS, NAME)._value.get() == 5 << 30
        assert metrics.SLOT_MAX_RETAINED_BYTES.labels(NS, NAME)._value.get() == 4 << 30

    play(scenario)


def test_a_slot_over_budget_with_drop_is_dropped_as_a_gap_and_streaming_starts_again(
    fake_kube: FakeKube, config: OperatorConfig, wal: FakeWal, clock: Clock
) -> None:
    fake_kube.put_secret(NS, DB_SECRET, {"uri": URI})
    fake_kube.add(ARCHIVES, archive_body(slot={"maxRetainedWal": "1GiB", "onExceeded": "drop"}))
    daemon = Daemon(fake_kube, config, wal)

    async def scenario() -> None:
        await daemon.look()
        await daemon.look()
        first = wal.receiver_now
        clock.advance(60)
        wal.retained = 2 << 30
        await daemon.look()
        assert wal.dropped == [SLOT]
        assert wal.created == [SLOT, SLOT]
        assert first.stopped and wal.receiver_now is not first and wal.receiver_now.running
        assert daemon.status()["gaps"][0]["reason"] == "SlotDropped"
        assert len(wal.base_backups) == 2
        assert "dropping it (onExceeded: drop)" in fake_kube.events_for(NAME)[-2].message

    play(scenario)
    assert [entry["reason"] for entry in gap_entries(config)] == ["SlotDropped"]


def test_after_a_drop_the_receiver_starts_from_the_new_slot_not_from_the_spool(
    fake_kube: FakeKube, config: OperatorConfig, wal: FakeWal, clock: Clock
) -> None:
    """pg_receivewal resumes where its spool's newest segment ends, and only an empty spool makes it
    start at the slot: after a drop the spool holds WAL from before the gap that the server no
    longer keeps, so the spool goes with the slot (the gap says that WAL is lost anyway)."""
    fake_kube.put_secret(NS, DB_SECRET, {"uri": URI})
    fake_kube.add(ARCHIVES, archive_body(slot={"maxRetainedWal": "1GiB", "onExceeded": "drop"}))
    daemon = Daemon(fake_kube, config, wal)

    async def scenario() -> None:
        await daemon.look()
        spool = daemon.run().spool
        spool.mkdir(parents=True, exist_ok=True)
        stale = spool / "000000010000000000000005.partial"
        stale.write_bytes(b"WAL from before the gap")
        wal.retained = 2 << 30
        clock.advance(60)
        await daemon.look()
        assert wal.dropped == [SLOT] and wal.receiver_now.running
        assert not stale.exists()

    play(scenario)


def test_a_slot_made_again_after_a_drop_is_not_dropped_again_before_the_receiver_confirms(
    fake_kube: FakeKube, config: OperatorConfig, wal: FakeWal, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new slot holds WAL from the server's last checkpoint until pg_receivewal first confirms a
    position (every 10 s): over the budget for its first looks when much WAL came since that
    checkpoint. Dropping it then would be a second gap for nothing."""
    fake_kube.put_secret(NS, DB_SECRET, {"uri": URI})
    fake_kube.add(ARCHIVES, archive_body(slot={"maxRetainedWal": "1GiB", "onExceeded": "drop"}))
    daemon = Daemon(fake_kube, config, wal)

    async def scenario() -> None:
        await daemon.look()
        wal.retained = 2 << 30
        await daemon.look()
        await daemon.look()
        await daemon.look()
        assert wal.dropped == [SLOT] and len(daemon.status()["gaps"]) == 1
        assert "dropping it" not in fake_kube.events_for(NAME)[-1].message
        monkeypatch.setattr(run_module, "REDROP_GRACE_SECONDS", 0.0)  # the receiver never confirms
        await daemon.look()
        assert wal.dropped == [SLOT, SLOT]

    play(scenario)


# ---------------------------------------------------------------- suspend and the daemon's end


def test_suspend_stops_streaming_and_keeps_the_slot(
    daemon: Daemon, wal: FakeWal, fake_kube: FakeKube
) -> None:
    async def scenario() -> None:
        await daemon.look()
        fake_kube.edit_spec(ARCHIVES, NS, NAME, suspend=True)
        assert await daemon.look() == Recheck(3600.0)
        assert wal.receiver_now.stopped and wal.dropped == []
        status = daemon.status()
        assert status["phase"] == "Suspended"
        assert conditions(status)["Ready"] == ("False", "Suspended")

    play(scenario)


def body_of(raw: JsonDict) -> kopf.Body:
    return kopf.Body(raw)  # type: ignore[arg-type]  # Kopf's live view of a raw dict


def shared_with(config: OperatorConfig, streams: Streams) -> kopf.Memo:
    return kopf.Memo(shared=Shared(config, OperationSlots(), Wakeups(), streams))


def test_deleting_the_archive_mid_look_stops_the_receiver_and_drops_the_slot(
    daemon: Daemon, wal: FakeWal, fake_kube: FakeKube, config: OperatorConfig
) -> None:
    stopper: FlagSetter[Any] = FlagSetter()
    raw = fake_kube.object(ARCHIVES, NS, NAME)
    spool = config.backup_root / SPOOL_FOLDER / NS / daemon.uid

    async def scenario() -> None:
        await daemon.look()
        spool.mkdir(parents=True, exist_ok=True)
        wal.gate = asyncio.Event()  # the upload never ends
        wal.uploading.clear()
        memo = shared_with(config, daemon.streams)
        running = asyncio.create_task(
            stream_daemon(body=body_of(raw), memo=memo, stopped=stopper.async_waiter)
        )
        await wal.uploading.wait()
        stopper.set(reason=kopf.DaemonStoppingReason.RESOURCE_DELETED)
        async with asyncio.timeout(2):
            await running

    play(scenario)
    assert wal.receivers[0].stopped
    assert wal.dropped == [SLOT]
    assert not spool.exists()
    assert daemon.streams.get(daemon.uid) is None


def test_deleting_a_suspended_archive_still_drops_its_slot(
    fake_kube: FakeKube, config: OperatorConfig, wal: FakeWal
) -> None:
    fake_kube.put_secret(NS, DB_SECRET, {"uri": URI})
    raw = fake_kube.add(ARCHIVES, archive_body(suspend=True))
    stopper: FlagSetter[Any] = FlagSetter()

    async def scenario() -> None:
        stopper.set(reason=kopf.DaemonStoppingReason.RESOURCE_DELETED)
        await stream_daemon(
            body=body_of(raw), memo=shared_with(config, Streams(wal)), stopped=stopper.async_waiter
        )

    play(scenario)
    assert wal.dropped == [SLOT]


def test_deleting_an_archive_whose_secret_is_gone_still_lets_it_go(
    fake_kube: FakeKube, config: OperatorConfig, wal: FakeWal
) -> None:
    raw = fake_kube.add(ARCHIVES, archive_body(suspend=True))  # no Secret
    stopper: FlagSetter[Any] = FlagSetter()

    async def scenario() -> None:
        stopper.set(reason=kopf.DaemonStoppingReason.RESOURCE_DELETED)
        memo = shared_with(config, Streams(wal))
        async with asyncio.timeout(2):
            await stream_daemon(body=body_of(raw), memo=memo, stopped=stopper.async_waiter)

    play(scenario)  # the slot stays (logged, to drop by hand); the daemon ends, and so the finalizer
    assert wal.dropped == []


def test_the_operator_stopping_stops_the_receiver_and_keeps_the_slot(
    daemon: Daemon, wal: FakeWal, fake_kube: FakeKube, config: OperatorConfig
) -> None:
    stopper: FlagSetter[Any] = FlagSetter()
    raw = fake_kube.object(ARCHIVES, NS, NAME)

    async def scenario() -> None:
        memo = shared_with(config, daemon.streams)
        running = asyncio.create_task(
            stream_daemon(body=body_of(raw), memo=memo, stopped=stopper.async_waiter)
        )
        await wal.uploading.wait()
        await asyncio.sleep(0.05)
        stopper.set(reason=kopf.DaemonStoppingReason.OPERATOR_EXITING)
        async with asyncio.timeout(2):
            await running

    play(scenario)
    assert wal.receivers[0].stopped
    assert wal.dropped == []
    assert daemon.streams.get(daemon.uid) is None


def test_an_rpo_objective_is_measured_from_the_newest_archived_commit(
    daemon: Daemon, wal: FakeWal, fake_kube: FakeKube, clock: Clock
) -> None:
    fake_kube.edit_spec(ARCHIVES, NS, NAME, objectives={"rpo": "1m"})

    async def scenario() -> None:
        await daemon.look()  # nothing recoverable before the base backup: counts from creation
        assert conditions(daemon.status())["ObjectivesMet"] == ("True", "ObjectivesMet")
        commit = timestamps.now()
        wal.window = (commit, commit)
        wal.retained = 1 << 20  # WAL waits to be archived: what is lost is after the newest commit
        await daemon.look()
        assert daemon.status()["phase"] == "Ready"
        clock.advance(90)
        await daemon.look()
        status = daemon.status()
        assert conditions(status)["ObjectivesMet"] == ("False", "RPOExceeded")
        assert status["recoverability"]["recoveryPoint"] == timestamps.rfc3339(commit)
        assert status["recoverability"]["objectivesMet"] is False
        wal.retained = 0  # caught up: an idle server has nothing to lose
        await daemon.look()
        assert conditions(daemon.status())["ObjectivesMet"] == ("True", "ObjectivesMet")
        patches = len(fake_kube.patches)
        clock.advance(5)
        await daemon.look()
        assert len(fake_kube.patches) == patches  # a look every few seconds writes no figure alone

    play(scenario)
