"""ReplayJob versus a raw pika loop over the same 200k rows, with the same confirm window, in the same run.

Run on the local stack: `make bench` (or `python -m bench.replay` with the stack's env sourced).
The raw loop reads the rows by keyset pages with psycopg and publishes them with pika's asyncio
adapter, `WINDOW` messages in flight, persistent and mandatory, into one durable queue. The ReplayJob
runs in the `habitat-operator run` process; its end-to-end rate is from `kubectl apply` to
Succeeded, and its steady rate is measured from its status between 10% and 90%.

Then a pathological page: 1,500 events of about 190 KB each, replayed with `batchSize: 10000`
(everything in one page, were pages cut only by count). It reports both rates and the growth of
peak RSS during each: the raw loop's (1,000 rows a page, so about 190 MB a page) and the
operator's, which its byte budget (`--replay-batch-bytes`) bounds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pika
import psycopg
from pika.adapters.asyncio_connection import AsyncioConnection

from bench.kubeapi import Api, custom
from bench.operator_process import REPO, Operator
from habitat_operator.controllers.replayjob.run import WINDOW

sys.path.insert(0, str(REPO / "scripts"))
from sample_database import create_events

DATABASE = "habitat_bench_replay"
LARGE_DATABASE = "habitat_bench_replay_large"
LARGE_EVENTS = 1500
NAMESPACE = "habitat-bench"
PAGE = 1000


def ensure_database(admin_uri: str, events: int, name: str = DATABASE, large: bool = False) -> str:
    """The event store, created once and reused while it holds `events` events; `large`: each
    payload about 190 KB."""
    uri = admin_uri.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(admin_uri, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            with psycopg.connect(uri) as db:
                row = db.execute("SELECT count(*) FROM events").fetchone()
            if row and row[0] == events:
                return uri
            conn.execute(f"DROP DATABASE {name} WITH (FORCE)")
        conn.execute(f"CREATE DATABASE {name}")
    print(f"creating {events} events ...", flush=True)
    with psycopg.connect(uri) as db:
        create_events(db, events)
        if large:
            db.execute("UPDATE events SET payload = jsonb_build_object('blob', repeat(md5(id::text), 6000))")
    return uri


def peak_rss_mib() -> float:
    """This process's peak RSS since the last reset_peak_rss()."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def reset_peak_rss(pid: int | str = "self") -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


async def raw_pika(db_uri: str, amqp_uri: str, queue: str) -> int:
    """The baseline: keyset pages, and a window of unconfirmed messages; returns how many were confirmed."""
    loop = asyncio.get_running_loop()
    opened: asyncio.Future[Any] = loop.create_future()
    room = asyncio.Event()
    state = {"next": 1, "settled": 0, "in_flight": 0}

    def on_confirm(frame: Any) -> None:
        done = frame.method.delivery_tag - state["settled"] if frame.method.multiple else 1
        state["settled"] += done
        state["in_flight"] -= done
        room.set()

    def on_channel(channel: Any) -> None:
        channel.confirm_delivery(on_confirm, callback=lambda _: opened.set_result(channel))

    AsyncioConnection(
        pika.URLParameters(amqp_uri),
        on_open_callback=lambda c: c.channel(on_open_callback=on_channel),
        custom_ioloop=loop,
    )
    channel = await opened
    after = 0
    async with await psycopg.AsyncConnection.connect(db_uri) as conn:
        while True:
            rows = await (
                await conn.execute(
                    "SELECT id, event_type, occurred_at, payload::text, correlation_id, headers"
                    " FROM events WHERE id > %s ORDER BY id LIMIT %s",
                    (after, PAGE),
                )
            ).fetchall()
            if not rows:
                break
            replayed_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            for event_id, event_type, occurred_at, payload, correlation_id, headers in rows:
                while state["in_flight"] >= WINDOW:
                    room.clear()
                    await room.wait()
                properties = pika.BasicProperties(  # the same message as the ReplayJob's
                    message_id=str(event_id),
                    delivery_mode=2,
                    content_type="application/json",
                    type=event_type,
                    correlation_id=correlation_id,
                    timestamp=int(occurred_at.timestamp()),
                    headers={
                        **headers,
                        "x-habitat-replay-job": "habitat-bench/raw",
                        "x-habitat-replay-job-uid": "00000000-0000-0000-0000-000000000000",
                        "x-habitat-event-type": event_type,
                        "x-habitat-replayed-at": replayed_at,
                    },
                )
                channel.basic_publish("", queue, payload.encode(), properties, mandatory=True)
                state["in_flight"] += 1
            after = rows[-1][0]
    while state["in_flight"]:
        room.clear()
        await room.wait()
    channel.connection.close()
    return state["settled"]


class Stack:
    def __init__(self) -> None:
        self.kubectl = os.environ["HABITAT_KUBECTL"]

    def run(self, *args: str, stdin: str | None = None) -> str:
        result = subprocess.run(
            [self.kubectl, "-n", NAMESPACE, *args], input=stdin, capture_output=True, text=True, check=True
        )
        return result.stdout


