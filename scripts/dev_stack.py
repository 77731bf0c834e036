"""The local stack: a real kube-apiserver (with etcd and kube-controller-manager), PostgreSQL, RabbitMQ,
Prometheus and an S3 server (versitygw).

Everything runs as private processes on free loopback ports under one folder (default `<repo>/.stack`),
so several stacks and the machine's own services never collide. `up` is idempotent, `down` stops
every process it started and removes the folder. `up` writes `<stack>/env`, a shell-sourceable file
with KUBECONFIG, HABITAT_PG_URI, HABITAT_AMQP_URI, HABITAT_RABBITMQ_API, HABITAT_PROMETHEUS_URL and
HABITAT_S3_*.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

REPO = Path(__file__).resolve().parent.parent
STACK_DIR = Path(os.environ.get("HABITAT_STACK_DIR", REPO / ".stack"))
CLUSTER_MODULE = REPO / "tests" / "cluster"
S3_BUILD = REPO / "tests" / "s3" / "build.sh"
S3_TEST_BUCKET = "habitat-test"
ADMIN_USER = "habitat-admin"
CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager")


class StackError(Exception):
    """A one-line reason the stack cannot start, naming the missing piece and how to get it."""


@dataclass
class State:
    """What `up` chose and started; persisted so `up` can be repeated and `down` can stop it all."""

    ports: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    admin_token: str = ""
    pg_password: str = ""
    bin_dir: str = ""
    s3_bin: str = ""
    s3_access_key: str = ""
    s3_secret_key: str = ""

    @classmethod
    def load(cls) -> State:
        path = STACK_DIR / "state.json"
        return cls(**json.loads(path.read_text())) if path.exists() else cls()

    def save(self) -> None:
        STACK_DIR.mkdir(parents=True, exist_ok=True)
        (STACK_DIR / "state.json").write_text(json.dumps(self.__dict__, indent=2))

    def port(self, name: str) -> int:
        if name not in self.ports or not port_is_free(self.ports[name]):
            self.ports[name] = free_port()
        return self.ports[name]


# ---------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    # A zombie still answers kill(0); it is not running.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def wait_until(what: str, check: Callable[[], bool], timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # anything short of success means "not yet"
            pass
        time.sleep(0.2)
    tail = ""
    if log and log.exists():
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        tail = f"; last log line: {lines[-1][:300]}" if lines else ""
    raise StackError(f"{what} did not become ready within {timeout:.0f}s (log: {log}){tail}")


def spawn(name: str, argv: list[str], env: dict[str, str] | None = None) -> int:
    log = STACK_DIR / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            start_new_session=True,  # its own process group, so `down` can stop all of it
        )
    return proc.pid


def stop_group(pid: int, grace: float = 10.0) -> None:
    """SIGTERM the process group led by pid, then SIGKILL what is left after `grace` seconds."""
    if not pid_alive(pid):
        return
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and pid_alive(pid):
            time.sleep(0.1)
        if not pid_alive(pid):
            return


def is_root() -> bool:
    return os.geteuid() == 0


def as_user(user: str, argv: list[str]) -> list[str]:
    """Servers that refuse to run as root (postgres) or drop to their own user (rabbitmq)."""
    return ["runuser", "-u", user, "--", *argv] if is_root() else argv


def chown_tree(path: Path, user: str) -> None:
    if is_root():
        entry = pwd.getpwnam(user)
        for root, dirs, files in os.walk(path):
            for item in [root, *(os.path.join(root, n) for n in dirs + files)]:
                os.chown(item, entry.pw_uid, entry.pw_gid)


def _reachable_by_others(path: Path) -> bool:
    return all(p.stat().st_mode & 0o001 for p in [path, *path.parents] if p.exists())


def service_home(name: str) -> Path:
    """Where a server that runs as its own user (postgres, rabbitmq) keeps its files: in the stack
    folder when that user can reach it, else (a checkout under a private home, say) in the temp
    folder, keyed by the stack folder so that stacks stay apart."""
    if not is_root() or _reachable_by_others(STACK_DIR):
        return STACK_DIR / name
    key = hashlib.sha256(str(STACK_DIR).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"habitat-stack-{key}" / name


def apt_install(package: str, probe: str) -> None:
    """Installs a Debian package if `probe` is missing; a clear one-liner if that is impossible."""
    if shutil.which(probe) or Path(probe).exists():
        return
    if not (is_root() and shutil.which("apt-get")):
        raise StackError(f"{probe} not found; install it with: sudo apt-get install -y {package}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=False, capture_output=True, env=env)
    result = subprocess.run(["apt-get", "install", "-y", "-q", package], capture_output=True, env=env)
    if result.returncode != 0:
        raise StackError(f"apt-get install {package} failed: {result.stderr.decode()[-300:].strip()}")


# ---------------------------------------------------------------- certificates and kubeconfig


def write_pki(pki: Path) -> None:
    """A CA, a serving cert for 127.0.0.1/localhost, and the service-account signing key pair."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    if (pki / "serving.crt").exists():
        return
    pki.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def key() -> rsa.RSAPrivateKey:
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def write_key(k: rsa.RSAPrivateKey, name: str) -> None:
        (pki / name).write_bytes(
            k.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )

    ca_key = key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "habitat-dev-stack-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    serving_key = key()
    serving = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(serving_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.DNSName("kubernetes.default.svc"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    (pki / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (pki / "serving.crt").write_bytes(serving.public_bytes(serialization.Encoding.PEM))
    write_key(serving_key, "serving.key")
    sa_key = key()
    write_key(sa_key, "sa.key")
    (pki / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def write_kubeconfig(path: Path, server: str, token: str) -> None:
    ca = base64.b64encode((STACK_DIR / "pki" / "ca.crt").read_bytes()).decode()
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "habitat-dev", "cluster": {"server": server, "certificate-authority-data": ca}}
        ],
        "users": [{"name": ADMIN_USER, "user": {"token": token}}],
        "contexts": [{"name": "habitat-dev", "context": {"cluster": "habitat-dev", "user": ADMIN_USER}}],
        "current-context": "habitat-dev",
    }
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML; kubectl and the clients read it
    path.chmod(0o600)


def api_get(state: State, path: str) -> int:
    ctx = ssl.create_default_context(cafile=str(STACK_DIR / "pki" / "ca.crt"))
    request = urllib.request.Request(
        f"https://127.0.0.1:{state.ports['apiserver']}{path}",
        headers={"Authorization": f"Bearer {state.admin_token}"},
    )
    with urllib.request.urlopen(request, context=ctx, timeout=5) as response:
        return int(response.status)


# ---------------------------------------------------------------- components


def go_build(script: Path, what: str) -> Path:
    """Runs one of the Go build scripts and returns the folder it prints last. Its progress goes
    straight to the terminal: a first build takes minutes, and a newcomer should see why."""
    if not shutil.which("go"):
        raise StackError("go not found; install Go 1.26+ (Debian: apt-get install golang-go, or go.dev/dl)")
    result = subprocess.run([str(script)], stdout=subprocess.PIPE, text=True, cwd=script.parent)
    if result.returncode != 0:
        raise StackError(f"building {what} failed ({script}); see above")
    return Path(result.stdout.strip().splitlines()[-1])


def control_plane_binaries() -> Path:
    return go_build(CLUSTER_MODULE / "build.sh", "the control plane")


def start_control_plane(state: State) -> None:
    bin_dir = Path(state.bin_dir)
    pki = STACK_DIR / "pki"
    if not (pid_alive(state.pids.get("etcd")) and _etcd_healthy(state)):
        client, peer = state.port("etcd"), state.port("etcd-peer")
        state.pids["etcd"] = spawn(
            "etcd",
            [
                str(bin_dir / "etcd"),
                "--name=default",
                f"--data-dir={STACK_DIR / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{client}",
                f"--advertise-client-urls=http://127.0.0.1:{client}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=default=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        wait_until("etcd", lambda: _etcd_healthy(state), 30, STACK_DIR / "logs" / "etcd.log")

    if not (pid_alive(state.pids.get("kube-apiserver")) and _apiserver_ready(state)):
        (STACK_DIR / "tokens.csv").write_text(f'{state.admin_token},{ADMIN_USER},1,"system:masters"\n')
        state.pids["kube-apiserver"] = spawn(
            "kube-apiserver",
            [
                str(bin_dir / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{state.ports['etcd']}",
                "--bind-address=127.0.0.1",
                f"--secure-port={state.port('apiserver')}",
                # No default route here: the apiserver cannot guess an address, and there are no nodes.
                "--advertise-address=127.0.0.1",
                "--endpoint-reconciler-type=none",
                f"--tls-cert-file={pki / 'serving.crt'}",
                f"--tls-private-key-file={pki / 'serving.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--token-auth-file={STACK_DIR / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--api-audiences=https://kubernetes.default.svc.cluster.local",
                "--allow-privileged=true",
                f"--cert-dir={STACK_DIR / 'apiserver-certs'}",
                "--v=0",
            ],
        )
        wait_until(
            "kube-apiserver", lambda: _apiserver_ready(state), 90, STACK_DIR / "logs" / "kube-apiserver.log"
        )

    if (bin_dir / "kube-controller-manager").exists() and not pid_alive(
        state.pids.get("kube-controller-manager")
    ):
        write_kubeconfig(
            STACK_DIR / "controller-manager.kubeconfig",
            f"https://127.0.0.1:{state.ports['apiserver']}",
            state.admin_token,
        )
        kcm_config = str(STACK_DIR / "controller-manager.kubeconfig")
        state.pids["kube-controller-manager"] = spawn(
            "kube-controller-manager",
            [
                str(bin_dir / "kube-controller-manager"),
                f"--kubeconfig={kcm_config}",
                f"--authentication-kubeconfig={kcm_config}",
                f"--authorization-kubeconfig={kcm_config}",
                "--bind-address=127.0.0.1",
                f"--secure-port={state.port('controller-manager')}",
                "--leader-elect=false",
                f"--root-ca-file={pki / 'ca.crt'}",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                "--controllers=*,-nodeipam,-nodelifecycle,-service-lb-controller,-node-route-controller,"
                "-cloud-node-lifecycle-controller,-persistentvolume-binder-controller,-attachdetach",
                f"--cert-dir={STACK_DIR / 'controller-manager-certs'}",
            ],
        )


def _etcd_healthy(state: State) -> bool:
    url = f"http://127.0.0.1:{state.ports['etcd']}/health"
    with urllib.request.urlopen(url, timeout=2) as response:
        return b'"health":"true"' in response.read()


def _apiserver_ready(state: State) -> bool:
    return api_get(state, "/readyz") == 200 and api_get(state, "/api/v1/namespaces/default") == 200


def pg_bin(name: str) -> str:
    for directory in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (directory / name).exists():
            return str(directory / name)
    found = shutil.which(name)
    if not found:
        raise StackError(f"{name} not found; install PostgreSQL with: sudo apt-get install -y postgresql-15")
    return found


def start_postgres(state: State, port: int | None = None) -> None:
    apt_install("postgresql-15", "/usr/lib/postgresql/15/bin/postgres")
    data = service_home("postgres") / "data"
    socket_dir = service_home("postgres") / "run"
    if pid_alive(state.pids.get("postgres")) and _pg_ready(state):
        return
    if not (data / "PG_VERSION").exists():
        data.mkdir(parents=True, exist_ok=True)
        socket_dir.mkdir(parents=True, exist_ok=True)
        pwfile = service_home("postgres") / "pwfile"
        pwfile.write_text(state.pg_password + "\n")
        chown_tree(service_home("postgres"), "postgres")
        subprocess.run(
            as_user(
                "postgres",
                [
                    pg_bin("initdb"),
                    f"--pgdata={data}",
                    "--username=postgres",
                    f"--pwfile={pwfile}",
                    # TCP needs the password (tests rely on wrong passwords failing); the socket stays trust.
                    "--auth-host=scram-sha-256",
                    "--auth-local=trust",
                    "--encoding=UTF8",
                    "--no-sync",
                ],
            ),
            check=True,
            capture_output=True,
        )
        pwfile.unlink()
    port = port or state.port("postgres")
    options = f"-p {port} -k {socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
    server_log = service_home("postgres") / "server.log"  # in the postgres-owned folder: the server writes it
    subprocess.run(
        as_user(
            "postgres",
            [pg_bin("pg_ctl"), "-D", str(data), "-o", options, "-l", str(server_log), "-w", "start"],
        ),
        check=False,
        capture_output=True,
    )
    wait_until("postgres", lambda: _pg_ready(state), 30, server_log)
    state.pids["postgres"] = int((data / "postmaster.pid").read_text().split()[0])


def stop_postgres() -> None:
    """Stops this stack's PostgreSQL (fast: open sessions end) and keeps its data, e.g. to take the
    database away mid-operation; `restart_postgres` brings it back."""
    subprocess.run(
        as_user(
            "postgres", [pg_bin("pg_ctl"), "-D", str(service_home("postgres") / "data"), "-m", "fast", "stop"]
        ),
        capture_output=True,
        check=False,
    )


def restart_postgres() -> None:
    """Starts this stack's PostgreSQL again after `stop_postgres`, on its port even while closed
    connections still hold it in TIME_WAIT (PostgreSQL binds with SO_REUSEADDR): URIs stay valid."""
    state = State.load()
    start_postgres(state, port=state.ports["postgres"])
    state.save()


def _pg_ready(state: State) -> bool:
    argv = [pg_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(state.ports["postgres"]), "-q"]
    return subprocess.run(argv, check=False).returncode == 0


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
    if pid_alive(state.pids.get("rabbitmq")) and _amqp_ready(state):
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
    wait_until("rabbitmq", lambda: _amqp_ready(state), 60, STACK_DIR / "logs" / "rabbitmq.log")
    wait_until(
        "rabbitmq management API", lambda: _management_ready(state), 30, STACK_DIR / "logs" / "rabbitmq.log"
    )


def _amqp_ready(state: State) -> bool:
    import pika

    params = pika.URLParameters(amqp_uri(state) + "?connection_attempts=1&socket_timeout=2")
    connection = pika.BlockingConnection(params)
    connection.close()
    return True


def _management_ready(state: State) -> bool:
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


PROMETHEUS_SCRAPE_INTERVAL = "1s"


def prometheus_dir() -> Path:
    """Prometheus's config, data, `rules/*.yaml` (alert rules to load) and `targets/*.json`
    (file_sd targets to scrape, job habitat-operator): tests and tools write the last two."""
    return STACK_DIR / "prometheus"


def start_prometheus(state: State) -> None:
    apt_install("prometheus", "/usr/bin/prometheus")
    if pid_alive(state.pids.get("prometheus")) and _prometheus_ready(state):
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
    wait_until("prometheus", lambda: _prometheus_ready(state), 30, STACK_DIR / "logs" / "prometheus.log")


def prometheus_url(state: State) -> str:
    return f"http://127.0.0.1:{state.ports['prometheus']}"


def _prometheus_ready(state: State) -> bool:
    with urllib.request.urlopen(prometheus_url(state) + "/-/ready", timeout=2) as response:
        return int(response.status) == 200


# ---------------------------------------------------------------- the S3 server (versitygw)


def s3_binary() -> Path:
    """versitygw, built from the Go module proxy once and cached in .bin/ like the control plane."""
    return go_build(S3_BUILD, "versitygw") / "versitygw"


def start_s3(state: State) -> None:
    """versitygw serving S3 over a folder of the stack, on a private port, with generated keys
    (given in its environment, not its command line), and the test bucket."""
    if pid_alive(state.pids.get("s3")) and _s3_ready(state):
        return
    state.s3_access_key = state.s3_access_key or secrets.token_hex(10)
    state.s3_secret_key = state.s3_secret_key or secrets.token_hex(20)
    data = STACK_DIR / "s3"
    data.mkdir(parents=True, exist_ok=True)
    state.pids["s3"] = spawn(
        "s3",
        [state.s3_bin, "--port", f"127.0.0.1:{state.port('s3')}", "posix", str(data)],
        {"ROOT_ACCESS_KEY": state.s3_access_key, "ROOT_SECRET_KEY": state.s3_secret_key},
    )
    wait_until("s3", lambda: _s3_ready(state), 30, STACK_DIR / "logs" / "s3.log")
    client = s3_client(state)
    if S3_TEST_BUCKET not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
        client.create_bucket(Bucket=S3_TEST_BUCKET)


def s3_endpoint(state: State) -> str:
    return f"http://127.0.0.1:{state.ports['s3']}"


def s3_client(state: State) -> S3Client:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=s3_endpoint(state),
        region_name="us-east-1",
        aws_access_key_id=state.s3_access_key,
        aws_secret_access_key=state.s3_secret_key,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, connect_timeout=2),
    )


def _s3_ready(state: State) -> bool:
    s3_client(state).list_buckets()
    return True


def s3_env(state: State) -> dict[str, str]:
    return {
        "HABITAT_S3_ENDPOINT": s3_endpoint(state),
        "HABITAT_S3_ACCESS_KEY": state.s3_access_key,
        "HABITAT_S3_SECRET_KEY": state.s3_secret_key,
        "HABITAT_S3_BUCKET": S3_TEST_BUCKET,
    }


# ---------------------------------------------------------------- the env file


def amqp_uri(state: State) -> str:
    return f"amqp://guest:guest@127.0.0.1:{state.ports['amqp']}/%2F"


def pg_uri(state: State) -> str:
    return f"postgresql://postgres:{state.pg_password}@127.0.0.1:{state.ports['postgres']}/postgres"


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


# ---------------------------------------------------------------- commands


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
        "etcd": safely(lambda: _etcd_healthy(state)),
        "kube-apiserver": safely(lambda: _apiserver_ready(state)),
        "kube-controller-manager": safely(lambda: pid_alive(state.pids.get("kube-controller-manager"))),
        "postgres": safely(lambda: _pg_ready(state)),
        "rabbitmq": safely(lambda: _amqp_ready(state)),
        "prometheus": safely(lambda: _prometheus_ready(state)),
        "s3": safely(lambda: _s3_ready(state)),
    }


def status() -> bool:
    state = State.load()
    healthy = True
    for name, probe in _probes(state).items():
        ok = probe()
        healthy &= ok
        print(f"{name:26} {'up' if ok else 'down'}")
    return healthy


def main(argv: list[str]) -> int:
    command = argv[1] if len(argv) > 1 else ""
    try:
        if command == "up":
            print(up())
        elif command == "down":
            down()
        elif command == "status":
            return 0 if status() else 1
        elif command == "env":
            print((STACK_DIR / "env").read_text(), end="")
        else:
            print("usage: dev-stack up|down|status|env", file=sys.stderr)
            return 2
    except StackError as error:
        print(f"dev-stack: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
