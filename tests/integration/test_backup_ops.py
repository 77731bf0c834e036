"""The backup operations against a real PostgreSQL: dump, encrypt, verify, restore with plain pg_restore."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
import pytest
from psycopg import sql

from habitat_operator.engines.artifacts.crypto import MAGIC
from habitat_operator.engines.postgres.client_tools import classify_failure
from habitat_operator.engines.postgres.dump import (
    MANIFEST_NAME,
    BackupRequest,
    BackupResult,
    read_plaintext,
    run_backup,
    verify_artifact,
)
from habitat_operator.engines.postgres.uri import ConnectionTarget
from habitat_operator.errors import OperationError
from tests.integration.helpers import TABLES, database_uri, free_port, new_database, seeded_database, snapshot

pytestmark = pytest.mark.integration
__all__ = ["new_database", "seeded_database"]  # fixtures, imported to be used here

KEY = os.urandom(32)


# ---------------------------------------------------------------- fixtures and helpers


def with_login(uri: str, user: str, password: str) -> str:
    parts = urlsplit(uri)
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{parts.hostname}:{parts.port or 5432}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def restore(artifact: Path, uri: str, *extra: str) -> None:
    subprocess.run(
        ["pg_restore", "--exit-on-error", "--no-owner", f"--dbname={uri}", *extra, str(artifact)],
        check=True,
        capture_output=True,
    )


def toc_tables(artifact: Path) -> set[str]:
    """`schema.table` of every TABLE entry in the archive's table of contents."""
    listing = subprocess.run(
        ["pg_restore", "--list", str(artifact)], check=True, capture_output=True, text=True
    )
    tables = set()
    for line in listing.stdout.splitlines():
        fields = line.split()
        if not line.startswith(";") and len(fields) >= 6 and fields[3] == "TABLE" and fields[4] != "DATA":
            tables.add(f"{fields[4]}.{fields[5]}")
    return tables


def backup(uri: str, destination: Path, **options: object) -> BackupResult:
    request = BackupRequest(target=ConnectionTarget(uri), destination=destination, **options)  # type: ignore[arg-type]
    return asyncio.run(run_backup(request))


