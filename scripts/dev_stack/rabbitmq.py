"""RabbitMQ from Debian as a private node (its own node name, ports, epmd and cookie), with the
management API; `rabbitmqctl` runs against this node only."""

from __future__ import annotations

import base64
import os
import secrets
import signal
import subprocess
import urllib.request
from pathlib import Path

from dev_stack.common import (
    STACK_DIR,
    State,
    apt_install,
    as_user,
    chown_tree,
    pid_alive,
    service_home,
    spawn,
    stop_group,
    wait_until,
)


def rabbitmq_env(state: State) -> dict[str, str]:
    base = service_home("rabbitmq")
    node_port = state.ports["amqp"]
    return {
        "RABBITMQ_NODENAME": f"habitat-{node_port}@localhost",
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(node_port),
        "RABBITMQ_DIST_PORT": str(state.ports["rabbitmq-dist"]),
        # A private epmd, so the machine's (or another stack's) epmd is never shared or left behind.
        "ERL_EPMD_PORT": str(state.ports["epmd"]),
        "ERL_EPMD_ADDRESS": "127.0.0.1",
        "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
        "RABBITMQ_LOG_BASE": str(base / "log"),
        "RABBITMQ_PID_FILE": str(base / "rabbitmq.pid"),
        "RABBITMQ_FEATURE_FLAGS_FILE": str(base / "feature_flags"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
        "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
        "HOME": str(base),  # the Erlang cookie lives here, shared by the node and rabbitmqctl
    }


def start_rabbitmq(state: State) -> None:
    apt_install("rabbitmq-server", "/usr/sbin/rabbitmq-server")
    if pid_alive(state.pids.get("rabbitmq")) and amqp_ready(state):
        return
    state.port("amqp"), state.port("rabbitmq-dist"), state.port("epmd"), state.port("rabbitmq-management")
    base = service_home("rabbitmq")
    for sub in ("mnesia", "log"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    (base / "enabled_plugins").write_text("[rabbitmq_management].\n")
    (base / "rabbitmq.conf").write_text(
        f"management.tcp.port = {state.ports['rabbitmq-management']}\n"
        "management.tcp.ip = 127.0.0.1\n"
        "loopback_users = none\n"
        # Queue depths in the management API are sampled; every second, not every 5 s, for ScalePolicy.
        "collect_statistics_interval = 1000\n"
    )
    cookie = base / ".erlang.cookie"
    if not cookie.exists():
        cookie.write_text(secrets.token_hex(16))
        cookie.chmod(0o400)
    chown_tree(base, "rabbitmq")
    state.pids["rabbitmq"] = spawn(
        "rabbitmq", as_user("rabbitmq", ["/usr/sbin/rabbitmq-server"]), rabbitmq_env(state)
    )
    wait_until("rabbitmq", lambda: amqp_ready(state), 60, STACK_DIR / "logs" / "rabbitmq.log")
    wait_until(
        "rabbitmq management API", lambda: management_ready(state), 30, STACK_DIR / "logs" / "rabbitmq.log"
    )


def amqp_ready(state: State) -> bool:
    import pika

    params = pika.URLParameters(amqp_uri(state) + "?connection_attempts=1&socket_timeout=2")
    connection = pika.BlockingConnection(params)
    connection.close()
    return True


def management_ready(state: State) -> bool:
    request = urllib.request.Request(f"http://127.0.0.1:{state.ports['rabbitmq-management']}/api/overview")
    request.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    with urllib.request.urlopen(request, timeout=2) as response:
        return int(response.status) == 200


def rabbitmqctl(*args: str, state: State | None = None, timeout: float = 120, check: bool = True) -> None:
    """Runs rabbitmqctl against this stack's node, e.g. `stop_app` and `start_app` to take the broker
    away and bring it back while the node (and its durable queues) stays."""
    env = rabbitmq_env(state or State.load())
    subprocess.run(
        as_user("rabbitmq", ["/usr/sbin/rabbitmqctl", "-n", env["RABBITMQ_NODENAME"], *args]),
        env={**os.environ, **env},
        capture_output=True,
        timeout=timeout,
        check=check,
    )


def stop_rabbitmq(state: State) -> None:
    pid = state.pids.get("rabbitmq")
    if pid_alive(pid) and "amqp" in state.ports:
        rabbitmqctl("stop", state=state, timeout=60, check=False)
    if pid:
        stop_group(pid)
    # epmd daemonizes out of the node's process group, and its command line is just `epmd -daemon`:
    # find ours by the private port in its environment.
    if "epmd" in state.ports:
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                environ = (proc / "environ").read_bytes()
                comm = (proc / "comm").read_text().strip()
            except OSError:
                continue
            if comm == "epmd" and f"ERL_EPMD_PORT={state.ports['epmd']}".encode() in environ:
                os.kill(int(proc.name), signal.SIGTERM)


def amqp_uri(state: State) -> str:
    return f"amqp://guest:guest@127.0.0.1:{state.ports['amqp']}/%2F"
