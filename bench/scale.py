"""ScalePolicy: from a queue-depth change to the patched replicas, and the CPU of polling.

Run on the local stack: `make bench` (or `python -m bench.scale` with the stack's env sourced).
1. Latency: one policy, `pollingInterval` 1 s, an AMQP trigger (exact depth); 20 changes of the
   queue's depth at a random phase of the poll, each timed from the broker's publish confirm (or
   the purge) to the Deployment's new spec.replicas seen by a watch. Beside it, the raw tool in the
   same run: the same read (passive declare) and write (server-side apply of /scale) done directly,
   which is the least any poll costs.
2. CPU: 100 policies on 100 Deployments, each polling every second; the operator's CPU (from
   /proc/<pid>/stat) over the measured seconds, per policy and poll.
Use a stack no other operator watches.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import random
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pika

from bench.kubeapi import GROUP, VERSION, Api, custom
from bench.operator_process import REPO, Operator, wait_until

NAMESPACE = "bench-scale"
DEPLOYMENTS = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments"
GOAL_MARGIN_SECONDS = 0.2


def deployment(name: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "registry.invalid/habitat:1"}]},
            },
        },
    }


def policy(name: str, queue: str) -> dict[str, Any]:
    fast = {
        "stabilizationWindowSeconds": 0,
        "policies": [{"type": "Percent", "value": 1000, "periodSeconds": 1}],
    }
    trigger = {"queue": queue, "targetPerReplica": 10, "source": "amqp", "secretRef": {"name": "rabbitmq"}}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ScalePolicy",
        "metadata": {"name": name},
        "spec": {
            "target": {"kind": "Deployment", "name": name},
            "minReplicas": 1,
            "maxReplicas": 50,
            "pollingInterval": 1,
            "behavior": {"scaleUp": fast, "scaleDown": fast},
            "triggers": [{"name": "jobs", "type": "rabbitmq", "rabbitmq": trigger}],
        },
    }


class ReplicaWatch:
    """Records (time, spec.replicas) of one Deployment from a watch, as the apiserver reports them."""

    def __init__(self, api: Api, name: str) -> None:
        self.seen: list[tuple[float, int]] = []
        self._watch = api.watch(DEPLOYMENTS, fieldSelector=f"metadata.name={name}")
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with contextlib.suppress(OSError, ValueError):  # the stream ends however it ends once stopped
            for event in self._watch:
                self.seen.append((time.monotonic(), int(event["object"]["spec"]["replicas"])))

    def first_at(self, replicas: int, after: float) -> float | None:
        return next((t for t, r in self.seen if t >= after and r == replicas), None)

    def stop(self) -> None:
        self._watch.stop()


class Queue:
    def __init__(self, amqp_uri: str, name: str) -> None:
        self.name = name
        self.connection = pika.BlockingConnection(pika.URLParameters(amqp_uri))
        self.channel = self.connection.channel()
        self.channel.confirm_delivery()
        self.channel.queue_declare(name, durable=True)
        self.channel.queue_purge(name)

    def set_depth(self, depth: int) -> None:
        self.channel.queue_purge(self.name)
        for _ in range(depth):
            self.channel.basic_publish("", self.name, b"job")

    def delete(self) -> None:
        self.channel.queue_delete(self.name)
        self.connection.close()


def raw_poll_seconds(amqp_uri: str, queue: str, api: Api, rounds: int = 20) -> float:
    """The raw tools' floor: a passive declare on a new connection, then a server-side apply of /scale."""
    times = []
    for i in range(rounds):
        started = time.monotonic()
        connection = pika.BlockingConnection(pika.URLParameters(amqp_uri))
        connection.channel().queue_declare(queue, passive=True)
        connection.close()
        body = {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {"name": "raw"},
            "spec": {"replicas": 1 + i % 2},
        }
        path = f"{DEPLOYMENTS}/raw/scale"
        api.request("PATCH", path, body, "application/apply-patch+yaml", fieldManager="bench", force="true")
        times.append(time.monotonic() - started)
    return statistics.median(times)