def failure(uri: str, destination: Path, **options: object) -> OperationError:
    with pytest.raises(OperationError) as caught:
        backup(uri, destination, **options)
    return caught.value


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def pg_dump_children() -> list[int]:
    """pids of pg_dump processes whose parent is this test process."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        command, _, rest = stat.partition(" (")[2].rpartition(")")
        parent = int(rest.split()[1])
        if parent == os.getpid() and command == "pg_dump":
            pids.append(int(entry.name))
    return pids


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def decrypt_to(artifact: Path, key: bytes, plain: Path) -> None:
    async def copy() -> None:
        with plain.open("wb") as out:
            async with aclosing(read_plaintext(artifact, key)) as chunks:
                async for chunk in chunks:
                    out.write(chunk)

    asyncio.run(copy())


def server_version(uri: str) -> str:
    with psycopg.connect(uri) as conn:
        row = conn.execute("SHOW server_version").fetchone()
        assert row is not None
        return str(row[0]).split()[0]


# ---------------------------------------------------------------- custom format


def test_custom_backup_restores_data_and_sequences(
    seeded_database: str, new_database: Callable[[], str], tmp_path: Path
) -> None:
    destination = tmp_path / "out" / "db.dump"
    result = backup(seeded_database, destination)

    assert result.uri == destination.resolve().as_uri()
    assert result.format == "custom"
    assert not result.encrypted
    assert result.verified
    assert result.size_bytes == destination.stat().st_size
    assert result.sha256 == sha256_of(destination)
    assert result.pg_version == server_version(seeded_database)
    assert destination.read_bytes().startswith(b"PGDMP")
    assert leftovers(destination.parent) == ["db.dump"]

    target = new_database()
    restore(destination, target)
    assert snapshot(target) == snapshot(seeded_database)


def test_backup_replaces_previous_artifact(seeded_database: str, tmp_path: Path) -> None:
    destination = tmp_path / "db.dump"
    destination.write_bytes(b"stale")
    result = backup(seeded_database, destination, verify=False)
    assert not result.verified
    assert destination.read_bytes().startswith(b"PGDMP")


def test_encrypted_backup(seeded_database: str, new_database: Callable[[], str], tmp_path: Path) -> None:
    destination = tmp_path / "db.dump.enc"
    result = backup(seeded_database, destination, encryption_key=KEY)

    assert result.encrypted and result.verified
    content = destination.read_bytes()
    assert not content.startswith(b"PGDMP")
    assert content.startswith(MAGIC)
    assert result.sha256 == hashlib.sha256(content).hexdigest()
    assert result.size_bytes == len(content)
    listing = subprocess.run(["pg_restore", "--list", str(destination)], capture_output=True, check=False)
    assert listing.returncode != 0

    plain = tmp_path / "db.dump"
    decrypt_to(destination, KEY, plain)
    assert plain.read_bytes().startswith(b"PGDMP")
    target = new_database()
    restore(plain, target)
    assert snapshot(target) == snapshot(seeded_database)

    asyncio.run(verify_artifact(destination, "custom", result.sha256, KEY))
    for wrong_key in (os.urandom(32), None):
        with pytest.raises(OperationError) as caught:
            asyncio.run(verify_artifact(destination, "custom", result.sha256, wrong_key))
        assert caught.value.reason == "DecryptionFailed"
    with pytest.raises(OperationError) as caught:
        decrypt_to(destination, os.urandom(32), tmp_path / "wrong.dump")
    assert caught.value.reason == "DecryptionFailed"


def test_encrypted_backup_of_large_table_streams_in_chunks(fresh_database: str, tmp_path: Path) -> None:
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        # Random text compresses badly, so the dump spans several 1 MiB encryption chunks.
        conn.execute(
            "CREATE TABLE blobs AS SELECT i, md5(random()::text) || md5(random()::text) AS v"
            " FROM generate_series(1, 100000) i"
        )
    destination = tmp_path / "big.dump.enc"
    result = backup(fresh_database, destination, encryption_key=KEY)
    assert result.size_bytes > 3 << 20
    plain = tmp_path / "big.dump"
    decrypt_to(destination, KEY, plain)
    assert "public.blobs" in toc_tables(plain)


# ---------------------------------------------------------------- directory format


def test_directory_backup_with_parallel_jobs_restores(
    seeded_database: str, new_database: Callable[[], str], tmp_path: Path
) -> None:
    destination = tmp_path / "db.dir"
    result = backup(seeded_database, destination, format="directory", jobs=2)

    assert result.format == "directory" and result.verified
    manifest = (destination / MANIFEST_NAME).read_bytes()
    assert result.sha256 == hashlib.sha256(manifest).hexdigest()
    files = sorted(p.name for p in destination.iterdir() if p.name != MANIFEST_NAME)
    assert [line.split()[1] for line in manifest.decode().splitlines()] == files
    assert result.size_bytes == sum(p.stat().st_size for p in destination.iterdir())
    subprocess.run(["sha256sum", "--check", "--quiet", MANIFEST_NAME], cwd=destination, check=True)
    assert leftovers(tmp_path) == ["db.dir"]

    target = new_database()
    restore(destination, target, "--jobs=2")
    assert snapshot(target) == snapshot(seeded_database)


def test_directory_format_refuses_encryption(seeded_database: str, tmp_path: Path) -> None:
    error = failure(seeded_database, tmp_path / "db.dir", format="directory", encryption_key=KEY)
    assert error.reason == "EncryptionUnsupported"
    assert not error.retryable


# ---------------------------------------------------------------- failures


@pytest.fixture
def login_role(pg_admin_uri: str, fresh_database: str) -> Iterator[tuple[str, str]]:
    """A role with a password and access to `fresh_database`; skips if the server ignores passwords."""
    role, password = f"r_{secrets.token_hex(4)}", f"pw-{secrets.token_hex(8)}"
    with psycopg.connect(pg_admin_uri, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), password))
    try:
        try:
            psycopg.connect(with_login(fresh_database, role, "not-" + password)).close()
        except psycopg.OperationalError:
            yield role, password
        else:
            pytest.skip("the server accepts wrong passwords over TCP (trust authentication)")
    finally:
        with psycopg.connect(pg_admin_uri, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_wrong_password(fresh_database: str, login_role: tuple[str, str], tmp_path: Path) -> None:
    role, password = login_role
    wrong = f"WrongPass-{secrets.token_hex(6)}"
    uri = with_login(fresh_database, role, wrong)
    error = failure(uri, tmp_path / "db.dump")
    assert error.reason == "AuthenticationFailed"
    assert error.retryable
    for text in (str(error), repr(error), error.message):
        assert wrong not in text and password not in text and uri not in text
        assert "\n" not in text
    assert leftovers(tmp_path) == []


def test_unknown_role(fresh_database: str, tmp_path: Path) -> None:
    error = failure(with_login(fresh_database, "no_such_role", "Secret-123"), tmp_path / "db.dump")
    assert error.reason == "AuthenticationFailed"
    assert "Secret-123" not in str(error)


def test_unreachable_port(tmp_path: Path) -> None:
    port = free_port()
    error = failure(f"postgresql://app:Hidden-Pass-42@127.0.0.1:{port}/db", tmp_path / "db.dump")
    assert error.reason == "DatabaseUnreachable"
    assert error.retryable
    assert "Hidden-Pass-42" not in str(error) and "Hidden-Pass-42" not in repr(error)
    assert f"127.0.0.1:{port}/db" in error.message
    assert leftovers(tmp_path) == []


def test_missing_database(pg_admin_uri: str, tmp_path: Path) -> None:
    error = failure(database_uri(pg_admin_uri, "no_such_database_here"), tmp_path / "db.dump")
    assert error.reason == "DatabaseNotFound"
    assert error.retryable


def test_pg_dump_connection_errors_are_classified(
    pg_admin_uri: str, fresh_database: str, login_role: tuple[str, str]
) -> None:
    """run_backup meets connection errors in its version query first; pg_dump's own wording too."""
    role, password = login_role
    cases = {
        "AuthenticationFailed": with_login(fresh_database, role, "Wrong-" + password),
        "DatabaseNotFound": database_uri(pg_admin_uri, "no_such_database_here"),
        "DatabaseUnreachable": f"postgresql://app:Wrong-{password}@127.0.0.1:{free_port()}/db",
    }
    for reason, uri in cases.items():
        target = ConnectionTarget(uri)
        dumped = subprocess.run(
            ["pg_dump", "--no-password"], env={**os.environ, **target.env()}, capture_output=True, text=True
        )
        assert dumped.returncode != 0
        error = classify_failure("pg_dump", dumped.stderr, target)
        assert (error.reason, error.retryable) == (reason, True), dumped.stderr
        assert password not in error.message and "\n" not in error.message


