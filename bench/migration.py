"""A Migration's work on 500 small migrations versus psql on the same SQL, in the same run.

Each migration creates a table, adds a column and inserts rows. Three ways to apply them, each into
a fresh database: `psql -1 -f` of all of them concatenated (one transaction), `psql -f` per file
(500 processes), and what a Migration does (the squawk lint of all pending scripts, the database
lock, the history table, one transaction per migration with its history row). The linter's share
of the Migration's time is reported too.

Run on the local stack: `make bench` (or `python -m bench.migration` with the stack's env sourced).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import psycopg
from psycopg import sql

from bench.backup import measure
from habitat_operator.api.migration import MigrationSpec
from habitat_operator.controllers.migration.plan import make_plan
from habitat_operator.controllers.migration.source import MigrationFile
from habitat_operator.engines.postgres.lint import lint
from habitat_operator.engines.postgres.locks import database_lock
from habitat_operator.engines.postgres.migrations import MigrationSession, Script, Timeouts
from habitat_operator.engines.postgres.uri import ConnectionTarget

SCRATCH = "habitat_bench_migration"
GOAL = 1.3  # at most this many times the per-file psql figure


def migrations(count: int) -> list[Script]:
    return [
        Script(
            v,
            f"table_{v}",
            f"CREATE TABLE t{v} (id bigint PRIMARY KEY, note text);\n"
            f"ALTER TABLE t{v} ADD COLUMN created timestamptz;\n"
            f"INSERT INTO t{v} (id, note) SELECT g, 'row ' || g FROM generate_series(1, 20) g;\n",
        )
        for v in range(1, count + 1)
    ]


def fresh(admin_uri: str) -> ConnectionTarget:
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(SCRATCH)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(SCRATCH)))
    return ConnectionTarget(admin_uri).with_database(SCRATCH)


def psql(target: ConnectionTarget, *args: str) -> None:
    argv = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", *args]
    subprocess.run(argv, env={**os.environ, **target.env()}, check=True, stdout=subprocess.DEVNULL)


def psql_one_transaction(admin_uri: str, folder: Path) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        psql(fresh(admin_uri), "-1", "-f", str(folder / "all.sql"))

    return run


def psql_per_file(admin_uri: str, files: list[Path]) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        target = fresh(admin_uri)
        for file in files:
            psql(target, "-f", str(file))

    return run


def habitat_migration(
    admin_uri: str, scripts: list[Script], lint_seconds: list[float]
) -> Callable[[], Awaitable[None]]:
    spec = MigrationSpec.model_validate(
        {
            "database": {"secretRef": {"name": "db"}},
            "source": {"configMapRefs": [{"name": "sql"}]},
            "lockTimeout": "5s",
        }
    )
    files = [MigrationFile(s.version, s.name, s, None) for s in scripts]

    async def run() -> None:
        target = fresh(admin_uri)
        async with MigrationSession.connect(
            target, "habitat-migration bench", spec.history_table, Timeouts()
        ) as s:
            plan = make_plan(files, await s.history(), spec)
        started = time.perf_counter()
        await lint([step.script for step in plan.steps], ["require-lock-timeout"])
        lint_seconds.append(time.perf_counter() - started)
        async with database_lock(target, "migration bench/bench") as lock:
            assert lock.acquired
            timeouts = Timeouts(lock_timeout_ms=5000)
            async with MigrationSession.connect(
                target, "habitat-migration bench", spec.history_table, timeouts
            ) as s:
                await s.ensure_history()
                plan = make_plan(files, await s.history(), spec)
                for step in plan.steps:
                    await s.apply(step.script, "bench/bench uid=0")

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--migrations", type=int, default=500)
    args = parser.parse_args()
    admin_uri = os.environ["HABITAT_PG_URI"]
    scripts = migrations(args.migrations)
    lint_seconds: list[float] = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("HABITAT_BENCH_DIR")) as tmp:
        folder = Path(tmp)
        files = []
        for script in scripts:
            files.append(folder / f"{script.version}_{script.name}.up.sql")
            files[-1].write_text(script.sql)
        (folder / "all.sql").write_text("".join(s.sql for s in scripts))
        results = asyncio.run(
            measure(
                {
                    "psql -1 -f (all in one)": psql_one_transaction(admin_uri, folder),
                    "psql -f per file": psql_per_file(admin_uri, files),
                    "habitat Migration": habitat_migration(admin_uri, scripts, lint_seconds),
                },
                args.rounds,
            )
        )
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(SCRATCH)))
    ours = results["habitat Migration"]
    lint_share = sorted(lint_seconds)[len(lint_seconds) // 2] / ours
    print(f"\n{args.migrations} migrations, median of {args.rounds} rounds")
    for name, seconds in results.items():
        print(f"  {name:26} {seconds:7.2f}s  habitat/this = {ours / seconds:.2f}x")
    print(f"  linter's share of the Migration: {lint_share:.0%}")
    ratio = ours / results["psql -f per file"]
    print(f"goal: at most {GOAL}x psql -f per file: {'met' if ratio <= GOAL else 'MISSED'} ({ratio:.2f}x)")


if __name__ == "__main__":
    main()
