"""The shipped alerts in a real Prometheus (the stack's), scraping the running operator: a Backup
that fails fires HabitatBackupFailed, and a schedule that never succeeds fires HabitatBackupTooOld."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import OperatorProcess
from tests.e2e.test_backup import backup, wait_for
from tests.harness import REPO, Kubectl, Stack, dev_stack

pytestmark = pytest.mark.e2e

FILE = "habitat-e2e"
JOB = "habitat-operator-metrics"  # the Service's name, which a ServiceMonitor makes the job label


def prometheus_get(stack: Stack, path: str) -> Any:
    with urllib.request.urlopen(stack.prometheus_url + path, timeout=5) as response:
        return json.loads(response.read())["data"]


def reload(stack: Stack) -> None:
    request = urllib.request.Request(stack.prometheus_url + "/-/reload", method="POST")
    urllib.request.urlopen(request, timeout=10).close()


@pytest.fixture
def prometheus(stack: Stack, operator_alive: OperatorProcess) -> Iterator[Stack]:
    """The shipped rules loaded, with every `for:` cut to 5s so a test need not wait minutes (the
    expressions are the shipped ones), and the operator scraped as the chart's ServiceMonitor would."""
    folder = dev_stack.prometheus_dir()
    shipped = yaml.safe_load((REPO / "manifests" / "base" / "alerts.yaml").read_text())["spec"]["groups"]
    text = re.sub(r"(?m)^(\s+for: ).*$", r"\g<1>5s", yaml.safe_dump({"groups": shipped}, sort_keys=False))
    (folder / "rules" / f"{FILE}.yaml").write_text(text)
    target = [{"targets": [f"127.0.0.1:{operator_alive.metrics_port}"], "labels": {"job": JOB}}]
    (folder / "targets" / f"{FILE}.json").write_text(json.dumps(target))
    reload(stack)
    wait_for(
        "Prometheus to scrape the operator",
        lambda: any(
            t["labels"].get("job") == JOB and t["health"] == "up"
            for t in prometheus_get(stack, "/api/v1/targets")["activeTargets"]
        ),
        timeout=30,
    )
    yield stack
    (folder / "rules" / f"{FILE}.yaml").unlink()
    (folder / "targets" / f"{FILE}.json").unlink()
    reload(stack)


def firing(stack: Stack, alert: str, **labels: str) -> bool:
    return any(
        a["labels"].get("alertname") == alert
        and a["state"] == "firing"
        and all(a["labels"].get(k) == v for k, v in labels.items())
        for a in prometheus_get(stack, "/api/v1/alerts")["alerts"]
    )


def test_failed_backup_and_stale_schedule_fire_in_prometheus(
    prometheus: Stack, kubectl: Kubectl, namespace: str, operator_alive: OperatorProcess
) -> None:
    kubectl.run(
        "create",
        "secret",
        "generic",
        "broken-db",
        "--from-literal=uri=postgresql://nobody:x@127.0.0.1:1/none",
    )
    broken = {"secretRef": {"name": "broken-db"}}
    kubectl.apply(backup("doomed", database=broken, retry={"limit": 0, "backoff": "1s"}))
    started = time.monotonic()
    # An every-minute schedule that never succeeds is "too old" two minutes after its creation.
    kubectl.apply(backup("stale", database=broken, schedule="* * * * *", retry={"limit": 0, "backoff": "1s"}))

    wait_for(
        "HabitatBackupFailed to fire",
        lambda: firing(prometheus, "HabitatBackupFailed", namespace=namespace, backup="doomed"),
        timeout=60,
        operator=operator_alive,
    )
    failed_after = time.monotonic() - started
    wait_for(
        "HabitatBackupTooOld to fire",
        lambda: firing(prometheus, "HabitatBackupTooOld", namespace=namespace, backup="stale"),
        timeout=200,
        operator=operator_alive,
    )
    too_old_after = time.monotonic() - started
    print(
        f"HabitatBackupFailed fired after {failed_after:.0f}s, HabitatBackupTooOld after {too_old_after:.0f}s"
    )
    assert not firing(prometheus, "HabitatBackupTooOld", namespace=namespace, backup="doomed")
