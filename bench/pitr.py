"""Point-in-time recovery against the raw tools, in the same run, on a private PostgreSQL server of
the bench's own (initdb in a temp folder, as the e2e tests start theirs) with a WalArchive
(default settings: zstd, partialUploadInterval 5s) run by `habitat-operator run` into the stack's S3:

- archiving under `pgbench -c 4`: a raw `pg_receivewal` on a second slot streams to a local folder
  over the SAME load; each one's throughput is the load's WAL divided by the time from the load's
  start until it holds the load's last byte (the archive: in the bucket, complete segments and the
  `.partial` object's endLsn). The archive's lag (server position minus archived) is sampled
  through the load: bounded when the second half's worst is not above the first half's worst plus
  one segment;
- the live RPO under that load: `time() - habitat_walarchive_last_archived_commit_timestamp_seconds`
  from the operator's /metrics, sampled every 0.5 s from the load's first archived commit on;
- a Restore to `latest` from the bucket alone (apply to Succeeded) against the same steps by hand:
  download and `zstd -d | tar -x` the base backup, download and decompress its WAL, a server
  recovering with `restore_command = cp`, then `pg_dump -Fc | pg_restore` into a new database.

Run on the local stack: `make bench` (or `python -m bench.pitr` with .stack/env sourced), alone on
the machine (`flock -x /tmp/habitat-quiet.lock`).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from prometheus_client.parser import text_string_to_metric_families

from bench import s3
from bench.operator_process import REPO, Operator, wait_until
from habitat_operator.engines.artifacts.s3 import Bucket, S3Location
from habitat_operator.engines.postgres.uri import ConnectionTarget
from habitat_operator.engines.wal.layout import (
    DEFAULT_SEGMENT_SIZE,
    PARTIAL_SUFFIX,
    SEGMENT_NAME,
    ArchiveLayout,
    format_lsn,
    parse_lsn,
    segment_name,
    segment_start,
)
from habitat_operator.engines.wal.store import BucketStore
from habitat_operator.engines.wal.uploader import END_LSN, metadata_value

sys.path.insert(0, str(REPO / "scripts"))
from tests.e2e.helpers import PrivateServer

from dev_stack.common import as_user, chown_tree
from dev_stack.postgres import pg_bin

ARCHIVE = "bench-wal"
DATABASE = "bench"
RAW_SLOT, RAW_APPLICATION = "bench_raw", "bench-raw-receivewal"
PARTIAL_UPLOAD_SECONDS = 5.0  # the WalArchive default
SAMPLE_SECONDS = 0.5
REACHED_POLL_SECONDS = 0.1
TARGETS = ("habitat_bench_pitr", "habitat_bench_pitr_hand")

# The figures this benchmark checks, as issue 20 states them.
GOAL_THROUGHPUT_RATIO = 0.9
GOAL_RESTORE_RATIO = 1.3
GOAL_RPO_SECONDS = PARTIAL_UPLOAD_SECONDS + 1


def kubectl(*args: str, stdin: str | None = None, check: bool = True) -> str:
    argv = [os.environ["HABITAT_KUBECTL"], *args]
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, check=check).stdout


@dataclass
class Samples:
    """What the load's sampler saw: (seconds since the load started, value)."""

    lag_bytes: list[tuple[float, int]] = field(default_factory=list)
    rpo_seconds: list[float] = field(default_factory=list)
    raw_reached: float | None = None
    archive_reached: float | None = None


class ArchiveEnd:
    """How far the archive in the bucket reaches: the end of its newest complete segment, or its
    `.partial` object's endLsn when that is further."""

    def __init__(self, bucket: Bucket, base: str) -> None:
        self.store, self.layout = BucketStore(bucket, base), ArchiveLayout(ARCHIVE)

    def __call__(self) -> int:
        names = [item.key.rsplit("/", 1)[-1] for item in self.store.list(self.layout.wal_prefix)]
        complete = [segment_start(n)[1] + DEFAULT_SEGMENT_SIZE for n in names if SEGMENT_NAME.match(n)]
        end = max(complete, default=0)
        partials = sorted(n for n in names if n.endswith(PARTIAL_SUFFIX))
        if partials:
            metadata = self.store.metadata(self.layout.wal(partials[-1])) or {}
            end = max(end, parse_lsn(metadata_value(metadata, END_LSN) or "0/0"))
        return end