def latency(api: Api, amqp_uri: str, changes: int) -> list[float]:
    queue = Queue(amqp_uri, "bench-scale-latency")
    api.request("POST", DEPLOYMENTS, deployment("latency"))
    api.request("POST", custom("scalepolicies", NAMESPACE), policy("latency", queue.name))
    watch = ReplicaWatch(api, "latency")
    wait_until("the policy's first poll", lambda: watch.first_at(1, 0) is not None, 30, 0.1)
    results, replicas = [], 1
    for i in range(changes):
        time.sleep(random.uniform(0, 1))  # a random phase of the poll
        replicas = 2 + i % 5 if replicas == 1 else 1
        queue.set_depth(10 * replicas if replicas > 1 else 0)  # confirmed by the broker
        changed = time.monotonic()
        seen = wait_until(
            f"replicas {replicas}", functools.partial(watch.first_at, replicas, changed), 30, 0.02
        )
        results.append(seen - changed)
    watch.stop()
    queue.delete()
    return results


def cpu_per_poll(
    api: Api, operator: Operator, amqp_uri: str, policies: int, seconds: float
) -> tuple[float, float]:
    queue = Queue(amqp_uri, "bench-scale-cpu")
    queue.set_depth(25)
    for i in range(policies):
        name = f"p{i:03d}"
        api.request("POST", DEPLOYMENTS, deployment(name))
        api.request("POST", custom("scalepolicies", NAMESPACE), policy(name, queue.name))

    def all_scaled() -> bool:
        items = api.request("GET", DEPLOYMENTS)["items"]
        scaled = [d for d in items if d["metadata"]["name"].startswith("p") and d["spec"]["replicas"] == 3]
        return len(scaled) == policies

    wait_until("every policy to scale its Deployment", all_scaled, 120, 1)
    cpu_before, started = operator.cpu_seconds(), time.monotonic()
    time.sleep(seconds)
    cpu = operator.cpu_seconds() - cpu_before
    elapsed = time.monotonic() - started
    queue.delete()
    polls = policies * elapsed  # one poll per policy per second
    return cpu / polls, 100 * cpu / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument("--policies", type=int, default=100)
    parser.add_argument("--cpu-seconds", type=float, default=30.0)
    args = parser.parse_args()

    api = Api()  # the stack's admin kubeconfig (KUBECONFIG)
    amqp_uri = os.environ["HABITAT_AMQP_URI"]
    kubectl = os.environ.get("HABITAT_KUBECTL", "kubectl")
    subprocess.run(
        [kubectl, "apply", "--server-side", "-k", str(REPO / "crds")], check=True, capture_output=True
    )
    api.request("POST", "/api/v1/namespaces", {"metadata": {"name": NAMESPACE}})
    secret = {"metadata": {"name": "rabbitmq"}, "stringData": {"uri": amqp_uri}}
    api.request("POST", f"/api/v1/namespaces/{NAMESPACE}/secrets", secret)
    api.request("POST", DEPLOYMENTS, deployment("raw"))
    with tempfile.TemporaryDirectory() as tmp:
        operator = Operator(Path(tmp))
        try:
            raw_queue = Queue(amqp_uri, "bench-scale-raw")
            raw = raw_poll_seconds(amqp_uri, raw_queue.name, api)
            raw_queue.delete()
            times = latency(api, amqp_uri, args.changes)
            median, worst = statistics.median(times), max(times)
            goal = 1 + GOAL_MARGIN_SECONDS
            print(f"queue-depth change -> replicas, pollingInterval 1 s, {len(times)} changes:")
            print(f"  operator: median {median:.3f} s, max {worst:.3f} s (goal: median <= {goal:.1f} s)")
            print(f"  raw read + write (passive declare, SSA of /scale): {raw:.3f} s")
            print(f"  median vs raw {median / raw:.1f}x; the poll's wait is half the interval on average")
            per_poll, percent = cpu_per_poll(api, operator, amqp_uri, args.policies, args.cpu_seconds)
            print(
                f"{args.policies} policies polling each second: {percent:.1f}% of a core, "
                f"{per_poll * 1000:.2f} ms of CPU per policy per poll; RSS {operator.rss_mb():.0f} MB"
            )
        finally:
            # While the operator runs: it removes the finalizer of each policy's daemon.
            api.request("DELETE", f"/api/v1/namespaces/{NAMESPACE}")
            wait_until("the namespace to go", lambda: NAMESPACE not in namespaces(api), 180)
            operator.stop()


def namespaces(api: Api) -> set[str]:
    return {item["metadata"]["name"] for item in api.request("GET", "/api/v1/namespaces")["items"]}


if __name__ == "__main__":
    main()