def test_pg_dump_failure_is_reported_in_one_line(seeded_database: str, tmp_path: Path) -> None:
    error = failure(seeded_database, tmp_path / "db.dump", include_tables=["no_such_table"])
    assert error.reason == "DumpFailed"
    assert not error.retryable
    assert "no matching tables" in error.message
    assert "\n" not in error.message
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------- timeout and cancellation


@pytest.fixture
def locked_database(seeded_database: str) -> Iterator[str]:
    """The seeded database with app.orders locked, so pg_dump blocks until the test ends."""
    with psycopg.connect(seeded_database) as conn:
        conn.execute("LOCK TABLE app.orders IN ACCESS EXCLUSIVE MODE")
        yield seeded_database
        conn.rollback()


def wait_for_blocked_dump(uri: str, count: int = 1) -> None:
    """Wait until `count` of our sessions (pg_dump's) wait on a lock in the database at `uri`."""
    deadline = time.monotonic() + 20
    with psycopg.connect(uri, autocommit=True) as conn:
        while time.monotonic() < deadline:
            blocked = conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE application_name = 'habitat-operator' AND wait_event_type = 'Lock'"
            ).fetchone()
            if blocked and blocked[0] >= count:
                return
            time.sleep(0.05)
    raise AssertionError(f"{count} pg_dump(s) never blocked on the lock")


def test_timeout_kills_pg_dump_and_leaves_nothing(locked_database: str, tmp_path: Path) -> None:
    started = time.monotonic()
    error = failure(locked_database, tmp_path / "db.dump", timeout=2.0)
    assert error.reason == "Timeout"
    assert error.retryable
    assert time.monotonic() - started < 15
    assert leftovers(tmp_path) == []
    assert pg_dump_children() == []


def test_cancellation_mid_dump_kills_pg_dump_and_leaves_nothing(locked_database: str, tmp_path: Path) -> None:
    request = BackupRequest(
        target=ConnectionTarget(locked_database), destination=tmp_path / "db.dir", format="directory", jobs=2
    )

    async def cancel_mid_dump() -> list[int]:
        task = asyncio.create_task(run_backup(request))
        await asyncio.to_thread(wait_for_blocked_dump, locked_database)
        running = pg_dump_children()
        assert running
        assert leftovers(tmp_path) != []  # the partial directory exists while dumping
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return running

    running = asyncio.run(cancel_mid_dump())
    assert leftovers(tmp_path) == []
    assert pg_dump_children() == []
    for pid in running:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_blocked_dumps_leave_the_default_executor_free(seeded_database: str, tmp_path: Path) -> None:
    """Dumps stuck on a lock hold engine threads, never the loop's default executor: the Kubernetes
    client's calls (here a stand-in) still run at once."""
    dumps, default_threads = 8, 4

    async def default_executor_answers_at_once() -> None:
        started = time.monotonic()
        assert await asyncio.wait_for(asyncio.to_thread(lambda: 1), timeout=10) == 1
        assert time.monotonic() - started < 1.0

    async def dump_while_locked(lock: psycopg.Connection[tuple[object, ...]]) -> list[BackupResult]:
        loop = asyncio.get_running_loop()
        # Fewer default threads than dumps, whatever the machine's CPU count.
        loop.set_default_executor(ThreadPoolExecutor(max_workers=default_threads))
        requests = [
            BackupRequest(target=ConnectionTarget(seeded_database), destination=tmp_path / f"db{i}.dump")
            for i in range(dumps)
        ]
        tasks = [asyncio.create_task(run_backup(request)) for request in requests]
        try:
            with ThreadPoolExecutor(max_workers=1) as watcher:
                # Enough blocked dumps to fill the default executor, were they using it.
                await loop.run_in_executor(watcher, wait_for_blocked_dump, seeded_database, default_threads)
                await default_executor_answers_at_once()

                await loop.run_in_executor(watcher, wait_for_blocked_dump, seeded_database, dumps)
            engine_threads = [t for t in threading.enumerate() if t.name.startswith("habitat-engine")]
            assert len(engine_threads) >= dumps  # one copying thread per blocked dump
            await default_executor_answers_at_once()

            lock.rollback()
            return await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    with psycopg.connect(seeded_database) as lock:
        lock.execute("LOCK TABLE app.orders IN ACCESS EXCLUSIVE MODE")
        results = asyncio.run(dump_while_locked(lock))
    assert all(result.verified for result in results)
    assert leftovers(tmp_path) == sorted(f"db{i}.dump" for i in range(dumps))
    assert pg_dump_children() == []


