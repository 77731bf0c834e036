"""Restore versus raw `pg_restore` of the same artifact into fresh databases, in the same run; and the
speed-up of `jobs: 2` on the directory format.

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

from bench.backup import ensure_database, measure
from habitat_operator.engines.postgres.dump import BackupRequest, run_backup
from habitat_operator.engines.postgres.restore import RestoreRequest, check_artifact, run_restore
from habitat_operator.engines.postgres.uri import ConnectionTarget

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale", type=int, default=70, help="pgbench scale (70 is about 1.05 GB)")
    args = parser.parse_args()
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
                },
                args.rounds,
            )
        )
    fresh(admin_uri)
    pairs = {  # each Restore variant against the raw tool doing the same work
        "Restore (custom)": "raw pg_restore (custom)",
        "Restore jobs 2 (directory)": "raw pg_restore -j 2 (directory)",
    }
    print(f"\n{'variant':34} {'median s':>9} {'vs raw':>7}")
    for name, seconds in results.items():
        ratio = f"{seconds / results[pairs[name]]:6.3f}x" if name in pairs else ""
        print(f"{name:34} {seconds:9.2f} {ratio:>7}")
    speedup = results["Restore jobs 1 (directory)"] / results["Restore jobs 2 (directory)"]
    print(f"\njobs: 2 speed-up on the directory format: {speedup:.2f}x")


if __name__ == "__main__":
    main()
