"""The stack's Prometheus, pointed at a running operator: helpers for the e2e tests that query it."""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import yaml

from dev_stack.prometheus import prometheus_dir
from tests.e2e.conftest import OperatorProcess
from tests.e2e.helpers import wait_for
from tests.harness import REPO, Stack

FILE = "habitat-e2e"
JOB = "habitat-operator-metrics"  # the Service's name, which a ServiceMonitor makes the job label


def get(stack: Stack, path: str, **params: str) -> Any:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    with urllib.request.urlopen(f"{stack.prometheus_url}{path}{query}", timeout=10) as response:
        return json.loads(response.read())["data"]


def firing(stack: Stack, alert: str, **labels: str) -> bool:
    """Whether Prometheus has `alert` firing with these labels."""
    return any(
        a["labels"].get("alertname") == alert
        and a["state"] == "firing"
        and all(a["labels"].get(k) == v for k, v in labels.items())
        for a in get(stack, "/api/v1/alerts")["alerts"]
    )


def _reload(stack: Stack) -> None:
    request = urllib.request.Request(stack.prometheus_url + "/-/reload", method="POST")
    urllib.request.urlopen(request, timeout=10).close()


@contextmanager
def scraping(stack: Stack, operator: OperatorProcess) -> Iterator[None]:
    """Prometheus scrapes the operator as the chart's ServiceMonitor would, and evaluates the shipped
    rules with every `for:` cut to 5s so a test need not wait minutes (the expressions are as shipped)."""
    folder = prometheus_dir()
    shipped = yaml.safe_load((REPO / "manifests" / "base" / "alerts.yaml").read_text())["spec"]["groups"]
    text = re.sub(r"(?m)^(\s+for: ).*$", r"\g<1>5s", yaml.safe_dump({"groups": shipped}, sort_keys=False))
    (folder / "rules" / f"{FILE}.yaml").write_text(text)
    target = [{"targets": [f"127.0.0.1:{operator.metrics_port}"], "labels": {"job": JOB}}]
    (folder / "targets" / f"{FILE}.json").write_text(json.dumps(target))
    _reload(stack)
    try:
        wait_for(
            "Prometheus to scrape the operator",
            lambda: any(
                t["labels"].get("job") == JOB and t["health"] == "up"
                for t in get(stack, "/api/v1/targets")["activeTargets"]
            ),
            timeout=30,
        )
        yield
    finally:
        (folder / "rules" / f"{FILE}.yaml").unlink()
        (folder / "targets" / f"{FILE}.json").unlink()
        _reload(stack)
