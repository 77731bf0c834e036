"""A private PostgreSQL server that recovers a base backup to a point in time, and a pg_dump of one
of its databases: what a point-in-time Restore moves into its target.

`recovered_dump` works in one private scratch folder (0700, removed on success, failure and
cancellation, and swept at start-up after a crash, like every restore's scratch folder):

1. the base backup's tar is read through the codec (checked against its SHA-256) into `data/`;
2. the WAL of the recovery plan (`catalog.plan_recovery`: history files and every segment from the
   base backup to the target) is fetched with `wal fetch`'s own `fetch` (checksums, a segment's
   `.partial` when it is not archived whole) into `wal/`; the server's `restore_command` only copies
   from there, so it needs no credentials, no network and no Python of the operator's (which a
   server run as another user could not execute);
3. the configuration is the operator's, not the copied server's (no archive_command, no extensions
   to preload, no TCP): `listen_addresses = ''`, a socket in the scratch folder, `trust` for that
   socket alone, `recovery.signal` with `recovery_target_*`, `recovery_target_timeline = latest`
   and `recovery_target_action = promote`;
4. the server runs in its own process group, dies with the operator (PDEATHSIG), and as the user
   `postgres` (else `nobody`) when the operator is root, since PostgreSQL refuses root;
5. recovery ends in a promotion, or the server stops: a target past the end of the archive ends
   with PostgreSQL's own "recovery ended before configured recovery target was reached", reported
   as "the archive ends at <LSN> (last commit at <time>)", never as a smaller restore;
6. pg_dump of the requested database into the scratch folder; the server is killed before the
   caller reads the dump.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import grp
import os
import pwd
import re
import shlex
import signal
import stat
import tarfile
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, cast
from urllib.parse import quote

import psycopg

from habitat_operator import timestamps
from habitat_operator.api.common import Reason
from habitat_operator.api.restore import RestoreReason
from habitat_operator.api.wal import WalReason
from habitat_operator.engines.artifacts.codec import PlaintextReader
from habitat_operator.engines.artifacts.store import SCRATCH_FOLDER_PREFIX, disk_errors, scratch_folder
from habitat_operator.engines.artifacts.tarball import PlaintextStream, stream_members
from habitat_operator.engines.postgres.amcheck import check_database
from habitat_operator.engines.postgres.client_tools import ClientTool, classify_failure, meaningful_line
from habitat_operator.engines.postgres.uri import ConnectionTarget
from habitat_operator.engines.threads import in_stoppable_thread, in_thread
from habitat_operator.engines.wal.catalog import RecoveryPlan, RecoveryTarget
from habitat_operator.engines.wal.fetch import fetch
from habitat_operator.engines.wal.layout import PARTIAL_SUFFIX, ArchiveLayout, format_lsn
from habitat_operator.engines.wal.store import ObjectStore
from habitat_operator.errors import OperationError, PermanentError, RetryableError

SERVER_ROOT = Path("/usr/lib/postgresql")  # <major>/bin/postgres, as Debian and the image install them
SERVER_USERS = ("postgres", "nobody")  # the first that exists runs the server when the operator is root
SOCKET_PORT = 5432  # names the socket file; the socket folder is private, so no other server clashes
SUPERUSER = "postgres"
POLL_SECONDS = 0.2
COPY_SIZE = 1 << 20
MAX_PRINTED_BYTES = 64 << 10
_REDO_DONE = re.compile(r"redo done at ([0-9A-F]+/[0-9A-F]+)")
_LAST_COMMIT = re.compile(r"last completed transaction was at log time ([0-9: .+-]+)")
_NOT_REACHED = "recovery ended before configured recovery target was reached"
# A connection refused for good: anything else means not yet (replaying with hot_standby off) or no
# longer (stopping, in which case its exit, next time round, says why).
_REFUSED = ("does not exist", "authentication", "no pg_hba.conf entry")


def target_settings(target: RecoveryTarget) -> dict[str, str]:
    """The recovery_target_* settings of `target`; none for the archive's end (`latest`)."""
    if target.time is not None:
        chosen = {"recovery_target_time": target.time.astimezone(dt.UTC).isoformat(sep=" ")}
    elif target.lsn is not None:
        chosen = {"recovery_target_lsn": format_lsn(target.lsn)}
    elif target.restore_point is not None:
        return {"recovery_target_name": target.restore_point}
    else:
        return {}
    return chosen | {"recovery_target_inclusive": "on" if target.inclusive else "off"}


