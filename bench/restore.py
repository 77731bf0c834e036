"""Restore versus raw `pg_restore` of the same artifact into fresh databases, in the same run; from the
stack's S3 server versus raw `boto3 download_fileobj | pg_restore`; and the speed-up of `jobs: 2` on
the directory format.

Run on the local stack: `make bench` (or `python -m bench.restore` with .stack/env sourced).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import psycopg
from psycopg import sql

from bench import s3
from bench.backup import ensure_database, measure
from habitat_operator.engines.artifacts.s3 import Bucket, S3Location
from habitat_operator.engines.postgres.bucket import check_object, opener
from habitat_operator.engines.postgres.dump import BackupRequest, run_backup
from habitat_operator.engines.postgres.restore import RestoreRequest, check_artifact, run_restore
from habitat_operator.engines.postgres.uri import ConnectionTarget
from habitat_operator.health import map_large_buffers

SCRATCH = "habitat_bench_restore"


def fresh(admin_uri: str) -> ConnectionTarget:
    """An empty database to restore into (the previous round's is dropped)."""
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(SCRATCH)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(SCRATCH)))
    return ConnectionTarget(admin_uri).with_database(SCRATCH)


def raw_pg_restore(admin_uri: str, artifact: Path, jobs: int = 1) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        target = fresh(admin_uri)
        argv = ["pg_restore", "--no-owner", "-j", str(jobs), "-d", SCRATCH, str(artifact)]
        subprocess.run(argv, env={**os.environ, **target.env()}, check=True)

    return run


def habitat_restore(
    admin_uri: str, artifact: Path, fmt: str, sha256: str, jobs: int = 1
) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        target = fresh(admin_uri)
        # What a Restore does: the checksum before the target is touched, then pg_restore.
        await check_artifact(artifact, fmt, sha256, None)  # type: ignore[arg-type]
        await run_restore(RestoreRequest(target, artifact, fmt, check_checksum=False, jobs=jobs))  # type: ignore[arg-type]

    return run


def raw_restore_from_bucket(admin_uri: str, where: S3Location, key: str) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        s3.raw_download_into(fresh(admin_uri), where, key)

    return run


def habitat_restore_from_bucket(
    admin_uri: str, where: S3Location, key: str, sha256: str
) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        target = fresh(admin_uri)
        with Bucket(where) as bucket:
            # What a Restore from a bucket does: one read to check, a second to restore.
            await check_object(bucket, key, sha256, None)
            await run_restore(RestoreRequest(target, opener(bucket, key), check_checksum=False))

    return run


def _bucket_variants(admin_uri: str, custom: Path, sha256: str) -> dict[str, Callable[[], Awaitable[None]]]:
    where = s3.location()
    if where is None:
        return {}
    key = where.key("bench.dump")
    s3.raw_client(where).upload_file(str(custom), where.bucket, key)
    return {
        "raw download_fileobj | pg_restore (S3)": raw_restore_from_bucket(admin_uri, where, key),
        "Restore from S3 (custom)": habitat_restore_from_bucket(admin_uri, where, key, sha256),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale", type=int, default=70, help="pgbench scale (70 is about 1.05 GB)")
    parser.add_argument(
        "--only", nargs="*", default=[], help="variants whose name holds one of these (raw ones stay)"
    )
    args = parser.parse_args()
    map_large_buffers()  # as the operator does
    admin_uri = os.environ["HABITAT_PG_URI"]
    source = ConnectionTarget(ensure_database(admin_uri, args.scale))
    with tempfile.TemporaryDirectory(dir=os.environ.get("HABITAT_BENCH_DIR")) as tmp:
        custom, directory = Path(tmp) / "bench.dump", Path(tmp) / "bench.dir"
        made_custom = asyncio.run(run_backup(BackupRequest(source, custom, verify=False)))
        made_dir = asyncio.run(
            run_backup(BackupRequest(source, directory, "directory", jobs=2, verify=False))
        )
        results = asyncio.run(
            measure(
                {
                    "raw pg_restore (custom)": raw_pg_restore(admin_uri, custom),
                    "Restore (custom)": habitat_restore(admin_uri, custom, "custom", made_custom.sha256),
                    "raw pg_restore -j 2 (directory)": raw_pg_restore(admin_uri, directory, jobs=2),
                    "Restore jobs 1 (directory)": habitat_restore(
                        admin_uri, directory, "directory", made_dir.sha256
                    ),
                    "Restore jobs 2 (directory)": habitat_restore(
                        admin_uri, directory, "directory", made_dir.sha256, jobs=2
                    ),
                    **_bucket_variants(admin_uri, custom, made_custom.sha256),
                },
                args.rounds,
                args.only,
            )
        )
    fresh(admin_uri)
    pairs = {  # each Restore variant against the raw tool doing the same work
        "Restore (custom)": "raw pg_restore (custom)",
        "Restore jobs 2 (directory)": "raw pg_restore -j 2 (directory)",
        "Restore from S3 (custom)": "raw download_fileobj | pg_restore (S3)",
    }
    print(f"\n{'variant':40} {'median s':>9} {'vs raw':>7}")
    for name, seconds in results.items():
        ratio = f"{seconds / results[pairs[name]]:6.3f}x" if pairs.get(name) in results else ""
        print(f"{name:40} {seconds:9.2f} {ratio:>7}")
    if "Restore jobs 1 (directory)" in results and "Restore jobs 2 (directory)" in results:
        speedup = results["Restore jobs 1 (directory)"] / results["Restore jobs 2 (directory)"]
        print(f"\njobs: 2 speed-up on the directory format: {speedup:.2f}x")


if __name__ == "__main__":
    main()