def current_lsn(server: PrivateServer) -> int:
    return parse_lsn(server.execute("SELECT pg_current_wal_lsn()::text")[0])


def raw_received(server: PrivateServer) -> int:
    row = server.execute(
        "SELECT write_lsn::text FROM pg_stat_replication WHERE application_name = %s", RAW_APPLICATION
    )
    return parse_lsn(row[0]) if row and row[0] else 0


def archived_commit(operator: Operator, namespace: str) -> float | None:
    """The newest archived commit's Unix time, as the operator's /metrics tell it."""
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.port}/metrics", timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if (
                sample.name == "habitat_walarchive_last_archived_commit_timestamp_seconds"
                and sample.labels.get("namespace") == namespace
            ):
                return float(sample.value)
    return None


def run_load(
    server: PrivateServer,
    seconds: int,
    clients: int,
    archive_end: Callable[[], int],
    archived_commit: Callable[[], float | None],
) -> tuple[int, float, Samples]:
    """pgbench for `seconds`, sampled; then until both consumers hold its last byte. Returns the
    load's WAL bytes, its duration and the samples. The live RPO is sampled from the first archived
    commit of the load on (before it, it measures the idle time before the load)."""
    env = {**os.environ, **ConnectionTarget(server.admin_uri).with_database(DATABASE).env()}
    start_lsn, samples = current_lsn(server), Samples()
    started, started_at = time.monotonic(), time.time()
    load = subprocess.Popen(
        ["pgbench", "-n", "-c", str(clients), "-j", "2", "-T", str(seconds), DATABASE],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    while load.poll() is None:
        now = time.monotonic() - started
        samples.lag_bytes.append((now, current_lsn(server) - archive_end()))
        if (commit := archived_commit()) is not None and commit >= started_at:
            samples.rpo_seconds.append(time.time() - commit)
        time.sleep(SAMPLE_SECONDS)
    loaded = time.monotonic() - started
    assert load.stdout is not None
    printed = load.stdout.read()
    if load.returncode != 0:
        raise SystemExit(f"pgbench failed: {printed}")
    tps = [line for line in printed.splitlines() if line.startswith("tps")]
    print(f"  pgbench -c {clients}, {loaded:.1f}s: {tps[0] if tps else '?'}", flush=True)
    end_lsn = current_lsn(server)
    deadline = time.monotonic() + 300
    while samples.raw_reached is None or samples.archive_reached is None:
        now = time.monotonic() - started
        if samples.raw_reached is None and raw_received(server) >= end_lsn:
            samples.raw_reached = now
        if samples.archive_reached is None and archive_end() >= end_lsn:
            samples.archive_reached = now
        if time.monotonic() > deadline:
            raise SystemExit(f"the archive did not reach {format_lsn(end_lsn)} within 300s of the load's end")
        time.sleep(REACHED_POLL_SECONDS)
    return end_lsn - start_lsn, loaded, samples


@contextmanager
def raw_receiver(server: PrivateServer, folder: Path) -> Iterator[None]:
    """`pg_receivewal` on a slot of its own into `folder`, as a user would run it."""
    env = {**os.environ, **ConnectionTarget(server.uri).env(), "PGAPPNAME": RAW_APPLICATION}
    slot = [f"--slot={RAW_SLOT}"]
    subprocess.run(["pg_receivewal", "--create-slot", "--if-not-exists", *slot], env=env, check=True)
    # Status every second (not 10): pg_stat_replication's write_lsn is how far it has written.
    argv = ["pg_receivewal", "-D", str(folder), "-n", "--status-interval=1", *slot]
    receiver = subprocess.Popen(argv, env=env)
    try:
        wait_until("pg_receivewal to stream", lambda: raw_received(server), 30, 0.2)
        yield
    finally:
        receiver.terminate()
        receiver.wait()
        server.execute("SELECT pg_drop_replication_slot(%s)", RAW_SLOT)


def fresh_target(admin_uri: str, name: str) -> str:
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return admin_uri.rsplit("/", 1)[0] + f"/{name}"


def storage(where: S3Location) -> dict[str, Any]:
    return {
        "s3": {
            "bucket": where.bucket,
            "prefix": where.prefix,
            "endpoint": where.endpoint,
            "forcePathStyle": True,
            "credentialsSecretRef": {"name": "s3"},
        }
    }


def restore_by_operator(namespace: str, where: S3Location, admin_uri: str, round_: int) -> float:
    """A Restore to `latest` from the bucket alone into a new database: apply to Succeeded."""
    fresh_target(admin_uri, TARGETS[0])
    name = f"pitr-{round_}"
    source = {**storage(where), "archive": ARCHIVE, "namespace": namespace}
    body = {
        "apiVersion": "ops.habitat.dev/v1alpha1",
        "kind": "Restore",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "source": {"pointInTime": {"storage": source, "target": {"latest": True}, "database": DATABASE}},
            "target": {"database": {"secretRef": {"name": "target-db"}}},
            "mode": {"createDatabase": True},
        },
    }
    started = time.monotonic()
    kubectl("apply", "-f", "-", stdin=json.dumps(body))

    def done() -> dict[str, Any] | None:
        found = json.loads(kubectl("-n", namespace, "get", "restore", name, "-o", "json"))
        status = found.get("status") or {}
        return status if status.get("phase") in ("Succeeded", "Failed") else None

    status = wait_until(f"Restore {name}", done, 900, 0.2)
    elapsed = time.monotonic() - started
    if status["phase"] != "Succeeded":
        raise SystemExit(f"Restore {name} failed: {status.get('message')}")
    return elapsed


