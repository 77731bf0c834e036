"""The restore operations against a real PostgreSQL, on artifacts made by run_backup."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import stat
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from habitat_operator.api.restore import VerificationQuery
from habitat_operator.engines.postgres import restore
from habitat_operator.engines.postgres.dump import BackupRequest, BackupResult, run_backup
from habitat_operator.engines.postgres.restore import QueryOutcome, RestoreRequest, RestoreResult
from habitat_operator.engines.postgres.uri import ConnectionTarget
from habitat_operator.errors import OperationError

pytestmark = pytest.mark.integration

KEY = os.urandom(32)

SEED = """
CREATE SCHEMA app;
CREATE TYPE app.tier AS ENUM ('free', 'pro');
CREATE TABLE app.customers (id serial PRIMARY KEY, name text NOT NULL, tier app.tier NOT NULL);
CREATE TABLE app.orders (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id int NOT NULL REFERENCES app.customers,
    amount numeric(10, 2) NOT NULL
);
CREATE SEQUENCE app.invoice_numbers START 1000;
CREATE VIEW app.big_orders AS SELECT * FROM app.orders WHERE amount > 100;
CREATE FUNCTION app.total() RETURNS numeric LANGUAGE sql AS 'SELECT sum(amount) FROM app.orders';
INSERT INTO app.customers (name, tier)
    SELECT 'customer ' || i, (ARRAY['free', 'pro'])[1 + i % 2]::app.tier FROM generate_series(1, 50) i;
