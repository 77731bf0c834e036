"""PostgreSQL 15 from Debian as a private server: its own data folder, port and password, run as the
`postgres` user; `stop_postgres`/`restart_postgres` take it away and bring it back for tests."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from dev_stack.common import (
    StackError,
    State,
    apt_install,
    as_user,
    chown_tree,
    pid_alive,
    service_home,
    wait_until,
)


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
    if pid_alive(state.pids.get("postgres")) and pg_ready(state):
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
    wait_until("postgres", lambda: pg_ready(state), 30, server_log)
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


def pg_ready(state: State) -> bool:
    argv = [pg_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(state.ports["postgres"]), "-q"]
    return subprocess.run(argv, check=False).returncode == 0


def pg_uri(state: State) -> str:
    return f"postgresql://postgres:{state.pg_password}@127.0.0.1:{state.ports['postgres']}/postgres"
