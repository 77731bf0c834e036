"""A private PostgreSQL 15 (initdb in a temp folder, its own port, as `postgres` when the tests run
as root) whose WAL and one base backup are put into an archive's layout through the codec, by hand:
what the WalArchive kind will do, for testing recovery before it exists. Test modules import from
here, never from one another."""

from __future__ import annotations

import io
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from habitat_operator import timestamps
from habitat_operator.engines.artifacts.codec import ArtifactSink
from habitat_operator.engines.wal.layout import SEGMENT_NAME, ArchiveLayout
from habitat_operator.engines.wal.store import ObjectStore

BIN = Path("/usr/lib/postgresql/15/bin")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _as_postgres() -> dict[str, Any]:
    if os.geteuid() != 0:
        return {}
    user = pwd.getpwnam("postgres")
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


class SourceServer:
    """The server that is archived; `stop()` removes it."""

    def __init__(self, superuser: str = "postgres") -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="habitat-wal-source-"))
        os.chmod(self.folder, 0o755)
        self.data, self.archived = self.folder / "data", self.folder / "archived"
        self.archived.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
            shutil.chown(self.archived, "postgres", "postgres")
        self.port = _free_port()
        self._run([BIN / "initdb", "-D", self.data, "-U", superuser, "--auth=trust", "-E", "UTF8"])
        settings = {
            "port": self.port,
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.folder}'",
            "wal_level": "replica",
            "archive_mode": "on",
            "archive_command": f"'cp %p {self.archived}/%f'",
            "fsync": "off",
        }
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{name} = {value}\n" for name, value in settings.items())
        self._run([BIN / "pg_ctl", "-D", self.data, "-l", self.folder / "log", "-w", "start"])
        self.superuser = superuser
        self.uri = f"postgresql://{superuser}@127.0.0.1:{self.port}/postgres"

    def _run(self, argv: list[Any]) -> str:
        done = subprocess.run(
            [str(part) for part in argv], capture_output=True, text=True, check=False, **_as_postgres()
        )
        assert done.returncode == 0, done.stderr
        return str(done.stdout)

    def database(self, name: str) -> str:
        with psycopg.connect(self.uri, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql://{self.superuser}@127.0.0.1:{self.port}/{name}"

    def base_backup(self, store: ObjectStore, layout: ArchiveLayout, key: bytes | None) -> dict[str, Any]:
        """pg_basebackup -Ft -X none through the codec into the layout, then its entry."""
        started = timestamps.now()
        tar = subprocess.run(
            [str(BIN / "pg_basebackup"), "-d", self.uri, "-Ft", "-X", "none", "-D", "-", "-c", "fast"],
            capture_output=True,
            check=True,
        ).stdout
        label, manifest = _backup_files(tar)
        backup_id = started.strftime("%Y%m%dT%H%M%SZ")
        with store.writer(layout.base_backup(backup_id)) as out:
            sink = ArtifactSink(out, key, zstd=True)
            for offset in range(0, len(tar), 1 << 20):
                sink.write(tar[offset : offset + (1 << 20)])
            sink.finish()
        wal_range = manifest["WAL-Ranges"][0]
        entry = {
            "id": backup_id,
            "startLsn": re.search(r"START WAL LOCATION: (\S+)", label)[1],  # type: ignore[index]
            "endLsn": wal_range["End-LSN"],
            "timeline": wal_range["Timeline"],
            "startedAt": timestamps.rfc3339(started),
            "completedAt": timestamps.rfc3339(timestamps.now()),
            "serverVersion": 150000,
            "systemIdentifier": "0",
            "sizeBytes": sink.size,
            "sha256": sink.sha256.hexdigest(),
            "encrypted": key is not None,
            "compression": "zstd",
        }
        with store.writer(layout.base_backup_entry(backup_id)) as out:
            out.write(json.dumps(entry).encode())
        return entry

    def archive_wal(self, store: ObjectStore, layout: ArchiveLayout, key: bytes | None) -> None:
        """Switches to a new segment, waits for the server's archive_command, and copies every
        archived file through the codec into the layout."""
        with psycopg.connect(self.uri, autocommit=True) as conn:
            last = str(conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0])  # type: ignore[index]
        deadline = time.monotonic() + 30
        while not (self.archived / last).exists():
            assert time.monotonic() < deadline, f"{last} was not archived"
            time.sleep(0.1)
        for path in sorted(self.archived.iterdir()):
            if SEGMENT_NAME.match(path.name) or path.name.endswith(".history"):
                with store.writer(layout.wal(path.name)) as out:
                    sink = ArtifactSink(out, key, zstd=True)
                    sink.write(path.read_bytes())
                    sink.finish()

    def stop(self) -> None:
        subprocess.run(
            [str(BIN / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
            capture_output=True,
            check=False,
            **_as_postgres(),
        )
        shutil.rmtree(self.folder, ignore_errors=True)


def _backup_files(tar: bytes) -> tuple[str, dict[str, Any]]:
    with tarfile.open(fileobj=io.BytesIO(tar)) as opened:
        label = opened.extractfile("backup_label").read().decode()  # type: ignore[union-attr]
        manifest = json.loads(opened.extractfile("backup_manifest").read())  # type: ignore[union-attr]
    return label, manifest
