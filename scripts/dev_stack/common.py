"""What every service of the stack uses: the stack folder, the persisted `State` (ports, pids, keys),
ports, processes and their process groups, running a server as its own user, and installing a missing
Debian package."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STACK_DIR = Path(os.environ.get("HABITAT_STACK_DIR", REPO / ".stack"))


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


# Right after boot another apt-get may hold the dpkg lock for a minute or more: wait, don't fail at once.
APT_WAITS_FOR_THE_LOCK = ("-o", "DPkg::Lock::Timeout=600")


def apt_install(package: str, probe: str) -> None:
    """Installs a Debian package if `probe` is missing; a clear one-liner if that is impossible."""
    if shutil.which(probe) or Path(probe).exists():
        return
    if not (is_root() and shutil.which("apt-get")):
        raise StackError(f"{probe} not found; install it with: sudo apt-get install -y {package}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    apt_get = ["apt-get", "-q", *APT_WAITS_FOR_THE_LOCK]
    subprocess.run([*apt_get, "update"], check=False, capture_output=True, env=env)
    result = subprocess.run([*apt_get, "install", "-y", package], capture_output=True, env=env)
    if result.returncode != 0:
        raise StackError(f"apt-get install {package} failed: {result.stderr.decode()[-300:].strip()}")


def go_build(script: Path, what: str) -> Path:
    """Runs one of the Go build scripts and returns the folder it prints last. Its progress goes
    straight to the terminal: a first build takes minutes, and a newcomer should see why."""
    if not shutil.which("go"):
        raise StackError("go not found; install Go 1.26+ (Debian: apt-get install golang-go, or go.dev/dl)")
    result = subprocess.run([str(script)], stdout=subprocess.PIPE, text=True, cwd=script.parent)
    if result.returncode != 0:
        raise StackError(f"building {what} failed ({script}); see above")
    return Path(result.stdout.strip().splitlines()[-1])
