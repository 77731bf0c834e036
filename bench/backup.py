"""Backup versus raw `pg_dump -Fc > file` on a pgbench database of at least 1 GB, in the same run; to
the stack's S3 server versus raw `pg_dump -Fc | boto3 upload_fileobj`; and each codec's time and size.

Run on the local stack: `make bench` (or `python -m bench.backup` with .stack/env sourced).
Prints the median wall time of each variant and its ratio to the raw tool it does the work of.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import psycopg

from bench import s3
from habitat_operator.engines.artifacts.s3 import Bucket, S3Location
from habitat_operator.engines.postgres.bucket import CatalogSource, run_backup_to_bucket
from habitat_operator.engines.postgres.dump import BackupRequest, run_backup
from habitat_operator.engines.postgres.uri import ConnectionTarget
from habitat_operator.health import map_large_buffers

DATABASE = "habitat_bench"
MIN_BYTES = 1 << 30


def ensure_database(admin_uri: str, scale: int) -> str:
    """A pgbench database of at least 1 GiB, created once and reused by later runs."""
    uri = admin_uri.rsplit("/", 1)[0] + f"/{DATABASE}"
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone()
        if exists:
            size = conn.execute("SELECT pg_database_size(%s)", (DATABASE,)).fetchone()
            if size and size[0] >= MIN_BYTES:
                return uri
            conn.execute(f"DROP DATABASE {DATABASE} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {DATABASE}")
    target = ConnectionTarget(uri)
    print(f"creating pgbench database at scale {scale} ...", flush=True)
    subprocess.run(["pgbench", "-i", "-q", "-s", str(scale)], env={**os.environ, **target.env()}, check=True)
    return uri


def raw_pg_dump(target: ConnectionTarget, out: Path) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        with out.open("wb") as sink:
            subprocess.run(["pg_dump", "-Fc"], stdout=sink, env={**os.environ, **target.env()}, check=True)

    return run


def habitat_backup(target: ConnectionTarget, out: Path, **options: object) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        await run_backup(BackupRequest(target=target, destination=out, **options))  # type: ignore[arg-type]

    return run


def habitat_backup_to_bucket(
    target: ConnectionTarget, where: S3Location, key: str, **options: object
) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        with Bucket(where) as bucket:
            request = BackupRequest(target=target, **options)  # type: ignore[arg-type]
            await run_backup_to_bucket(request, bucket, key, CatalogSource("bench", "bench", "bench"))

    return run


async def measure(
    runs: dict[str, Callable[[], Awaitable[None]]], rounds: int, only: list[str] | None = None
) -> dict[str, float]:
    """Rounds interleave the variants, so drift in the machine's speed hits them all alike. With
    `only`, just the variants whose name holds one of its words, and the raw tools."""
    if only:
        runs = {
            name: run for name, run in runs.items() if name.startswith("raw") or any(w in name for w in only)
        }
    times: dict[str, list[float]] = {name: [] for name in runs}
    for round_ in range(rounds):
        for name, run in runs.items():
            started = time.perf_counter()
            await run()
            times[name].append(time.perf_counter() - started)
            print(f"  round {round_ + 1} {name}: {times[name][-1]:.2f}s", flush=True)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--scale", type=int, default=70, help="pgbench scale (70 is about 1.05 GB)")
    parser.add_argument(
        "--only", nargs="*", default=[], help="variants whose name holds one of these (raw ones stay)"
    )
    args = parser.parse_args()
    map_large_buffers()  # as the operator does
    uri = ensure_database(os.environ["HABITAT_PG_URI"], args.scale)
    target = ConnectionTarget(uri)
    with psycopg.connect(uri) as conn:
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    print(f"database {DATABASE}: {size[0] / 2**30:.2f} GiB" if size else "")
    key = os.urandom(32)
    where = s3.location()
    with tempfile.TemporaryDirectory(dir=os.environ.get("HABITAT_BENCH_DIR")) as tmp:
        out = Path(tmp)
        results = asyncio.run(
            measure(
                {
                    "raw pg_dump -Fc > file": raw_pg_dump(target, out / "raw.dump"),
                    "Backup (checksum, no verify)": habitat_backup(target, out / "a.dump", verify=False),
                    "Backup (checksum + verify)": habitat_backup(target, out / "b.dump", verify=True),
                    "Backup (encrypted + verify)": habitat_backup(
                        target, out / "c.dump", verify=True, encryption_key=key
                    ),
                    "Backup (zstd + verify)": habitat_backup(
                        target, out / "z.dump", verify=True, compression="zstd"
                    ),
                    **_bucket_variants(target, where),
                },
                args.rounds,
                args.only,
            )
        )
        sizes = {name: (out / file).stat().st_size for name, file in FILES.items() if name in results}
    if where is not None:
        sizes |= {name: s3.size_of(where, where.key(obj)) for name, obj in OBJECTS.items() if name in results}
    print(f"\n{'variant':40} {'median s':>9} {'vs raw':>7} {'MiB':>8}")
    for name, seconds in results.items():
        raw = results[RAW_S3 if "S3" in name else RAW]
        mib = f"{sizes[name] / 2**20:8.1f}" if name in sizes else ""
        print(f"{name:40} {seconds:9.2f} {seconds / raw:6.3f}x {mib}")
    if "Backup (zstd + verify)" in results and RAW in sizes:
        speed = results[RAW] / results["Backup (zstd + verify)"]
        smaller = sizes[RAW] / sizes["Backup (zstd + verify)"]
        print(f"\nzstd against raw pg_dump -Fc > file: {speed:.2f}x faster, {smaller:.2f}x smaller")


RAW = "raw pg_dump -Fc > file"
RAW_S3 = "raw pg_dump -Fc | upload_fileobj (S3)"
FILES = {RAW: "raw.dump", "Backup (checksum + verify)": "b.dump", "Backup (zstd + verify)": "z.dump"}
OBJECTS = {
    RAW_S3: "raw.dump",
    "Backup to S3 (checksum, no verify)": "noverify.dump",
    "Backup to S3 (checksum + verify)": "gzip.dump",
    "Backup to S3 (zstd + verify)": "zstd.dump",
}


def _bucket_variants(
    target: ConnectionTarget, where: S3Location | None
) -> dict[str, Callable[[], Awaitable[None]]]:
    if where is None:
        return {}
    return {
        RAW_S3: s3.raw_upload(target, where, where.key("raw.dump")),
        "Backup to S3 (checksum, no verify)": habitat_backup_to_bucket(
            target, where, where.key("noverify.dump"), verify=False
        ),
        "Backup to S3 (checksum + verify)": habitat_backup_to_bucket(target, where, where.key("gzip.dump")),
        "Backup to S3 (zstd + verify)": habitat_backup_to_bucket(
            target, where, where.key("zstd.dump"), compression="zstd"
        ),
    }


if __name__ == "__main__":
    main()