def replay_job(
    stack: Stack, queue: str, total: int, secret: str = "events-db", batch_size: int = 1000
) -> tuple[float, float]:
    """(end-to-end events/s from apply to Succeeded, steady events/s between 10% and 90%).

    Progress comes from a watch (one request, pushed status changes), not from polling kubectl,
    which would take CPU from the operator on a 2-core machine."""
    name = f"bench-{secrets.token_hex(3)}"
    job = {
        "apiVersion": "ops.habitat.dev/v1alpha1",
        "kind": "ReplayJob",
        "metadata": {"name": name},
        "spec": {
            "source": {"database": {"secretRef": {"name": secret}}},
            "selector": {"from": "2000-01-01T00:00:00Z"},
            "target": {"rabbitmq": {"secretRef": {"name": "broker"}}, "queue": {"name": queue}},
            "maxEvents": total,
            "batchSize": batch_size,
        },
    }
    api = Api()
    started = time.perf_counter()
    api.request("POST", custom("replayjobs", NAMESPACE), job)
    marks: list[tuple[float, int]] = []
    watch = api.watch(
        custom("replayjobs", NAMESPACE), fieldSelector=f"metadata.name={name}", timeoutSeconds="600"
    )
    for event in watch:
        now = time.perf_counter()
        status = event["object"].get("status") or {}
        if status.get("phase") == "Failed":
            raise SystemExit(f"ReplayJob failed: {status.get('message')}")
        if status.get("phase") == "Succeeded":
            watch.stop()
            break
        published = status.get("publishedEvents") or 0
        if total * 0.1 <= published <= total * 0.9:
            marks.append((now, published))
    else:  # the watch timed out: no figure to report
        raise SystemExit(f"ReplayJob {name} did not finish within 600 s")
    elapsed = now - started
    api.request("DELETE", custom("replayjobs", NAMESPACE, name))
    if len(marks) < 2:
        return total / elapsed, total / elapsed
    return total / elapsed, (marks[-1][1] - marks[0][1]) / (marks[-1][0] - marks[0][0])


def purge(amqp_uri: str, queue: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_uri))
    connection.channel().queue_purge(queue)
    connection.close()


def large_payloads(stack: Stack, operator: Operator, db_uri: str, amqp_uri: str, queue: str) -> None:
    """The pathological page: the rates and the growth of peak RSS of the raw loop and the ReplayJob."""
    reset_peak_rss()
    before = peak_rss_mib()
    started = time.perf_counter()
    confirmed = asyncio.run(raw_pika(db_uri, amqp_uri, queue))
    raw_rate, raw_growth = confirmed / (time.perf_counter() - started), peak_rss_mib() - before
    purge(amqp_uri, queue)
    reset_peak_rss(operator.process.pid)
    before = operator.rss_mb()
    rate, _ = replay_job(stack, queue, LARGE_EVENTS, secret="events-db-large", batch_size=10_000)
    growth = operator.peak_rss_mib() - before
    purge(amqp_uri, queue)
    print(f"\n{LARGE_EVENTS} events of about 190 KB, ReplayJob batchSize 10000:")
    print(f"  raw pika loop:        {raw_rate:8.0f} events/s   1.00x   peak RSS +{raw_growth:.0f} MiB")
    print(
        f"  ReplayJob end to end  {rate:8.0f} events/s   {rate / raw_rate:.2f}x"
        f"   peak RSS +{growth:.0f} MiB (the operator)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    amqp_uri = os.environ["HABITAT_AMQP_URI"]
    db_uri = ensure_database(os.environ["HABITAT_PG_URI"], args.events)
    large_uri = ensure_database(os.environ["HABITAT_PG_URI"], LARGE_EVENTS, LARGE_DATABASE, large=True)
    stack = Stack()
    subprocess.run(
        [stack.kubectl, "apply", "--server-side", "-k", str(REPO / "crds")], check=True, capture_output=True
    )
    subprocess.run([stack.kubectl, "create", "namespace", NAMESPACE], capture_output=True, check=False)
    for name, uri in (("events-db", db_uri), ("events-db-large", large_uri), ("broker", amqp_uri)):
        stack.run("delete", "secret", name, "--ignore-not-found")
        stack.run("create", "secret", "generic", name, f"--from-literal=uri={uri}")
    queue = f"bench-{secrets.token_hex(3)}"
    connection = pika.BlockingConnection(pika.URLParameters(amqp_uri))
    connection.channel().queue_declare(queue, durable=True)
    connection.close()
    raw: list[float] = []
    end_to_end: list[float] = []
    steady: list[float] = []
    with tempfile.TemporaryDirectory() as workdir:
        operator = Operator(Path(workdir), namespaces=[NAMESPACE])
        try:
            for round_ in range(args.rounds):
                started = time.perf_counter()
                confirmed = asyncio.run(raw_pika(db_uri, amqp_uri, queue))
                raw.append(confirmed / (time.perf_counter() - started))
                purge(amqp_uri, queue)
                rate, steady_rate = replay_job(stack, queue, args.events)
                end_to_end.append(rate)
                steady.append(steady_rate)
                purge(amqp_uri, queue)
                print(
                    f"  round {round_ + 1}: raw {raw[-1]:.0f}/s, ReplayJob {rate:.0f}/s end to end,"
                    f" {steady_rate:.0f}/s steady",
                    flush=True,
                )
            large_payloads(stack, operator, large_uri, amqp_uri, queue)
        finally:
            operator.stop()
    connection = pika.BlockingConnection(pika.URLParameters(amqp_uri))
    connection.channel().queue_delete(queue)
    connection.close()
    raw_median = statistics.median(raw)
    print(f"\n{args.events} events, window {WINDOW}, medians of {args.rounds} rounds:")
    print(f"  raw pika loop:        {raw_median:8.0f} events/s   1.00x")
    for label, values in (("ReplayJob end to end", end_to_end), ("ReplayJob steady", steady)):
        median = statistics.median(values)
        print(f"  {label:<21} {median:8.0f} events/s   {median / raw_median:.2f}x")


if __name__ == "__main__":
    main()
