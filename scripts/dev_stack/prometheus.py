"""Prometheus from Debian, scraping every second what tests list in its `targets/` folder and
evaluating the alert rules they put in `rules/`."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from dev_stack.common import STACK_DIR, State, apt_install, pid_alive, spawn, wait_until

PROMETHEUS_SCRAPE_INTERVAL = "1s"


def prometheus_dir() -> Path:
    """Prometheus's config, data, `rules/*.yaml` (alert rules to load) and `targets/*.json`
    (file_sd targets to scrape, job habitat-operator): tests and tools write the last two."""
    return STACK_DIR / "prometheus"


def start_prometheus(state: State) -> None:
    apt_install("prometheus", "/usr/bin/prometheus")
    if pid_alive(state.pids.get("prometheus")) and prometheus_ready(state):
        return
    base = prometheus_dir()
    for sub in ("data", "rules", "targets"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    config = {
        "global": {
            "scrape_interval": PROMETHEUS_SCRAPE_INTERVAL,
            "evaluation_interval": PROMETHEUS_SCRAPE_INTERVAL,
        },
        "rule_files": [str(base / "rules" / "*.yaml")],
        "scrape_configs": [
            {
                "job_name": "prometheus",
                "static_configs": [{"targets": [f"127.0.0.1:{state.port('prometheus')}"]}],
            },
            {
                "job_name": "habitat-operator",
                "file_sd_configs": [{"files": [str(base / "targets" / "*.json")], "refresh_interval": "1s"}],
            },
        ],
    }
    (base / "prometheus.yml").write_text(json.dumps(config, indent=2))  # JSON is YAML
    state.pids["prometheus"] = spawn(
        "prometheus",
        [
            "/usr/bin/prometheus",
            f"--config.file={base / 'prometheus.yml'}",
            f"--storage.tsdb.path={base / 'data'}",
            f"--web.listen-address=127.0.0.1:{state.ports['prometheus']}",
            "--web.enable-lifecycle",  # POST /-/reload after writing rules
            "--storage.tsdb.retention.time=1d",
        ],
    )
    wait_until("prometheus", lambda: prometheus_ready(state), 30, STACK_DIR / "logs" / "prometheus.log")


def prometheus_url(state: State) -> str:
    return f"http://127.0.0.1:{state.ports['prometheus']}"


def prometheus_ready(state: State) -> bool:
    with urllib.request.urlopen(prometheus_url(state) + "/-/ready", timeout=2) as response:
        return int(response.status) == 200