INSERT INTO app.orders (customer_id, amount) SELECT 1 + i % 50, i * 1.25 FROM generate_series(1, 200) i;
SELECT nextval('app.invoice_numbers') FROM generate_series(1, 7);
"""
TABLES = ("app.customers", "app.orders")
SEQUENCES = ("app.customers_id_seq", "app.orders_id_seq", "app.invoice_numbers")


# ---------------------------------------------------------------- fixtures and helpers


@pytest.fixture
def new_database(pg_admin_uri: str) -> Iterator[Callable[[], str]]:
    """Makes more empty databases (restore targets), dropped after the test."""
    admin = ConnectionTarget(pg_admin_uri)
    names: list[str] = []

    def make() -> str:
        name = f"t_{secrets.token_hex(6)}"
        names.append(name)
        asyncio.run(restore.create_database(admin.with_database(name)))
        return pg_admin_uri.rsplit("/", 1)[0] + f"/{name}"

    yield make
    for name in names:
        asyncio.run(restore.drop_database(admin.with_database(name)))


@pytest.fixture
def seeded_database(fresh_database: str) -> str:
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        conn.execute(SEED)
    return fresh_database


@pytest.fixture
def artifact(seeded_database: str, tmp_path: Path) -> BackupResult:
    """A custom-format backup of the seeded database."""
    return backup(seeded_database, tmp_path / "db.dump")


def backup(uri: str, destination: Path, **options: Any) -> BackupResult:
    return asyncio.run(
        run_backup(BackupRequest(target=ConnectionTarget(uri), destination=destination, **options))
    )


def path_of(result: BackupResult) -> Path:
    return Path(result.uri.removeprefix("file://"))


def run(uri: str, result: BackupResult, **options: Any) -> RestoreResult:
    request = RestoreRequest(
        target=ConnectionTarget(uri),
        artifact=path_of(result),
        format=result.format,
        expected_sha256=result.sha256,
        **options,
    )
    return asyncio.run(restore.run_restore(request))


def failure(uri: str, result: BackupResult, **options: Any) -> OperationError:
    with pytest.raises(OperationError) as caught:
        run(uri, result, **options)
    return caught.value


def check(result: BackupResult, key: bytes | None = None, sha256: str | None = None) -> str | None:
    return asyncio.run(restore.check_artifact(path_of(result), result.format, sha256 or result.sha256, key))


def check_failure(
    result: BackupResult, key: bytes | None = None, sha256: str | None = None
) -> OperationError:
    with pytest.raises(OperationError) as caught:
        check(result, key, sha256)
    return caught.value


def snapshot(uri: str) -> dict[str, object]:
    """Every row of the seeded tables, every sequence position, and what the view and function say."""
    with psycopg.connect(uri) as conn:
        state: dict[str, object] = {}
        for table in TABLES:
            query = sql.SQL("SELECT * FROM {} ORDER BY 1").format(sql.Identifier(*table.split(".")))
            state[table] = conn.execute(query).fetchall()
        for sequence in SEQUENCES:
            query = sql.SQL("SELECT last_value, is_called FROM {}").format(
                sql.Identifier(*sequence.split("."))
            )
            state[sequence] = conn.execute(query).fetchone()
        state["view"] = conn.execute("SELECT count(*) FROM app.big_orders").fetchone()
        state["function"] = conn.execute("SELECT app.total()").fetchone()
        return state


def execute(uri: str, statement: str) -> None:
    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute(statement)


def is_empty(uri: str) -> bool:
    return asyncio.run(restore.is_empty(ConnectionTarget(uri)))


def flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as file:
        file.seek(offset)
        byte = file.read(1)
        file.seek(offset)
        file.write(bytes([byte[0] ^ 0x01]))


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# ---------------------------------------------------------------- restoring


def test_restore_into_an_empty_database(
    seeded_database: str, artifact: BackupResult, new_database: Callable[[], str]
) -> None:
    target = new_database()
    assert is_empty(target)
    assert check(artifact) == artifact.sha256

    result = run(target, artifact)

    assert result.sha256 == artifact.sha256
    assert result.duration_seconds > 0
    assert snapshot(target) == snapshot(seeded_database)
    assert not is_empty(target)


def test_restore_without_clean_into_a_database_holding_the_objects_fails_and_changes_nothing(
    seeded_database: str, artifact: BackupResult
) -> None:
    execute(seeded_database, "DELETE FROM app.orders WHERE id > 100")
    before = snapshot(seeded_database)

    error = failure(seeded_database, artifact)

    assert error.reason == "RestoreFailed" and not error.retryable
    assert "already exists" in error.message and "\n" not in error.message
    assert snapshot(seeded_database) == before


def test_clean_restore_replaces_existing_objects(
    seeded_database: str, artifact: BackupResult, new_database: Callable[[], str]
) -> None:
    target = new_database()
    run(target, artifact)
    execute(target, "DELETE FROM app.orders WHERE id > 10; SELECT setval('app.invoice_numbers', 5000)")
    assert snapshot(target) != snapshot(seeded_database)

    run(target, artifact, clean=True)

    assert snapshot(target) == snapshot(seeded_database)


def test_failure_late_in_a_single_transaction_restore_leaves_the_target_as_it_was(
    pg_admin_uri: str, seeded_database: str, new_database: Callable[[], str], tmp_path: Path
) -> None:
    # Privileges are restored after the data: a GRANT to a role that no longer exists fails last.
    role = f"r_{secrets.token_hex(4)}"
    execute(pg_admin_uri, f"CREATE ROLE {role}")
    execute(seeded_database, f"GRANT SELECT ON app.orders TO {role}")
    result = backup(seeded_database, tmp_path / "db.dump")
    execute(seeded_database, f"DROP OWNED BY {role}")
    execute(pg_admin_uri, f"DROP ROLE {role}")

    target = new_database()
    error = failure(target, result)

    assert error.reason == "RestoreFailed" and not error.retryable
    assert f'role "{role}" does not exist' in error.message
    assert is_empty(target)


def test_parallel_restore_of_a_custom_artifact(
    seeded_database: str, artifact: BackupResult, new_database: Callable[[], str]
) -> None:
    target = new_database()
    run(target, artifact, jobs=2)
    assert snapshot(target) == snapshot(seeded_database)


def test_directory_artifact_with_parallel_jobs(
    seeded_database: str, new_database: Callable[[], str], tmp_path: Path
) -> None:
    result = backup(seeded_database, tmp_path / "db.dir", format="directory", jobs=2)
    assert check(result) == result.sha256

    target = new_database()
    run(target, result, jobs=2)
    assert snapshot(target) == snapshot(seeded_database)

    data_file = max((tmp_path / "db.dir").glob("*.dat.gz"), key=lambda p: p.stat().st_size)
    flip_byte(data_file, data_file.stat().st_size // 2)
    assert check_failure(result).reason == "ChecksumMismatch"


# ---------------------------------------------------------------- checking the artifact first


def test_corrupted_artifact_is_refused_before_the_target_is_touched(
    seeded_database: str, artifact: BackupResult, new_database: Callable[[], str]
) -> None:
    flip_byte(path_of(artifact), artifact.size_bytes // 2)

    error = check_failure(artifact)
    assert error.reason == "ChecksumMismatch" and not error.retryable

    target = new_database()
    execute(target, "CREATE TABLE keep (id int); INSERT INTO keep VALUES (1)")
    assert failure(target, artifact).reason == "ChecksumMismatch"
    with psycopg.connect(target) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'app'").fetchone() == (0,)
        assert conn.execute("SELECT * FROM keep").fetchall() == [(1,)]


def test_checksum_check_can_be_skipped(artifact: BackupResult) -> None:
    path = path_of(artifact)
    wrong = "0" * 64
    assert asyncio.run(restore.check_artifact(path, "custom", wrong, None, checksum=False)) is None
    assert check_failure(artifact, sha256=wrong).reason == "ChecksumMismatch"


def test_missing_artifact(artifact: BackupResult, tmp_path: Path) -> None:
    for path, format in ((tmp_path / "gone.dump", "custom"), (path_of(artifact), "directory")):
        with pytest.raises(OperationError) as caught:
            asyncio.run(restore.check_artifact(path, format, None, None))  # type: ignore[arg-type]
        assert caught.value.reason == "ArtifactNotFound"


def test_unreadable_artifact(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dump"
    junk.write_bytes(b"not a dump at all")
    with pytest.raises(OperationError) as caught:
        asyncio.run(restore.check_artifact(junk, "custom", None, None))
    assert caught.value.reason == "VerificationFailed"


# ---------------------------------------------------------------- encryption


def test_encrypted_round_trip_streamed_and_parallel(
    seeded_database: str, new_database: Callable[[], str], tmp_path: Path
) -> None:
    result = backup(seeded_database, tmp_path / "db.dump.enc", encryption_key=KEY)
    assert check(result, KEY) == result.sha256

    for jobs in (1, 2):
        target = new_database()
        run(target, result, encryption_key=KEY, jobs=jobs)
        assert snapshot(target) == snapshot(seeded_database)
        assert listing(tmp_path) == ["db.dump.enc"]  # the parallel restore's plaintext copy is gone


def wait_for_blocked_restore(uri: str) -> None:
    """Wait until one of our sessions (pg_restore's) waits on a lock in the database at `uri`."""
    deadline = time.monotonic() + 20
    with psycopg.connect(uri, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE application_name = 'habitat-operator' AND wait_event_type = 'Lock'"
            ).fetchone()
            if row and row[0]:
                return
            time.sleep(0.05)
    raise AssertionError("pg_restore never blocked on the lock")


def test_parallel_restore_decrypts_into_a_private_scratch_folder_only(
    seeded_database: str, new_database: Callable[[], str], tmp_path: Path
) -> None:
    """The plaintext copy never lands beside the artifact, and its folder goes on every path."""
    store, scratch = tmp_path / "store", tmp_path / "scratch"
    scratch.mkdir()
    result = backup(seeded_database, store / "db.dump.enc", encryption_key=KEY)
    target = new_database()
    run(target, result, encryption_key=KEY, jobs=2, scratch_dir=scratch)  # success
    assert listing(store) == ["db.dump.enc"] and listing(scratch) == []

    request = RestoreRequest(
        target=ConnectionTarget(target),
        artifact=path_of(result),
        encryption_key=KEY,
        jobs=2,
        clean=True,
        scratch_dir=scratch,
    )

    async def cancel_mid_restore() -> None:
        task = asyncio.create_task(restore.run_restore(request))
        await asyncio.to_thread(wait_for_blocked_restore, target)
        assert listing(store) == ["db.dump.enc"]
        [folder] = scratch.iterdir()
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        [plaintext] = folder.iterdir()
        assert stat.S_IMODE(plaintext.stat().st_mode) == 0o600
        assert plaintext.read_bytes().startswith(b"PGDMP")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with psycopg.connect(target) as blocker:
        # The clean drops invoice_numbers after the view and the tables: this read stalls it.
        blocker.execute("SELECT last_value FROM app.invoice_numbers")
        asyncio.run(cancel_mid_restore())  # cancellation
        blocker.rollback()
    assert listing(store) == ["db.dump.enc"] and listing(scratch) == []

    tampered = store / "tampered.dump.enc"
    tampered.write_bytes(path_of(result).read_bytes())
    flip_byte(tampered, tampered.stat().st_size - 20)
    bad = RestoreRequest(
        target=ConnectionTarget(new_database()),
        artifact=tampered,
        encryption_key=KEY,
        check_checksum=False,
        jobs=2,
        scratch_dir=scratch,
    )
    with pytest.raises(OperationError) as caught:  # error midway through decrypting
        asyncio.run(restore.run_restore(bad))
    assert caught.value.reason == "DecryptionFailed"
    assert listing(store) == ["db.dump.enc", "tampered.dump.enc"] and listing(scratch) == []


class CallerRecordingExecutor(ThreadPoolExecutor):
    """A default executor that notes which habitat_operator module each submission came from."""

    def __init__(self) -> None:
        super().__init__(max_workers=4)
        self.callers: set[str] = set()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        ours = [
            frame.filename for frame in traceback.extract_stack() if "/habitat_operator/" in frame.filename
        ]
        if ours:
            self.callers.add(ours[-1].rsplit("/habitat_operator/", 1)[1])
        return super().submit(fn, *args, **kwargs)


def test_backup_check_and_restores_keep_off_the_default_executor(
    seeded_database: str, new_database: Callable[[], str], tmp_path: Path
) -> None:
    """The engines' blocking work runs in their own pool on every path (encrypted, streamed,
    parallel); the Kubernetes client keeps the default executor. store.py's AtomicFile async
    enter/exit (brief) is the one exception left."""
    executor = CallerRecordingExecutor()
    source = ConnectionTarget(seeded_database)
    backups = [
        BackupRequest(source, tmp_path / "db.dump"),
        BackupRequest(source, tmp_path / "db.dump.enc", encryption_key=KEY),
        BackupRequest(source, tmp_path / "db.dir", "directory", jobs=2),
    ]
    targets = [new_database() for _ in range(2 * len(backups))]

    async def back_up_check_and_restore() -> None:
        asyncio.get_running_loop().set_default_executor(executor)
        for request in backups:
            key = request.encryption_key
            result = await run_backup(request)
            await restore.check_artifact(path_of(result), result.format, result.sha256, key)
            for jobs in (1, 2):
                target = ConnectionTarget(targets.pop())
                await restore.run_restore(
                    RestoreRequest(target, path_of(result), result.format, encryption_key=key, jobs=jobs)
                )

    asyncio.run(back_up_check_and_restore())
    assert executor.callers <= {"engines/artifacts/store.py"}


def test_wrong_or_missing_key(seeded_database: str, new_database: Callable[[], str], tmp_path: Path) -> None:
    result = backup(seeded_database, tmp_path / "db.dump.enc", encryption_key=KEY)
    for key in (os.urandom(32), None):
        error = check_failure(result, key)
        assert error.reason == "DecryptionFailed" and not error.retryable
    target = new_database()
    assert failure(target, result, encryption_key=os.urandom(32)).reason == "DecryptionFailed"
    assert is_empty(target)


# ---------------------------------------------------------------- connection failures and timeout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_target_is_retryable_and_redacted(artifact: BackupResult) -> None:
    uri = f"postgresql://app:Hidden-Pass-42@127.0.0.1:{free_port()}/db"
    for attempt in (
        lambda: run(uri, artifact),
        lambda: asyncio.run(restore.database_exists(ConnectionTarget(uri))),
        lambda: asyncio.run(restore.is_empty(ConnectionTarget(uri))),
        lambda: asyncio.run(
            restore.run_verification_queries(ConnectionTarget(uri), [query("x", "SELECT 1", min=1)])
        ),
    ):
        with pytest.raises(OperationError) as caught:
            attempt()
        assert caught.value.reason == "DatabaseUnreachable" and caught.value.retryable
        assert "Hidden-Pass-42" not in caught.value.message


def test_timeout_kills_pg_restore_and_rolls_back(
    seeded_database: str, artifact: BackupResult, new_database: Callable[[], str]
) -> None:
    target = new_database()
    run(target, artifact)
    execute(target, "DELETE FROM app.orders WHERE id > 10")
    before = snapshot(target)
    with psycopg.connect(target) as blocker:
        # The clean drops invoice_numbers after the view and the tables: this read stalls it midway.
        blocker.execute("SELECT last_value FROM app.invoice_numbers")
        started = time.monotonic()
        error = failure(target, artifact, clean=True, timeout=2.0)
        assert error.reason == "Timeout"
        assert time.monotonic() - started < 15
        blocker.rollback()
    assert snapshot(target) == before


# ---------------------------------------------------------------- databases


def test_create_and_drop_database(pg_admin_uri: str) -> None:
    target = ConnectionTarget(pg_admin_uri).with_database(f"t_{secrets.token_hex(6)}")
    assert not asyncio.run(restore.database_exists(target))
    asyncio.run(restore.create_database(target))
    try:
        assert asyncio.run(restore.database_exists(target))
        assert asyncio.run(restore.is_empty(target))
        with pytest.raises(OperationError) as caught:
            asyncio.run(restore.create_database(target))
        assert caught.value.reason == "CreateDatabaseFailed" and "already exists" in caught.value.message
        with psycopg.connect(target.conninfo()):  # an open session does not stop the drop
            asyncio.run(restore.drop_database(target))
        assert not asyncio.run(restore.database_exists(target))
    finally:
        asyncio.run(restore.drop_database(target))


def test_system_databases_are_never_dropped(pg_admin_uri: str) -> None:
    for name in ("postgres", "template1"):
        with pytest.raises(OperationError) as caught:
            asyncio.run(restore.drop_database(ConnectionTarget(pg_admin_uri).with_database(name)))
        assert caught.value.reason == "InvalidRequest"


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE TABLE t (id int)",
        "CREATE VIEW v AS SELECT 1 AS one",
        "CREATE SEQUENCE s",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "CREATE TYPE mood AS ENUM ('ok')",
        "CREATE DOMAIN positive AS int CHECK (VALUE > 0)",
        "CREATE TYPE pair AS (a int, b int)",
        "CREATE SCHEMA other; CREATE TABLE other.t (id int)",
    ],
)
def test_is_empty_sees_user_objects(fresh_database: str, statement: str) -> None:
    assert is_empty(fresh_database)
    execute(fresh_database, statement)
    assert not is_empty(fresh_database)