@dataclass(frozen=True)
class RecoveryRequest:
    store: ObjectStore = field(repr=False)
    layout: ArchiveLayout
    plan: RecoveryPlan  # the base backup and WAL to read, and the target
    database: str
    encryption_key: bytes | None = field(default=None, repr=False)
    scratch_dir: Path | None = None
    server_root: Path = SERVER_ROOT
    amcheck: bool = False  # pg_amcheck the recovered copy, the physical one, before dumping it


@dataclass(frozen=True)
class RecoveredPoint:
    """Where the recovered copy stands: the last WAL record replayed and the last commit's time."""

    lsn: str | None
    time: dt.datetime | None


@dataclass(frozen=True)
class RecoveredDump:
    path: Path  # a custom-format pg_dump of the requested database
    point: RecoveredPoint
    recovery_seconds: float  # from the first byte read to the dump written: the time to recover


def server_majors(server_root: Path = SERVER_ROOT) -> list[int]:
    """The PostgreSQL majors whose server this operator can run."""
    found = (path.parent.parent.name for path in server_root.glob("*/bin/postgres"))
    return sorted(int(name) for name in found if name.isdigit())


def server_binary(major: int, server_root: Path = SERVER_ROOT) -> Path:
    """The `postgres` of `major`; PermanentError ServerVersionUnsupported when not installed."""
    binary = server_root / str(major) / "bin" / "postgres"
    if binary.is_file():
        return binary
    installed = ", ".join(map(str, server_majors(server_root))) or "none"
    raise PermanentError(
        RestoreReason.SERVER_VERSION_UNSUPPORTED,
        f"the base backup is of PostgreSQL {major}; this operator runs PostgreSQL servers {installed}"
        f" (under {server_root})",
    )


@asynccontextmanager
async def recovered_dump(request: RecoveryRequest) -> AsyncIterator[RecoveredDump]:
    """The requested database of the base backup recovered to the target, as a dump in a scratch
    folder that is removed on leaving. Raises OperationError (see the module's docstring)."""
    binary = server_binary(request.plan.base_backup.major, request.server_root)
    owner = server_user()
    started = time.monotonic()
    async with scratch_folder(request.scratch_dir, SCRATCH_FOLDER_PREFIX) as folder:
        if owner is not None:
            await in_thread(_check_reachable, folder, owner)
        data, wal, socket = folder / "data", folder / "wal", folder / "socket"
        await in_stoppable_thread(partial(_extract_base_backup, request, data))
        await in_stoppable_thread(partial(_fetch_wal, request, wal))
        await in_thread(_configure, data, wal, socket, request.plan.target)
        if owner is not None:
            await in_thread(_chown_tree, folder, owner)
        argv, dump = [str(binary), "-D", str(data)], folder / "database.dump"
        async with ClientTool.start(argv, None, user=owner) as server:
            point = await _await_promotion(server, socket, request.plan.target, SUPERUSER)
            if point is not None:
                await _dump(_socket_target(socket, request.database, SUPERUSER), dump, request.amcheck)
            else:  # promoted, but the copy has no role "postgres": stop it and ask for its superuser
                os.kill(server.process.pid, signal.SIGINT)  # a fast shutdown
                point = _point_in(await server.output())
        if not dump.exists():
            role = await _bootstrap_superuser(binary, data, owner)
            async with ClientTool.start(argv, None, user=owner) as server:
                await _await_promotion(server, socket, request.plan.target, role)
                await _dump(_socket_target(socket, request.database, role), dump, request.amcheck)
        yield RecoveredDump(dump, point, time.monotonic() - started)


def server_user() -> int | None:
    """The uid the server runs as: None (the operator's own) unless the operator is root."""
    if os.geteuid() != 0:
        return None
    for name in SERVER_USERS:
        try:
            return pwd.getpwnam(name).pw_uid
        except KeyError:
            continue
    raise PermanentError(
        Reason.TOOL_MISSING, "the operator runs as root and there is no postgres or nobody user"
    )


# ---------------------------------------------------------------- the scratch copy


def _extract_base_backup(request: RecoveryRequest, data: Path, stop: threading.Event) -> None:
    """The base backup's tar, through the codec, into `data` (created 0700): plain files and folders
    only, nothing outside `data`; then its SHA-256, which must match the entry's."""
    backup = request.plan.base_backup
    key = request.layout.base_backup(backup.id)
    data.mkdir(mode=0o700)
    reader = PlaintextReader(request.store.open(key), request.encryption_key)
    try:
        source = cast("IO[bytes]", PlaintextStream(reader, stop))  # stream mode only reads: no seek, no tell
        with tarfile.open(fileobj=source, mode="r|", bufsize=COPY_SIZE) as tar:
            for member in stream_members(tar):
                if not (member.isfile() or member.isdir()):
                    raise _corrupt(key, f"unexpected entry {member.name!r}")
                with disk_errors(data):
                    tar.extract(member, data, filter="data")
        reader.drain()
    except (tarfile.TarError, EOFError) as error:
        raise _corrupt(key, str(error) or type(error).__name__) from None
    finally:
        reader.close()
    if reader.sha256.hexdigest() != backup.sha256:
        raise PermanentError(
            Reason.CHECKSUM_MISMATCH, f"{request.store.uri(key)} does not match its entry's SHA-256"
        )
    version = (data / "PG_VERSION").read_text().strip() if (data / "PG_VERSION").is_file() else "?"
    if version != str(backup.major):
        raise _corrupt(key, f"it holds PostgreSQL {version}, its entry says {backup.major}")