# ---------------------------------------------------------------- filters


def test_include_and_exclude_filters(seeded_database: str, tmp_path: Path) -> None:
    everything = backup(seeded_database, tmp_path / "all.dump")
    assert toc_tables(Path(urlsplit(everything.uri).path)) == set(TABLES)

    backup(seeded_database, tmp_path / "orders.dump", include_tables=["app.orders"])
    assert toc_tables(tmp_path / "orders.dump") == {"app.orders"}

    backup(seeded_database, tmp_path / "app.dump", include_schemas=["app"], exclude_tables=["app.orders"])
    assert toc_tables(tmp_path / "app.dump") == {"app.customers"}

    backup(seeded_database, tmp_path / "no-audit.dump", exclude_schemas=["audit"])
    assert toc_tables(tmp_path / "no-audit.dump") == {"app.customers", "app.orders"}

    backup(seeded_database, tmp_path / "wildcard.dump", include_tables=["app.*"])
    assert toc_tables(tmp_path / "wildcard.dump") == {"app.customers", "app.orders"}


# ---------------------------------------------------------------- verification


def flip_byte(path: Path, offset: int) -> None:
    with path.open("r+b") as file:
        file.seek(offset)
        byte = file.read(1)
        file.seek(offset)
        file.write(bytes([byte[0] ^ 0x01]))


def verification_error(path: Path, format: str, sha256: str | None, key: bytes | None) -> OperationError:
    with pytest.raises(OperationError) as caught:
        asyncio.run(verify_artifact(path, format, sha256, key))  # type: ignore[arg-type]
    return caught.value


def test_verify_catches_a_flipped_byte(seeded_database: str, tmp_path: Path) -> None:
    plain = backup(seeded_database, tmp_path / "db.dump")
    asyncio.run(verify_artifact(tmp_path / "db.dump", "custom", plain.sha256, None))
    flip_byte(tmp_path / "db.dump", plain.size_bytes // 2)
    assert (
        verification_error(tmp_path / "db.dump", "custom", plain.sha256, None).reason == "VerificationFailed"
    )

    encrypted = backup(seeded_database, tmp_path / "db.dump.enc", encryption_key=KEY)
    flip_byte(tmp_path / "db.dump.enc", encrypted.size_bytes // 2)
    error = verification_error(tmp_path / "db.dump.enc", "custom", encrypted.sha256, KEY)
    assert error.reason == "VerificationFailed"
    # Without a recorded checksum, authentication still catches it.
    assert verification_error(tmp_path / "db.dump.enc", "custom", None, KEY).reason == "DecryptionFailed"


def test_verify_catches_a_changed_directory(seeded_database: str, tmp_path: Path) -> None:
    result = backup(seeded_database, tmp_path / "db.dir", format="directory")
    asyncio.run(verify_artifact(tmp_path / "db.dir", "directory", result.sha256, None))
    data_file = max((tmp_path / "db.dir").glob("*.dat.gz"), key=lambda p: p.stat().st_size)
    flip_byte(data_file, data_file.stat().st_size // 2)
    error = verification_error(tmp_path / "db.dir", "directory", result.sha256, None)
    assert error.reason == "VerificationFailed"


def test_verify_rejects_a_non_archive(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dump"
    junk.write_bytes(b"not a dump at all")
    assert verification_error(junk, "custom", None, None).reason == "VerificationFailed"


def test_verify_reports_a_missing_artifact(tmp_path: Path) -> None:
    assert verification_error(tmp_path / "gone.dump", "custom", None, None).reason == "ArtifactNotFound"
