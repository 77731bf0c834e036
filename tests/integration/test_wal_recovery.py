"""`habitat-operator wal fetch` as a real PostgreSQL's restore_command: a base backup of the stack's
server (`pg_basebackup -X none`, so every WAL record comes from the archive), recovered by a private
server on its own socket until the archive ends, brings back the row committed last, which only the
archived `.partial` segment holds."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from dev_stack.common import as_user, chown_tree
from dev_stack.postgres import pg_bin
from habitat_operator.engines.artifacts.s3 import S3Location
from habitat_operator.engines.postgres.uri import ConnectionTarget
from habitat_operator.engines.wal.receiver import WalReceiver
from habitat_operator.engines.wal.store import BucketStore
from habitat_operator.engines.wal.uploader import PartialUpload, upload_partial, upload_ready
from tests.integration.helpers import free_port
from tests.integration.wal_helpers import (
    ARCHIVE,
    archive_location,
    archive_store,
    fetch_source,
    replication_uri,
    slot_name,
)

pytestmark = pytest.mark.integration
__all__ = ["archive_location", "archive_store", "replication_uri"]  # fixtures, imported to be used here

LAYOUT = ARCHIVE
KEY = os.urandom(32)


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A folder the private server's user can reach (pytest's tmp_path is root's alone)."""
    folder = Path(tempfile.mkdtemp(prefix="habitat-it-recovery-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def table(pg_admin_uri: str) -> Iterator[str]:
    name = f"t_recovered_{secrets.token_hex(4)}"
    yield name
    with psycopg.connect(pg_admin_uri, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))


def python_for_postgres() -> tuple[str, dict[str, str]]:
    """An interpreter the server's user can run, with this checkout importable: the venv's own
    interpreter may live in a folder only root reaches (pyenv under /root)."""
    import habitat_operator

    paths = [str(Path(habitat_operator.__file__).parents[1])]
    paths += [p for p in sys.path if p.endswith("site-packages")]
    return "/usr/bin/python3", {"PYTHONPATH": os.pathsep.join(paths)}


def insert(admin_uri: str, table: str, first: int, last: int, *, switch: bool) -> dt.datetime:
    """Commit rows first..last; the commit's time."""
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (n int)").format(sql.Identifier(table)))
        query = sql.SQL("INSERT INTO {} SELECT generate_series(%s::int, %s::int)").format(
            sql.Identifier(table)
        )
        conn.execute(query, (first, last))
        committed = conn.execute("SELECT now()").fetchone()
        if switch:
            conn.execute("SELECT pg_switch_wal()")
    assert committed is not None
    return committed[0]  # type: ignore[no-any-return]


def test_a_private_server_recovers_to_the_end_of_the_archive(
    pg_admin_uri: str,
    replication_uri: str,
    archive_location: S3Location,
    archive_store: BucketStore,
    scratch: Path,
    table: str,
) -> None:
    target = ConnectionTarget(replication_uri)
    spool, data, socket = scratch / "spool", scratch / "data", scratch / "run"
    receiver = WalReceiver(target, slot_name(), spool, "habitat-walarchive-it-recovery", create_slot=True)

    async def archive() -> None:
        await receiver.start()
        try:
            backup = await asyncio.create_subprocess_exec(
                "pg_basebackup", "-D", str(data), "-Fp", "-X", "none", "-c", "fast", "--no-sync",
                env={**os.environ, **target.env()},
            )  # fmt: skip
            assert await backup.wait() == 0
            await asyncio.to_thread(insert, pg_admin_uri, table, 1, 1000, switch=True)
            last = await asyncio.to_thread(insert, pg_admin_uri, table, 1001, 1001, switch=False)
            uploaded: PartialUpload | None = None
            deadline = asyncio.get_running_loop().time() + 60
            while not (uploaded and uploaded.last_commit_at and uploaded.last_commit_at >= last):
                assert asyncio.get_running_loop().time() < deadline, (
                    "the last commit never reached the archive"
                )
                await upload_ready(spool, archive_store, LAYOUT, KEY, zstd=True)
                uploaded = await upload_partial(
                    spool, archive_store, LAYOUT, KEY, zstd=True, previous=uploaded
                )
                await asyncio.sleep(0.2)
        finally:
            await receiver.stop()

    asyncio.run(archive())

    source = fetch_source(archive_location, KEY)
    python, python_env = python_for_postgres()
    (data / "recovery.signal").touch()
    with (data / "postgresql.auto.conf").open("a") as conf:
        conf.write(f'restore_command = \'{python} -m habitat_operator wal fetch "%f" "%p"\'\n')
        conf.write("recovery_target_action = 'promote'\n")
    socket.mkdir()
    chown_tree(scratch, "postgres")
    port = free_port()
    options = f"-p {port} -k {socket} -c listen_addresses='' -c fsync=off"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "HABITAT_WAL_"))}
    start = [
        pg_bin("pg_ctl"),
        "-D",
        str(data),
        "-o",
        options,
        "-l",
        str(scratch / "server.log"),
        "-w",
        "-t",
        "120",
    ]
    started = subprocess.run(
        as_user("postgres", [*start, "start"]), env=env | python_env | source.environment(), check=False
    )
    log = (scratch / "server.log").read_text(errors="replace") if (scratch / "server.log").exists() else ""
    try:
        assert started.returncode == 0, log[-3000:]
        with psycopg.connect(
            host=str(socket), port=port, user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            for _ in range(600):
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                if row is not None and not row[0]:
                    break
                conn.execute("SELECT pg_sleep(0.1)")
            query = sql.SQL("SELECT count(*), max(n) FROM {}").format(sql.Identifier(table))
            assert conn.execute(query).fetchone() == (1001, 1001)
        log = (scratch / "server.log").read_text(errors="replace")
        assert "restored log file" in log and "archive recovery complete" in log
        assert "invalid record length" in log  # it replayed the .partial segment up to its end
    finally:
        subprocess.run(as_user("postgres", [*start[:3], "-m", "immediate", "stop"]), check=False)
