"""The whole stack: `up` starts every service side by side and writes `<stack>/env`, `down` stops what
`up` started and removes the folder, `status` probes each service."""

from __future__ import annotations

import secrets
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dev_stack.common import STACK_DIR, State, pid_alive, service_home, stop_group
from dev_stack.control_plane import (
    CONTROL_PLANE,
    apiserver_ready,
    control_plane_binaries,
    etcd_healthy,
    start_control_plane,
)
from dev_stack.pki import write_kubeconfig, write_pki
from dev_stack.postgres import pg_ready, pg_uri, start_postgres, stop_postgres
from dev_stack.prometheus import prometheus_ready, prometheus_url, start_prometheus
from dev_stack.rabbitmq import amqp_ready, amqp_uri, start_rabbitmq, stop_rabbitmq
from dev_stack.s3 import s3_binary, s3_env, s3_ready, start_s3


def write_env(state: State) -> Path:
    kubeconfig = STACK_DIR / "kubeconfig"
    write_kubeconfig(kubeconfig, f"https://127.0.0.1:{state.ports['apiserver']}", state.admin_token)
    values = {
        "HABITAT_STACK_DIR": str(STACK_DIR),
        "KUBECONFIG": str(kubeconfig),
        "HABITAT_PG_URI": pg_uri(state),
        "HABITAT_AMQP_URI": amqp_uri(state),
        "HABITAT_RABBITMQ_API": f"http://guest:guest@127.0.0.1:{state.ports['rabbitmq-management']}/api",
        "HABITAT_KUBECTL": str(Path(state.bin_dir) / "kubectl"),
        "HABITAT_PROMETHEUS_URL": prometheus_url(state),
        **s3_env(state),
    }
    env_file = STACK_DIR / "env"
    env_file.write_text("".join(f"export {key}='{value}'\n" for key, value in values.items()))
    return env_file


def read_env(env_file: Path | None = None) -> dict[str, str]:
    """The values of a running stack's env file (empty when there is none)."""
    env_file = env_file or STACK_DIR / "env"
    if not env_file.exists():
        return {}
    values = {}
    for line in env_file.read_text().splitlines():
        key, _, value = line.removeprefix("export ").partition("=")
        values[key] = value.strip("'")
    return values


def up() -> Path:
    started = time.monotonic()
    STACK_DIR.mkdir(parents=True, exist_ok=True)
    state = State.load()
    state.admin_token = state.admin_token or secrets.token_hex(24)
    state.pg_password = state.pg_password or secrets.token_hex(12)
    write_pki(STACK_DIR / "pki")
    state.bin_dir = str(control_plane_binaries())
    state.s3_bin = str(s3_binary())
    state.save()
    # The services are independent: start them side by side.
    starts = (start_control_plane, start_postgres, start_rabbitmq, start_prometheus, start_s3)
    with ThreadPoolExecutor(max_workers=len(starts)) as pool:
        futures = [pool.submit(start, state) for start in starts]
        errors = [f.exception() for f in futures if f.exception()]
    state.save()
    if errors:
        raise errors[0]  # type: ignore[misc]
    env_file = write_env(state)
    print(f"dev-stack: up in {time.monotonic() - started:.1f}s; source {env_file}", file=sys.stderr)
    return env_file


def down() -> None:
    state = State.load()
    for name in reversed(CONTROL_PLANE):
        stop_group(state.pids.get(name, 0))
    if state.pids.get("postgres") and (service_home("postgres") / "data").exists():
        stop_postgres()
        stop_group(state.pids["postgres"])
    stop_rabbitmq(state)
    stop_group(state.pids.get("prometheus", 0))
    stop_group(state.pids.get("s3", 0))
    for folder in {STACK_DIR, service_home("postgres").parent}:
        shutil.rmtree(folder, ignore_errors=True)
    print("dev-stack: down", file=sys.stderr)


def status_quiet() -> bool:
    """Whether every component of the stack answers."""
    return all(probe() for probe in _probes(State.load()).values())


def _probes(state: State) -> dict[str, Callable[[], bool]]:
    def safely(check: Callable[[], bool]) -> Callable[[], bool]:
        def probe() -> bool:
            try:
                return bool(state.ports) and check()
            except Exception:  # a failing probe means down
                return False

        return probe

    return {
        "etcd": safely(lambda: etcd_healthy(state)),
        "kube-apiserver": safely(lambda: apiserver_ready(state)),
        "kube-controller-manager": safely(lambda: pid_alive(state.pids.get("kube-controller-manager"))),
        "postgres": safely(lambda: pg_ready(state)),
        "rabbitmq": safely(lambda: amqp_ready(state)),
        "prometheus": safely(lambda: prometheus_ready(state)),
        "s3": safely(lambda: s3_ready(state)),
    }


def status() -> bool:
    state = State.load()
    healthy = True
    for name, probe in _probes(state).items():
        ok = probe()
        healthy &= ok
        print(f"{name:26} {'up' if ok else 'down'}")
    return healthy
