"""The newest commit in a WAL file, and where its valid WAL ends, read by pg_waldump.

The newest archived commit time is the end of an archive's recovery window and the base of the
live RPO. pg_waldump of the server's own major version reads the file (its WAL format changes with
every major release; the version is told by the magic number of the file's first page header),
with `--rmgr=Transaction`, so only transaction records are printed. Its output is read line by line
and only the last commit is kept: memory stays at one line, whatever the segment holds. A file
without a commit, or a machine without that pg_waldump, gives no time rather than a failure.
"""

import datetime as dt
import os
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from habitat_operator.engines.wal.layout import parse_lsn

# XLOG_PAGE_MAGIC of each major version (src/include/access/xlog_internal.h).
PAGE_MAGIC = {0xD106: 13, 0xD10D: 14, 0xD110: 15, 0xD113: 16, 0xD116: 17, 0xD118: 18}
TIMEOUT_SECONDS = 120.0
_COMMIT = re.compile(r"desc: COMMIT (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?) UTC")
_ERROR_POSITION = re.compile(r"(?:at|after) ([0-9A-F]+/[0-9A-F]+)")


@dataclass(frozen=True)
class WalSummary:
    last_commit_at: dt.datetime | None
    end_lsn: int | None  # where the file's valid WAL ends, when it ends before the file does


def major_version(path: Path) -> int | None:
    """The PostgreSQL major version that wrote the WAL file, from its first page's magic number."""
    with path.open("rb") as file:
        head = file.read(2)
    return PAGE_MAGIC.get(int.from_bytes(head, "little")) if len(head) == 2 else None


def waldump_for(major: int) -> str | None:
    """pg_waldump of `major`: Debian's versioned folder (the image's layout), else the one on PATH."""
    versioned = Path(f"/usr/lib/postgresql/{major}/bin/pg_waldump")
    return str(versioned) if versioned.is_file() else shutil.which("pg_waldump")


def summarize(path: Path, stop: threading.Event | None = None) -> WalSummary:
    """The newest commit time in the WAL file `path` (named as PostgreSQL names the segment) and,
    for a partial segment, where its valid WAL ends. Blocking: run it off the event loop."""
    major = major_version(path)
    tool = waldump_for(major) if major is not None else None
    if tool is None:
        return WalSummary(None, None)
    env = {"PATH": os.environ.get("PATH", ""), "TZ": "UTC", "LC_ALL": "C"}
    last_commit, last_error = "", ""
    with subprocess.Popen(
        [tool, "--rmgr=Transaction", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        text=True,
        errors="replace",
    ) as process:
        assert process.stdout is not None
        timer = threading.Timer(TIMEOUT_SECONDS, process.kill)
        timer.start()
        try:
            for line in process.stdout:
                if " desc: COMMIT " in line:
                    last_commit = line
                elif line.startswith("pg_waldump: error:"):
                    last_error = line
                if stop is not None and stop.is_set():
                    process.kill()
                    break
        finally:
            timer.cancel()
            process.kill()
    commit = _COMMIT.search(last_commit)
    positions = _ERROR_POSITION.findall(last_error)
    return WalSummary(
        dt.datetime.fromisoformat(commit[1]).replace(tzinfo=dt.UTC) if commit else None,
        parse_lsn(positions[-1]) if positions else None,
    )
