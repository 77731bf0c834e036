"""The Grafana dashboard's every query, run by the stack's Prometheus against what the running
operator exported for objects of all six kinds: each parses, and returns data where it should."""

from __future__ import annotations

import json
import time
from typing import Any

import psycopg
import pytest

from sample_database import create_events
from tests.e2e.conftest import OperatorProcess
from tests.e2e.helpers import (
    backup,
    condition,
    deployment,
    drill,
    inline,
    migration,
    policy,
    queue_trigger,
    replayjob,
    seed,
    wait_phase,
    walarchive,
)
from tests.e2e.prometheus import get, scraping
from tests.harness import REPO, Kubectl, Stack

pytestmark = pytest.mark.e2e

DASHBOARD = REPO / "charts" / "habitat-operator" / "files" / "grafana-dashboard.json"
# Panels about trouble or about S3: nothing in this test fails or uses a bucket. A drill schedule's
# first drill waits for its cron minute: test_objectives.py sees the RTO series in Prometheus.
MAY_BE_EMPTY = {
    "Object storage traffic (5m)",
    "Gaps in WAL archives by reason (1d)",
    "Measured RTO (newest drill) and its objective",
}


def queries() -> list[tuple[str, str]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [(p["title"], t["expr"]) for p in panels if p["type"] != "row" for t in p["targets"]]


def empty_panels(stack: Stack, namespace: str) -> list[str]:
    return [
        title
        for title, expr in queries()
        if title not in MAY_BE_EMPTY
        and not get(stack, "/api/v1/query", query=expr.replace("$namespace", namespace))["result"]
    ]


def objects(queue: str) -> list[tuple[dict[str, Any], str, set[str]]]:
    window = {"start": "0 0 * * *", "duration": "24h", "timezone": "UTC", "minReplicas": 2}
    daytime = {"name": "daytime", "type": "schedule", "schedule": window}
    ledger = {"database": {"secretRef": {"name": "habitat-db"}}, "table": "ledger"}
    return [
        (backup("nightly"), "backup", {"Succeeded"}),
        (drill("drill", "nightly"), "restore", {"Succeeded"}),
        (migration("schema", source=inline((1, "init", "CREATE TABLE t (id int)"))), "migration", {"Ready"}),
        (
            replayjob("replay", {"eventIds": [1, 2, 3]}, {"queue": {"name": queue}}, source=ledger),
            "replayjob",
            {"Succeeded"},
        ),
        (
            walarchive("wal", objectives={"rpo": "1h"}),
            "walarchive",
            {"Ready"},
        ),  # the stack's server allows replication
        (
            policy("workers", "workers", [daytime, queue_trigger("jobs", queue)]),
            "",
            set(),
        ),
    ]


def test_every_panel_query_runs_and_returns_data(
    stack: Stack,
    operator_alive: OperatorProcess,
    kubectl: Kubectl,
    namespace: str,
    db_secret: str,
    fresh_database: str,
    amqp_uri: str,
    fresh_queue: str,
) -> None:
    seed(fresh_database, rows=10)
    with psycopg.connect(fresh_database) as conn:
        create_events(conn, 3, table="ledger")
    kubectl.run("create", "secret", "generic", "broker", f"--from-literal=uri={amqp_uri}")
    kubectl.run("create", "secret", "generic", "rabbitmq", f"--from-literal=uri={stack.rabbitmq_api}")
    kubectl.apply(deployment("workers"))
    with scraping(stack, operator_alive):
        for manifest, kind, phases in objects(fresh_queue):
            kubectl.apply(manifest)
            if kind:
                wait_phase(kubectl, kind, manifest["metadata"]["name"], phases, operator_alive, timeout=180)
        with psycopg.connect(fresh_database) as conn:  # a commit for the archive's newest commit time
            conn.execute("INSERT INTO audit (note) VALUES ('archived')")
        deadline = time.monotonic() + 30  # a scrape (every second) and a rule evaluation
        while (empty := empty_panels(stack, namespace)) and time.monotonic() < deadline:
            time.sleep(1)
        assert not empty, f"panels without data: {empty}"
    wal = kubectl.get("walarchive", "wal")  # its RPO objective of an hour holds
    assert condition(wal, "ObjectivesMet")["status"] == "True", wal["status"]
    assert wal["status"]["recoverability"]["objectivesMet"] is True
    kubectl.run("delete", "walarchive", "wal", "--wait=true", "--timeout=60s")  # its slot goes with it
