"""The `habitat-operator run` process the benchmarks measure, started as tests/e2e/conftest.py starts
it: a free metrics port, ready when /readyz says so, stopped with SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def wait_until(what: str, check: Callable[[], Any], timeout: float, interval: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
    return value


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Operator:
    """`habitat-operator run` watching `namespaces`, or all of them; `extra_args`: more `run` flags."""

    def __init__(self, workdir: Path, namespaces: Sequence[str] = (), extra_args: Sequence[str] = ()) -> None:
        self.port = free_port()
        self.log = workdir / "operator.log"
        argv = [
            str(REPO / ".venv" / "bin" / "habitat-operator"),
            "run",
            *([f"--namespace={ns}" for ns in namespaces] or ["--all-namespaces"]),
            f"--metrics-port={self.port}",
            f"--backup-root={workdir / 'backups'}",
            "--log-format=json",
            *extra_args,
        ]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        wait_until("the operator to be ready", self._ready, timeout=60, interval=0.2)

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise SystemExit(f"the operator exited:\n{self.log.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=2):
                return True
        except OSError:
            return False

    def cpu_seconds(self) -> float:
        """User and system time of all the operator's threads so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14 and 15)

    def rss_mb(self) -> float:
        return self._status_kib("VmRSS:") / 1024

    def peak_rss_mib(self) -> float:
        return self._status_kib("VmHWM:") / 1024

    def _status_kib(self, field: str) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
        return 0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