def _fetch_wal(request: RecoveryRequest, wal: Path, stop: threading.Event) -> None:
    """The plan's WAL, plaintext, into `wal` under the names restore_command asks for (a partial
    segment under its segment's name: `fetch` falls back to it when the segment is not whole)."""
    wal.mkdir(mode=0o700)
    names = dict.fromkeys(name.removesuffix(PARTIAL_SUFFIX) for name in request.plan.segments)
    for name in names:
        if stop.is_set():
            raise RetryableError(Reason.CANCELLED, "stopped")
        if not fetch(request.store, request.layout, name, wal / name, request.encryption_key):
            raise PermanentError(
                WalReason.SEGMENT_MISSING, f"{request.store.uri(request.layout.wal(name))} is not archived"
            )


def _configure(data: Path, wal: Path, socket: Path, target: RecoveryTarget) -> None:
    """The operator's settings, not the copied server's, and recovery.signal."""
    socket.mkdir(mode=0o700)
    for leftover in ("standby.signal", "recovery.conf", "postmaster.pid", "postmaster.opts"):
        (data / leftover).unlink(missing_ok=True)
    settings = {
        "listen_addresses": "",
        "port": str(SOCKET_PORT),
        "unix_socket_directories": str(socket),
        "unix_socket_permissions": "0700",
        "hba_file": str(data / "pg_hba.conf"),
        "ident_file": str(data / "pg_ident.conf"),
        "shared_preload_libraries": "",
        "archive_mode": "off",
        "hot_standby": "off",
        "ssl": "off",
        "fsync": "off",  # a scratch copy: a crash starts it over
        "logging_collector": "off",
        "log_destination": "stderr",
        "restore_command": f"cp {shlex.quote(str(wal))}/%f %p",
        "recovery_target_timeline": "latest",
        "recovery_target_action": "promote",
        **target_settings(target),
    }
    conf = "".join(f"{name} = {_quoted(value)}\n" for name, value in settings.items())
    (data / "postgresql.conf").write_text(conf)
    (data / "postgresql.auto.conf").write_text("")
    (data / "pg_hba.conf").write_text("local all all trust\n")  # the socket folder is private (0700)
    (data / "pg_ident.conf").write_text("")
    (data / "recovery.signal").write_text("")


def _quoted(value: str) -> str:
    """A postgresql.conf string; no control characters can end the line."""
    if any(ord(character) < 32 for character in value):
        raise PermanentError(Reason.INVALID_REQUEST, "a recovery setting holds a control character")
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def _check_reachable(folder: Path, uid: int) -> None:
    """PermanentError unless the user `uid` may pass through every folder above `folder`."""
    user = pwd.getpwuid(uid)
    groups = {user.pw_gid, *(g.gr_gid for g in grp.getgrall() if user.pw_name in g.gr_mem)}
    for parent in folder.parents:
        mode = parent.stat()
        allowed = (
            mode.st_mode & stat.S_IXUSR
            if mode.st_uid == uid
            else mode.st_mode & stat.S_IXGRP
            if mode.st_gid in groups
            else mode.st_mode & stat.S_IXOTH
        )
        if not allowed:
            raise PermanentError(
                RestoreReason.RECOVERY_FAILED,
                f"the recovery server runs as {user.pw_name} (PostgreSQL refuses root), who cannot pass"
                f" through {parent}: give the operator a --scratch-dir that every user may traverse",
            )


def _chown_tree(folder: Path, uid: int) -> None:
    gid = pwd.getpwuid(uid).pw_gid
    os.chown(folder, uid, gid)
    for current, folders, files in os.walk(folder):
        for name in folders + files:
            os.chown(os.path.join(current, name), uid, gid, follow_symlinks=False)


def _corrupt(key: str, detail: str) -> OperationError:
    return PermanentError(Reason.VERIFICATION_FAILED, f"base backup {key} is not usable: {detail}")


# ---------------------------------------------------------------- the server