def test_is_empty_ignores_empty_schemas_and_extensions(fresh_database: str) -> None:
    execute(fresh_database, "CREATE SCHEMA nothing_here; CREATE EXTENSION IF NOT EXISTS plpgsql")
    assert is_empty(fresh_database)


# ---------------------------------------------------------------- verification queries


def query(name: str, text: str, **expect: Any) -> VerificationQuery:
    return VerificationQuery.model_validate({"name": name, "sql": text, "expect": expect})


def verify(uri: str, *queries: VerificationQuery, timeout: float = 60.0) -> dict[str, QueryOutcome]:
    outcomes = asyncio.run(
        restore.run_verification_queries(ConnectionTarget(uri), queries, statement_timeout=timeout)
    )
    assert [o.name for o in outcomes] == [q.name for q in queries]
    return {o.name: o for o in outcomes}


def test_verification_queries(seeded_database: str) -> None:
    outcomes = verify(
        seeded_database,
        query("orders", "SELECT count(*) FROM app.orders", min=200, max=200),
        query("total", "SELECT app.total()", equals="25125.00"),
        query("tier", "SELECT tier FROM app.customers WHERE id = 1", equals="pro"),
        query("flag", "SELECT count(*) > 0 FROM app.orders", equals="t"),
        query("too-few", "SELECT count(*) FROM app.customers", min=51),
        query("too-many", "SELECT count(*) FROM app.customers", max=49),
        query("wrong-text", "SELECT 'abc'", equals="abd"),
        query("not-a-number", "SELECT 'abc'", min=1),
        query("null", "SELECT NULL::int", min=0),
        query("rows", "SELECT id FROM app.customers", min=0),
        query("columns", "SELECT 1, 2", min=0),
        query("no-table", "SELECT count(*) FROM app.missing", min=0),
        query("percent", "SELECT count(*) FROM app.customers WHERE name LIKE 'customer 1%'", equals="11"),
    )
    assert {name for name, o in outcomes.items() if o.passed} == {
        "orders",
        "total",
        "tier",
        "flag",
        "percent",
    }
    assert outcomes["orders"] == QueryOutcome("orders", True, "200", None)
    assert outcomes["too-few"].value == "50" and "less than the minimum 51" in str(
        outcomes["too-few"].message
    )
    assert "more than the maximum 49" in str(outcomes["too-many"].message)
    assert outcomes["wrong-text"].message == "expected 'abd', got 'abc'"
    assert "expected a number" in str(outcomes["not-a-number"].message)
    assert outcomes["null"].message == "the query returned NULL"
    assert "got 50 row(s) of 1 column(s)" in str(outcomes["rows"].message)
    assert "got 1 row(s) of 2 column(s)" in str(outcomes["columns"].message)
    assert outcomes["no-table"].message == 'relation "app.missing" does not exist'


