"""Zero-downtime linting of migrations with squawk (the `squawk-cli` package's binary, JSON output).

squawk already has every rule Habitat's runbooks ask for, so none is written here:

| runbook rule | squawk rule |
|---|---|
| NOT NULL column without a default | adding-required-field |
| CREATE INDEX without CONCURRENTLY | require-concurrent-index-creation |
| a column type change | changing-column-type |
| renaming a column or a table | renaming-column, renaming-table |
| ADD CONSTRAINT without NOT VALID | constraint-missing-not-valid, adding-foreign-key-constraint |
| a missing lock_timeout | require-lock-timeout |

All scripts of a run are linted by one squawk process per transaction mode: a script the operator
wraps in a transaction is linted with `--assume-in-transaction`, one marked no-transaction without.
"""

from __future__ import annotations

import asyncio
import json
import sysconfig
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from habitat_operator.api.common import Reason
from habitat_operator.engines.postgres.migrations import Script
from habitat_operator.engines.threads import in_thread
from habitat_operator.errors import PermanentError, one_line

# The binary pip installs beside the operator's interpreter (the venv's or the image's bin dir).
SQUAWK = Path(sysconfig.get_path("scripts")) / "squawk"


@dataclass(frozen=True)
class Finding:
    rule: str
    version: int
    line: int  # 1-based
    message: str


async def lint(scripts: Sequence[Script], skip: Sequence[str] = ()) -> list[Finding]:
    """squawk's findings on `scripts`, by version and line; rules in `skip` are not checked."""
    if not scripts:
        return []
    with tempfile.TemporaryDirectory(prefix="habitat-lint-") as folder:
        paths, groups = await in_thread(_write, scripts, Path(folder))
        findings: list[Finding] = []
        for no_transaction, files in groups.items():
            if files:
                flags = [] if no_transaction else ["--assume-in-transaction"]
                findings += _parse(await _squawk([*flags, *_excludes(skip)], files), paths)
    return sorted(findings, key=lambda f: (f.version, f.line, f.rule))


def _write(scripts: Sequence[Script], folder: Path) -> tuple[dict[str, int], dict[bool, list[str]]]:
    """Each script in its own file (megabytes, maybe): its version by path, and the paths by whether
    the script runs outside a transaction."""
    paths: dict[str, int] = {}
    groups: dict[bool, list[str]] = {True: [], False: []}
    for index, script in enumerate(scripts):
        path = folder / f"{index:05d}_{script.version}.sql"
        path.write_text(script.sql, encoding="utf-8")
        paths[str(path)] = script.version
        groups[script.no_transaction].append(str(path))
    return paths, groups


def _excludes(skip: Sequence[str]) -> list[str]:
    return [f"--exclude={','.join(skip)}"] if skip else []


async def _squawk(flags: list[str], files: list[str]) -> str:
    try:
        process = await asyncio.create_subprocess_exec(
            str(SQUAWK),
            "--reporter=json",
            *flags,
            *files,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except FileNotFoundError:
        raise PermanentError(Reason.TOOL_MISSING, f"squawk is not installed at {SQUAWK}") from None
    stdout, stderr = await process.communicate()
    if process.returncode not in (0, 1):  # 1: findings
        raise PermanentError(
            Reason.TOOL_MISSING, f"squawk failed: {one_line(stderr.decode(errors='replace'))}"
        )
    return stdout.decode()


def _parse(output: str, versions: dict[str, int]) -> list[Finding]:
    """squawk's JSON report; its lines are 0-based."""
    return [
        Finding(
            rule=item["rule_name"],
            version=versions[item["file"]],
            line=int(item["line"]) + 1,
            message=one_line(item["message"]),
        )
        for item in json.loads(output or "[]")
    ]