def _socket_target(socket: Path, database: str, role: str) -> ConnectionTarget:
    return ConnectionTarget(
        f"postgresql://{quote(role, safe='')}@/{quote(database, safe='')}"
        f"?host={quote(str(socket), safe='')}&port={SOCKET_PORT}"
    )


async def _await_promotion(
    server: ClientTool, socket: Path, target: RecoveryTarget, role: str
) -> RecoveredPoint | None:
    """Waits until the server has recovered and promoted; where it stands, or None when it has but
    has no role `role` to ask. A server that stops instead raises, with what its log says."""
    maintenance = _socket_target(socket, "postgres", role)
    missing = f'role "{role}" does not exist'
    while True:
        if server.process.returncode is not None:
            await server.check(lambda log: _recovery_failed(log, target))
            raise PermanentError(RestoreReason.RECOVERY_FAILED, "the recovery server stopped")
        try:
            conn = await psycopg.AsyncConnection.connect(maintenance.conninfo(), autocommit=True)
        except psycopg.OperationalError as error:
            if missing in str(error):  # checked only once connections are accepted: recovery is over
                return None
            if not any(sign in str(error).lower() for sign in _REFUSED):
                await _sleep()
                continue
            raise classify_failure(
                "PostgreSQL", str(error), maintenance, failed_reason=RestoreReason.RECOVERY_FAILED
            ) from None
        async with conn:
            cursor = await conn.execute(
                "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()::text, pg_last_xact_replay_timestamp()"
            )
            in_recovery, lsn, last_commit = await cursor.fetchone() or (True, None, None)
        if not in_recovery:
            return RecoveredPoint(lsn, last_commit)
        await _sleep()


def _point_in(log: str) -> RecoveredPoint:
    """Where recovery ended, as the server's log says it."""
    redo, commit = _REDO_DONE.findall(log), _LAST_COMMIT.findall(log)
    return RecoveredPoint(
        redo[-1] if redo else None, dt.datetime.fromisoformat(commit[-1].strip()) if commit else None
    )


async def _bootstrap_superuser(binary: Path, data: Path, owner: int | None) -> str:
    """The name of the role that initdb made (oid 10), as a single-user backend of the stopped copy
    tells it: a single-user backend runs as that role whatever name it is given."""
    argv = [str(binary), "--single", "-D", str(data), "template1"]
    async with ClientTool.start(
        argv, None, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, user=owner
    ) as backend:
        await backend.feed(b"SELECT rolname FROM pg_authid WHERE oid = 10;\n")
        await backend.close_stdin()
        assert backend.process.stdout is not None
        printed = bytearray()
        while (chunk := await backend.process.stdout.read(COPY_SIZE)) and len(printed) < MAX_PRINTED_BYTES:
            printed += chunk
        await backend.check(lambda log: PermanentError(RestoreReason.RECOVERY_FAILED, meaningful_line(log)))
    found = re.search(r'rolname = "([^"]+)"', printed.decode(errors="replace"))
    if found is None:
        raise PermanentError(RestoreReason.RECOVERY_FAILED, "the recovered copy names no superuser")
    return found[1]


async def _sleep() -> None:
    await asyncio.sleep(POLL_SECONDS)


def _recovery_failed(log: str, target: RecoveryTarget) -> OperationError:
    if _NOT_REACHED in log:
        point = _point_in(log)
        last = f" (last commit at {timestamps.rfc3339(point.time)})" if point.time else ""
        return PermanentError(
            RestoreReason.RECOVERY_TARGET_NOT_REACHED,
            f"{target.describe()} is past the end of the archive: the archive ends at"
            f" {point.lsn or 'the end of its base backup'}{last}",
        )
    return PermanentError(RestoreReason.RECOVERY_FAILED, f"recovery failed: {meaningful_line(log)}")


async def _dump(source: ConnectionTarget, path: Path, amcheck: bool) -> None:
    """pg_dump (custom format) of the recovered database into `path`; with `amcheck`, pg_amcheck
    first: the base backup's pages are the source's own, so corruption the source had shows here,
    where a restore of the dump would rebuild every index afresh."""
    if amcheck:
        await check_database(source)
    argv = ["pg_dump", "--no-password", "--format=custom", f"--file={path}"]
    async with ClientTool.start(argv, source) as dump:
        await dump.check(
            lambda stderr: PermanentError(
                RestoreReason.RECOVERY_FAILED,
                f"pg_dump of the recovered database {source.dbname} failed: {meaningful_line(stderr)}",
            )
        )
    if not path.is_file():
        raise PermanentError(RestoreReason.RECOVERY_FAILED, "pg_dump wrote no dump")