def test_verification_queries_cannot_write_or_run_long(seeded_database: str) -> None:
    outcomes = verify(
        seeded_database,
        query("delete", "DELETE FROM app.orders RETURNING 1", min=0),
        query("escape", "COMMIT; DELETE FROM app.orders", min=0),
        query("slow", "SELECT pg_sleep(5)", equals=""),
        query("after", "SELECT count(*) FROM app.orders", equals="200"),
        timeout=0.5,
    )
    assert "read-only transaction" in str(outcomes["delete"].message)
    assert "multiple commands" in str(outcomes["escape"].message)
    assert "statement timeout" in str(outcomes["slow"].message)
    assert outcomes["after"].passed


def test_no_verification_queries() -> None:
    assert (
        asyncio.run(restore.run_verification_queries(ConnectionTarget("postgresql://x@127.0.0.1:1/db"), []))
        == []
    )


# ---------------------------------------------------------------- targets


def test_with_database_keeps_server_and_credentials() -> None:
    uri = "postgresql://app:S3cret%2Fpw@db.example:6432/habitat?sslmode=require"
    target = ConnectionTarget(uri)
    other = target.with_database("scratch")
    assert other.display == "db.example:6432/scratch" and target.display == "db.example:6432/habitat"
    assert other.env() == {**target.env(), "PGDATABASE": "scratch"}
    assert other.redact(f"failed: {uri} S3cret/pw S3cret%2Fpw") == "failed: *** *** ***"
    assert "S3cret" not in repr(other)