def _decompress_into(client: Any, bucket: str, key: str, *downstream: str, out: Path | None = None) -> None:
    """`download_fileobj | zstd -d` into `downstream` (a command reading stdin) or the file `out`."""
    with out.open("wb") if out else open(os.devnull, "wb") as sink:
        zstd = subprocess.Popen(["zstd", "-d", "-c", "-q"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        consumer = subprocess.Popen(list(downstream) or ["cat"], stdin=zstd.stdout, stdout=sink)
        assert zstd.stdin is not None and zstd.stdout is not None
        zstd.stdout.close()
        client.download_fileobj(bucket, key, zstd.stdin)
        zstd.stdin.close()
        if zstd.wait() != 0 or consumer.wait() != 0:
            raise SystemExit(f"decompressing {key} failed")


def restore_by_hand(where: S3Location, base: str, admin_uri: str, scratch: Path) -> float:
    """The same recovery done by hand with the raw tools; wall time."""
    target = fresh_target(admin_uri, TARGETS[1])
    started = time.monotonic()
    client, root = s3.raw_client(where), f"{base}/{ARCHIVE}"
    listing = client.get_paginator("list_objects_v2").paginate(Bucket=where.bucket, Prefix=f"{root}/")
    keys = [item["Key"].removeprefix(f"{root}/") for page in listing for item in page.get("Contents", [])]
    entry_key = max(key for key in keys if key.startswith("base/") and key.endswith(".json"))
    entry = json.loads(client.get_object(Bucket=where.bucket, Key=f"{root}/{entry_key}")["Body"].read())
    folder = Path(tempfile.mkdtemp(dir=scratch))
    folder.chmod(0o755)
    data, wal, socket = folder / "data", folder / "wal", folder / "socket"
    for made in (data, wal, socket):
        made.mkdir(mode=0o700)
    try:
        tar = f"{root}/base/{entry['id']}.tar"
        _decompress_into(client, where.bucket, tar, "tar", "-x", "-C", str(data))
        first = segment_name(entry["timeline"], parse_lsn(entry["startLsn"]))
        names = sorted(key.removeprefix("wal/") for key in keys if key.startswith("wal/"))
        complete = {name for name in names if SEGMENT_NAME.match(name)}
        for name in names:
            segment = name.removesuffix(PARTIAL_SUFFIX)
            if segment < first or (name != segment and segment in complete):
                continue
            _decompress_into(client, where.bucket, f"{root}/wal/{name}", out=wal / segment)
        (data / "recovery.signal").touch()
        chown_tree(folder, "postgres")
        settings = {
            "listen_addresses": "",
            "port": "5432",
            "unix_socket_directories": str(socket),
            "archive_mode": "off",
            "hot_standby": "off",
            "fsync": "off",
            "restore_command": f"cp {wal}/%f %p",
            "recovery_target_action": "promote",
        }
        argv = [pg_bin("postgres"), "-D", str(data), *(f"-c{k}={v}" for k, v in settings.items())]
        server = subprocess.Popen(as_user("postgres", argv), stderr=subprocess.DEVNULL)
        try:
            recovered = f"postgresql://postgres@/{DATABASE}?host={socket}"
            wait_until("the recovery by hand", lambda: _promoted(recovered), 900, 0.2)
            with psycopg.connect(admin_uri, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{TARGETS[1]}"')
            dump = subprocess.Popen(["pg_dump", "-Fc", "-d", recovered], stdout=subprocess.PIPE)
            restored = subprocess.run(
                ["pg_restore", "--no-owner", "-d", target], stdin=dump.stdout, check=False
            )
            if dump.wait() != 0 or restored.returncode != 0:
                raise SystemExit("pg_dump | pg_restore by hand failed")
        finally:
            server.terminate()
            server.wait()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return time.monotonic() - started


def _promoted(uri: str) -> bool:
    try:
        with psycopg.connect(uri, connect_timeout=2) as conn:
            return not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]  # type: ignore[index]
    except psycopg.OperationalError:
        return False


def rows_of(uri: str) -> int:
    with psycopg.connect(uri) as conn:
        return int(conn.execute("SELECT count(*) FROM pgbench_history").fetchone()[0])  # type: ignore[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=120, help="how long pgbench runs")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--scale", type=int, default=10, help="pgbench scale of the private server")
    parser.add_argument("--rounds", type=int, default=2, help="restore rounds (interleaved)")
    args = parser.parse_args()
    where = s3.location()
    if where is None:
        raise SystemExit("bench.pitr needs the stack's S3 server")
    admin_uri = os.environ["HABITAT_PG_URI"]
    namespace = f"bench-pitr-{secrets.token_hex(3)}"
    base = where.key(namespace)
    server = PrivateServer()
    server.start()
    work = Path(tempfile.mkdtemp(prefix="habitat-bench-pitr-"))
    work.chmod(0o755)  # the recovery servers' user (postgres) passes through
    operator: Operator | None = None
    try:
        server.execute(f"CREATE DATABASE {DATABASE}")
        pg_env = {**os.environ, **ConnectionTarget(server.admin_uri).with_database(DATABASE).env()}
        subprocess.run(["pgbench", "-i", "-q", "-s", str(args.scale), DATABASE], env=pg_env, check=True)
        server.execute("CHECKPOINT")
        kubectl("apply", "--server-side", "-k", str(REPO / "crds"))
        kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        kubectl("create", "namespace", namespace)
        for name, uri in (("db", server.uri), ("target-db", f"{admin_uri.rsplit('/', 1)[0]}/{TARGETS[0]}")):
            kubectl("-n", namespace, "create", "secret", "generic", name, f"--from-literal=uri={uri}")
        kubectl(
            "-n", namespace, "create", "secret", "generic", "s3",
            f"--from-literal=accessKeyId={where.access_key_id}",
            f"--from-literal=secretAccessKey={where.secret_access_key}",
        )  # fmt: skip
        (work / "operator").mkdir()
        operator = Operator(work / "operator", [namespace], [f"--scratch-dir={work}"])
        archive = {
            "apiVersion": "ops.habitat.dev/v1alpha1",
            "kind": "WalArchive",
            "metadata": {"name": ARCHIVE, "namespace": namespace},
            "spec": {"database": {"secretRef": {"name": "db"}}, "storage": storage(where)},
        }
        kubectl("apply", "-f", "-", stdin=json.dumps(archive))

        def streaming() -> bool:
            found = json.loads(kubectl("-n", namespace, "get", "walarchive", ARCHIVE, "-o", "json"))
            status = found.get("status") or {}
            return status.get("phase") == "Ready" and bool(status.get("lastBaseBackup"))

        wait_until("the WalArchive to stream with a base backup", streaming, 300)
        (work / "raw").mkdir()
        with Bucket(where) as bucket, raw_receiver(server, work / "raw"):
            wal_bytes, loaded, samples = run_load(
                server,
                args.seconds,
                args.clients,
                ArchiveEnd(bucket, base),
                lambda: archived_commit(operator, namespace),
            )
        kubectl("-n", namespace, "delete", "walarchive", ARCHIVE, "--timeout=60s")  # the slot with it

        by_operator, by_hand = [], []
        for round_ in range(args.rounds):
            by_operator.append(restore_by_operator(namespace, where, admin_uri, round_))
            print(f"  round {round_ + 1} Restore (latest, from S3): {by_operator[-1]:.2f}s", flush=True)
            by_hand.append(restore_by_hand(where, base, admin_uri, work))
            print(f"  round {round_ + 1} by hand: {by_hand[-1]:.2f}s", flush=True)
        db_uri = f"{admin_uri.rsplit('/', 1)[0]}/"
        expected = rows_of(ConnectionTarget(server.admin_uri).with_database(DATABASE).conninfo())
        recovered = [rows_of(db_uri + name) for name in TARGETS]
        if recovered != [expected, expected]:
            raise SystemExit(f"pgbench_history rows: source {expected}, recovered {recovered}")
    finally:
        if operator is not None:
            operator.stop()
        kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        for name in TARGETS:
            fresh_target(admin_uri, name)
        server.remove()
        shutil.rmtree(work, ignore_errors=True)
    report(wal_bytes, loaded, samples, by_operator, by_hand)


def report(
    wal_bytes: int, loaded: float, samples: Samples, by_operator: list[float], by_hand: list[float]
) -> None:
    assert samples.raw_reached is not None and samples.archive_reached is not None
    raw_rate, archive_rate = wal_bytes / samples.raw_reached, wal_bytes / samples.archive_reached
    throughput = archive_rate / raw_rate
    half = loaded / 2
    first = max((lag for at, lag in samples.lag_bytes if at < half), default=0)
    second = max((lag for at, lag in samples.lag_bytes if at >= half), default=0)
    worst_at = max(samples.lag_bytes, key=lambda sample: sample[1], default=(0.0, 0))[0]
    bounded = second <= first + DEFAULT_SEGMENT_SIZE
    rpo = sorted(samples.rpo_seconds)
    rpo_median = statistics.median(rpo) if rpo else float("inf")
    restore, hand = statistics.median(by_operator), statistics.median(by_hand)
    mib = 1 << 20
    print(f"\nWAL written under load: {wal_bytes / mib:.1f} MiB in {loaded:.1f}s")
    print(
        f"raw pg_receivewal:  all of it after {samples.raw_reached:.1f}s: {raw_rate / mib:.2f} MiB/s\n"
        f"WalArchive (S3):    all of it after {samples.archive_reached:.1f}s: {archive_rate / mib:.2f} MiB/s"
        f"  = {throughput:.3f}x raw (goal >= {GOAL_THROUGHPUT_RATIO}x)"
    )
    print(
        f"archive lag under load: median {statistics.median(lag for _, lag in samples.lag_bytes) / mib:.1f}"
        " MiB,"
        f" worst {first / mib:.1f} MiB (first half) and {second / mib:.1f} MiB (second half):"
        f" {'bounded' if bounded else 'GROWING'}; the worst {worst_at:.1f}s into the load"
    )
    print(
        f"live RPO under load ({len(rpo)} samples): median {rpo_median:.2f}s, p95"
        f" {rpo[int(0.95 * (len(rpo) - 1))] if rpo else float('nan'):.2f}s, worst {max(rpo, default=0):.2f}s"
        f" (goal median <= {GOAL_RPO_SECONDS:.0f}s)"
    )
    print(
        f"Restore to latest from S3: {restore:.2f}s; by hand: {hand:.2f}s; {restore / hand:.3f}x"
        f" (goal <= {GOAL_RESTORE_RATIO}x)"
    )
    met = (
        throughput >= GOAL_THROUGHPUT_RATIO
        and bounded
        and rpo_median <= GOAL_RPO_SECONDS
        and restore / hand <= GOAL_RESTORE_RATIO
    )
    print(f"\ngoals {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
