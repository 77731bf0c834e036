"""What the operator costs at rest with 1,000 objects in 10 namespaces: 500 suspended scheduled
Backups, 250 Backups and 250 restore drills that ran (for real, of a small database) and finished.

Run on the local stack: `make bench` (or `python -m bench.objects` with the stack's env sourced).
Starts `habitat-operator run --all-namespaces` with the stack's admin kubeconfig, creates the
objects, waits until every one has a status (the runs: a finished one), then measures over 30 s at
rest: the operator's CPU
(from /proc/<pid>/stat) and the apiserver's requests (`apiserver_request_total` from its /metrics,
WATCH excluded); then the operator's RSS, apply-to-first-status latency for 20 more objects, and
the requests and RSS of an operator restarted with all these objects in place.
Use a stack no other operator watches: two operators on one apiserver fight over the same objects.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from prometheus_client.parser import text_string_to_metric_families

from bench.kubeapi import GROUP, VERSION, Api, ApiError, custom
from bench.operator_process import REPO, Operator, wait_until

PLURAL = "backups"
RESTORES = "restores"
DATABASE = "bench_objects"
FINISHED = {"Succeeded", "Failed"}
LABEL = "bench.habitat.dev/objects"
NAMESPACE_PREFIX = "bench-objects-"
NOT_COUNTED = {"WATCH", "WATCHLIST"}  # the watches themselves are long-lived requests, not load

# The figures this benchmark checks, as in issue 7.
GOAL_CPU_PERCENT = 2.0
GOAL_RSS_MB = 150.0
GOAL_P50_SECONDS = 0.5
GOAL_PLUGIN_STATUS_SECONDS = 2.0  # issue 22: `kubectl habitat status -A` over all of them


def schedule(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Backup",
        "metadata": {"name": name, "labels": {LABEL: "1"}},
        "spec": {
            "database": {"secretRef": {"name": "habitat-db"}},
            "storage": {"filesystem": {"path": "bench"}},
            "schedule": "0 3 * * *",
            "suspend": True,
        },
    }


def finished_backup(name: str) -> dict[str, Any]:
    body = schedule(name)
    del body["spec"]["schedule"], body["spec"]["suspend"]
    return body


def finished_drill(name: str, backup: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Restore",
        "metadata": {"name": name, "labels": {LABEL: "1"}},
        "spec": {
            "drill": True,
            "source": {"backupRef": {"name": backup}},
            "target": {"database": {"secretRef": {"name": "habitat-db"}}},
        },
    }


def small_database(admin_uri: str) -> str:
    """A database of a few rows for the runs to back up and drill, created afresh."""
    with psycopg.connect(admin_uri, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{DATABASE}"')
    uri = admin_uri.rsplit("/", 1)[0] + f"/{DATABASE}"
    with psycopg.connect(uri, autocommit=True) as db:
        db.execute("CREATE TABLE residents (id int PRIMARY KEY, name text)")
        db.execute("INSERT INTO residents SELECT i, 'resident ' || i FROM generate_series(1, 100) i")
    return uri


def apiserver_requests(api: Api) -> Counter[tuple[str, str]]:
    """apiserver_request_total so far, summed by (verb, group/resource), WATCH excluded."""
    counts: Counter[tuple[str, str]] = Counter()
    for family in text_string_to_metric_families(api.text("/metrics")):
        if family.name != "apiserver_request":
            continue
        for sample in family.samples:
            labels = sample.labels
            if not sample.name.endswith("_total") or labels.get("verb") in NOT_COUNTED:
                continue
            resource = "/".join(filter(None, (labels.get("group"), labels.get("resource"))))
            subresource = labels.get("subresource")
            counts[
                labels["verb"], f"{resource or '(non-resource)'}{'/' + subresource if subresource else ''}"
            ] += int(sample.value)
    return counts


class StatusWatch:
    """Records when each object in a namespace first shows a status phase."""

    def __init__(self, api: Api, namespace: str) -> None:
        self.first_status: dict[str, float] = {}
        self.stopping = False
        self.changed = threading.Condition()
        path = custom(PLURAL, namespace)
        listing = api.request("GET", path)
        self.watch = api.watch(
            path, resourceVersion=listing["metadata"]["resourceVersion"], timeoutSeconds="300"
        )
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for event in self.watch:
                obj = event["object"]
                name = obj["metadata"]["name"]
                if (obj.get("status") or {}).get("phase") and name not in self.first_status:
                    with self.changed:
                        self.first_status[name] = time.monotonic()
                        self.changed.notify_all()
        except Exception:  # the stream ends however it ends once stopped
            if not self.stopping:
                raise

    def wait(self, name: str, timeout: float) -> float:
        with self.changed:
            if not self.changed.wait_for(lambda: name in self.first_status, timeout=timeout):
                raise SystemExit(f"{name} got no status within {timeout:.0f}s")
            return self.first_status[name]

    def stop(self) -> None:
        self.stopping = True
        self.watch.stop()


def plugin_status_seconds(kubectl: str, runs: int = 3) -> float:
    """Median wall time of `kubectl habitat status -A`, the plugin found through PATH as kubectl finds it."""
    path = os.pathsep.join(
        [str(Path(kubectl).parent), str(REPO / ".venv" / "bin"), os.environ.get("PATH", "")]
    )
    seconds = []
    for _ in range(runs):
        started = time.monotonic()
        result = subprocess.run(
            [kubectl, "habitat", "status", "-A"],
            env={**os.environ, "PATH": path},
            capture_output=True,
            check=False,
        )
        seconds.append(time.monotonic() - started)
        assert result.returncode in (0, 1), result.stderr.decode()  # 1: some run failed, as it may
    return statistics.median(seconds)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))]


@dataclass(frozen=True)
class Figures:
    cpu_percent: float
    rss_mb: float
    requests: Counter[tuple[str, str]]
    latencies: list[float]
    restart_rss_mb: float
    restart_requests: Counter[tuple[str, str]]

    @property
    def ours(self) -> dict[tuple[str, str], int]:
        return operator_requests(self.requests)

    @property
    def met(self) -> bool:
        return (
            self.cpu_percent < GOAL_CPU_PERCENT
            and self.rss_mb < GOAL_RSS_MB
            and not self.ours
            and statistics.median(self.latencies) < GOAL_P50_SECONDS
        )


def operator_requests(requests: Counter[tuple[str, str]]) -> dict[tuple[str, str], int]:
    return {key: n for key, n in requests.items() if key[1].startswith(GROUP) and n}


def create_objects(api: Api, namespaces: list[str], schedules: int, runs: int) -> None:
    """The schedules, then `runs` one-shot Backups, then a drill of each once its Backup is done."""

    def create(plural: str, i: int, body: dict[str, Any]) -> None:
        api.request("POST", custom(plural, namespaces[i % len(namespaces)]), body)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: create(PLURAL, i, schedule(f"s-{i:05d}")), range(schedules)))
        list(pool.map(lambda i: create(PLURAL, i, finished_backup(f"b-{i:05d}")), range(runs)))
    wait_until("the one-shot Backups to finish", lambda: count_finished(api, PLURAL) >= runs, 900, 2)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: create(RESTORES, i, finished_drill(f"r-{i:05d}", f"b-{i:05d}")), range(runs)))


def labelled(api: Api, plural: str) -> list[dict[str, Any]]:
    return list(api.request("GET", custom(plural), labelSelector=LABEL)["items"])


def count_finished(api: Api, plural: str) -> int:
    items = labelled(api, plural)
    return sum(1 for item in items if (item.get("status") or {}).get("phase") in FINISHED)


def count_with_status(api: Api) -> int:
    """Objects that have a status; runs count once they have finished."""
    items = [item for plural in (PLURAL, RESTORES) for item in labelled(api, plural)]
    return sum(
        1
        for item in items
        if (phase := (item.get("status") or {}).get("phase"))
        and ("schedule" in item["spec"] or phase in FINISHED)
    )


def measure_latency(api: Api, namespace: str, count: int) -> list[float]:
    """Seconds from sending each create to the watch showing its first status, one object at a time."""
    watch = StatusWatch(api, namespace)
    latencies = []
    try:
        for i in range(count):
            name = f"latency-{i:03d}"
            sent = time.monotonic()
            api.request("POST", custom(PLURAL, namespace), schedule(name))
            latencies.append(watch.wait(name, timeout=60) - sent)
            time.sleep(0.2)
    finally:
        watch.stop()
    return latencies


def report(figures: Figures, schedules: int, runs: int, namespaces: int, rest_seconds: float) -> None:
    ours = figures.ours
    total = sum(ours.values())
    p50, p95 = statistics.median(figures.latencies), percentile(figures.latencies, 0.95)
    print(
        f"\n{schedules} suspended scheduled Backups, {runs} finished Backups and {runs} finished restore"
        f" drills, {namespaces} namespaces, at rest for {rest_seconds:.0f}s:"
    )
    print(f"  operator CPU          {figures.cpu_percent:7.2f}% of a core   (goal < {GOAL_CPU_PERCENT}%)")
    print(f"  operator RSS          {figures.rss_mb:7.1f} MB            (goal < {GOAL_RSS_MB:.0f} MB)")
    print(f"  {GROUP} requests {total:6d} ({total / rest_seconds:.2f}/s)  (goal: none beyond the watches)")
    for (verb, resource), count in sorted(ours.items()):
        print(f"    {verb:8} {resource:40} {count}")
    others = {key: n for key, n in figures.requests.items() if key not in ours and n}
    print(f"  other non-WATCH requests (controller-manager, this benchmark): {sum(others.values())}")
    for (verb, resource), count in sorted(others.items(), key=lambda kv: -kv[1])[:6]:
        print(f"    {verb:8} {resource:40} {count}")
    print(
        f"  apply-to-first-status, {len(figures.latencies)} new objects: p50 {p50:.3f}s, p95 {p95:.3f}s",
        end="",
    )
    print(f"  (goal p50 < {GOAL_P50_SECONDS}s)")
    print(f"  goals {'met' if figures.met else 'NOT met'}")
    restart = operator_requests(figures.restart_requests)
    print("after a restart with the same objects (the watches' initial lists, no writes expected):")
    print(f"  operator RSS          {figures.restart_rss_mb:7.1f} MB")
    print(f"  {GROUP} requests {sum(restart.values()):6d}")
    for (verb, resource), count in sorted(restart.items()):
        print(f"    {verb:8} {resource:40} {count}")


def cleanup(api: Api, namespaces: list[str], operator: Operator) -> None:
    """Deletes the namespaces; the operator removes its finalizers, or this does once it has stopped."""
    print("\ncleaning up ...", flush=True)
    for namespace in namespaces:
        try:
            api.request("DELETE", f"/api/v1/namespaces/{namespace}")
        except ApiError as error:
            if error.status != 404:
                raise

    def namespaces_left() -> list[Any]:
        return list(api.request("GET", "/api/v1/namespaces", labelSelector=LABEL)["items"])

    deadline = time.monotonic() + 120
    while namespaces_left() and time.monotonic() < deadline:
        time.sleep(2)
    operator.stop()
    for plural in (PLURAL, RESTORES):
        left = labelled(api, plural)
        if left:
            print(f"the operator left {len(left)} {plural} finalizers after 120 s; removing them")
        for item in left:
            meta = item["metadata"]
            patch = {"metadata": {"finalizers": None}}
            path = custom(plural, meta["namespace"], meta["name"])
            try:
                api.request("PATCH", path, patch, "application/merge-patch+json")
            except ApiError as error:
                if error.status != 404:
                    raise
    wait_until("the namespaces to go", lambda: not namespaces_left(), 300, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--schedules", type=int, default=500, help="suspended scheduled Backups")
    parser.add_argument("--runs", type=int, default=250, help="finished Backups, and as many restore drills")
    parser.add_argument("--namespaces", type=int, default=10)
    parser.add_argument("--rest-seconds", type=float, default=30.0)
    parser.add_argument("--settle-seconds", type=float, default=15.0, help="wait after the last status")
    parser.add_argument("--latency-objects", type=int, default=20)
    args = parser.parse_args()

    api = Api()  # the stack's admin kubeconfig (KUBECONFIG)
    kubectl = os.environ.get("HABITAT_KUBECTL", "kubectl")
    for argv in (
        ["apply", "--server-side", "-k", str(REPO / "crds")],
        ["wait", "--for=condition=Established", "crd", "--all", "--timeout=60s"],
    ):
        subprocess.run([kubectl, *argv], check=True, capture_output=True)
    namespaces = [f"{NAMESPACE_PREFIX}{i:02d}" for i in range(args.namespaces)]

    with tempfile.TemporaryDirectory() as tmp:
        operators = [Operator(Path(tmp))]
        try:
            uri = small_database(os.environ["HABITAT_PG_URI"])
            for namespace in namespaces:
                api.request(
                    "POST", "/api/v1/namespaces", {"metadata": {"name": namespace, "labels": {LABEL: "1"}}}
                )
                secret = {"metadata": {"name": "habitat-db"}, "stringData": {"uri": uri}}
                api.request("POST", f"/api/v1/namespaces/{namespace}/secrets", secret)
            objects = args.schedules + 2 * args.runs
            print(f"operator pid {operators[0].process.pid}; creating {objects} objects ...", flush=True)
            started = time.monotonic()
            create_objects(api, namespaces, args.schedules, args.runs)
            created = time.monotonic() - started
            wait_until(
                "every object to have a status (runs: to finish)",
                lambda: count_with_status(api) >= objects,
                timeout=900,
                interval=2,
            )
            print(f"created in {created:.1f}s; all have a status after {time.monotonic() - started:.1f}s")
            time.sleep(args.settle_seconds)

            cpu_before, requests_before = operators[0].cpu_seconds(), apiserver_requests(api)
            time.sleep(args.rest_seconds)
            cpu_after, requests_after = operators[0].cpu_seconds(), apiserver_requests(api)
            rss = operators[0].rss_mb()
            latencies = measure_latency(api, namespaces[0], args.latency_objects)
            status_seconds = plugin_status_seconds(kubectl)
            print(
                f"kubectl habitat status -A: {status_seconds:.2f}s, median of 3"
                f" (goal < {GOAL_PLUGIN_STATUS_SECONDS}s)"
            )

            operators[0].stop()
            before_restart = apiserver_requests(api)
            operators.append(Operator(Path(tmp)))
            time.sleep(args.settle_seconds)
            figures = Figures(
                cpu_percent=100 * (cpu_after - cpu_before) / args.rest_seconds,
                rss_mb=rss,
                requests=requests_after - requests_before,
                latencies=latencies,
                restart_rss_mb=operators[-1].rss_mb(),
                restart_requests=apiserver_requests(api) - before_restart,
            )
            report(figures, args.schedules, args.runs, args.namespaces, args.rest_seconds)
        finally:
            cleanup(api, namespaces, operators[-1])


if __name__ == "__main__":
    main()
