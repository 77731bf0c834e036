"""pg_amcheck of one database: its heap and its B-tree indexes. Any finding is corruption.

pg_amcheck needs the amcheck extension in the database it checks: `--install-missing` creates it,
so run this only on a database of the operator's own (a drill's scratch database, a recovered
private server), never on a user's. Debian installs pg_amcheck beside the server binaries only,
not behind /usr/bin's wrapper: the newest major's is used, as the wrapper would.
"""

import asyncio
import shutil
from pathlib import Path

from habitat_operator.api.common import Reason
from habitat_operator.api.restore import RestoreReason
from habitat_operator.engines.postgres.client_tools import ClientTool, classify_failure
from habitat_operator.engines.postgres.uri import ConnectionTarget
from habitat_operator.errors import PermanentError, one_line

SERVER_ROOT = Path("/usr/lib/postgresql")
CORRUPTION_FOUND_EXIT = 2  # pg_amcheck: 0 clean, 2 corruption found, anything else could not check
_MAX_OUTPUT_BYTES = 64 << 10
FINDINGS_SHOWN = 3


def amcheck_binary(server_root: Path = SERVER_ROOT) -> str:
    majors = sorted(
        (path for path in server_root.glob("*/bin/pg_amcheck") if path.parent.parent.name.isdigit()),
        key=lambda path: int(path.parent.parent.name),
    )
    if majors:
        return str(majors[-1])
    found = shutil.which("pg_amcheck")
    if found is None:
        raise PermanentError(Reason.TOOL_MISSING, "pg_amcheck is not installed (PostgreSQL 14 or later)")
    return found


def summarize(report: str) -> str:
    """pg_amcheck's report in one line: the first findings, each the object and its first message.

    A finding is a header line naming the object (`btree index "db.public.idx":`, `heap table
    "db.public.t", block 0, offset 1:`) followed by indented message lines."""
    findings: list[str] = []
    header: str | None = None
    for line in report.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            header = line.strip().rstrip(":")
            continue
        if header is not None:
            findings.append(f"{header}: {line.strip()}")
            header = None
    if not findings:
        return one_line(report) or "pg_amcheck reported corruption"
    more = f" (and {len(findings) - FINDINGS_SHOWN} more)" if len(findings) > FINDINGS_SHOWN else ""
    return one_line("; ".join(findings[:FINDINGS_SHOWN]) + more)


async def check_database(target: ConnectionTarget, server_root: Path = SERVER_ROOT) -> None:
    """Raises PermanentError CorruptionFound naming what pg_amcheck found; any other failure to
    check comes out as classify_failure says."""
    argv = [
        amcheck_binary(server_root),
        "--no-password",
        "--install-missing",
        "--heapallindexed",  # an index entry missing for a heap tuple is corruption too
        "--parent-check",  # the database is the operator's own: its ShareLock blocks nobody
        target.dbname,
    ]
    async with ClientTool.start(argv, target, stdout=asyncio.subprocess.PIPE) as tool:
        assert tool.process.stdout is not None
        report = (await tool.process.stdout.read(_MAX_OUTPUT_BYTES)).decode(errors="replace")
        while await tool.process.stdout.read(_MAX_OUTPUT_BYTES):
            pass  # the rest is not shown, but pg_amcheck must not block on a full pipe
        stderr = await tool.output()
        code = tool.process.returncode
    if code == 0:
        return
    if code == CORRUPTION_FOUND_EXIT:
        raise PermanentError(
            RestoreReason.CORRUPTION_FOUND,
            f"pg_amcheck found corruption in {target.display}: {summarize(target.redact(report))}",
        )
    raise classify_failure("pg_amcheck", stderr or report, target, failed_reason=Reason.VERIFICATION_FAILED)
