"""What a Migration would run, from its source, the database's history and its spec: pure logic.

The plan refuses before anything runs: a changed checksum, a version the source lost, a dirty
version, a version below the current one that never ran, a target the source lacks, a rollback
past a migration without a down script, a statement that would end the transaction a migration
runs in (COMMIT, ROLLBACK...), a no-transaction file PostgreSQL's parser refuses. A baseline and a
dirty version resolved by hand count as written, so the plan of a run that will record them is the
plan of the run after.

It hashes and parses the scripts it reads (once each): call it off the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from habitat_operator.api.common import Reason
from habitat_operator.api.migration import (
    NO_TRANSACTION_MARKER,
    DirtyAction,
    MigrationReason,
    MigrationSpec,
)
from habitat_operator.controllers.migration.source import MigrationFile
from habitat_operator.engines.postgres.migrations import HistoryRow, Script
from habitat_operator.engines.postgres.statements import line_of
from habitat_operator.errors import PermanentError

UP, DOWN = "up", "down"


@dataclass(frozen=True)
class Step:
    direction: str
    script: Script


@dataclass(frozen=True)
class Plan:
    current: int
    target: int
    steps: list[Step] = field(default_factory=list)
    baseline: list[Script] = field(default_factory=list)  # versions to record as baselined first
    recorded: frozenset[int] = frozenset()  # versions in the history (baseline included)

    @property
    def pending(self) -> list[int]:
        return [step.script.version for step in self.steps]

    @property
    def rollback(self) -> bool:
        return self.target < self.current


def effective_history(history: list[HistoryRow], spec: MigrationSpec) -> list[HistoryRow]:
    """The history as it will be once a dirty version resolved by hand is recorded."""
    resolve = spec.resolve_dirty
    if resolve is None:
        return history
    rows = []
    for row in history:
        if row.dirty and row.version == resolve.version:
            if resolve.action is DirtyAction.MARK_REVERTED:
                continue
            row = HistoryRow(**{**row.__dict__, "dirty": False})
        rows.append(row)
    return rows


def clean_version(history: list[HistoryRow]) -> int:
    """The highest version applied whole: a dirty one may be half applied."""
    return max((row.version for row in history if not row.dirty), default=0)


def make_plan(files: list[MigrationFile], history: list[HistoryRow], spec: MigrationSpec) -> Plan:
    by_version = {f.version: f for f in files}
    rows = effective_history(history, spec)
    dirty = next((row for row in rows if row.dirty), None)
    if dirty is not None:
        raise PermanentError(
            MigrationReason.DIRTY,
            f"version {dirty.version} ({dirty.name}) is dirty: it failed or was interrupted outside a "
            "transaction and may be half applied; repair the database by hand, then set spec.resolveDirty "
            f"{{version: {dirty.version}, action: markApplied or markReverted}}",
        )
    baseline: list[Script] = []
    if not rows and spec.baseline_version is not None:
        baseline = [f.up for f in files if f.version <= spec.baseline_version] or [
            Script(spec.baseline_version, "baseline", "")
        ]
    recorded = {row.version for row in rows} | {s.version for s in baseline}
    for row in rows:
        if row.baselined and row.version not in by_version:
            continue  # a baseline may stand for versions the source never had
        file = by_version.get(row.version)
        if file is None:
            raise PermanentError(
                MigrationReason.VERSION_MISSING_FROM_SOURCE,
                f"version {row.version} ({row.name}) is in the history but no longer in the source",
            )
        if not row.baselined and file.up.checksum != row.checksum:
            raise PermanentError(
                Reason.CHECKSUM_MISMATCH,
                f"version {row.version} ({row.name}) was applied, but its up script has changed since"
                f" (sha256 {row.checksum[:12]}… then, {file.up.checksum[:12]}… now)",
            )
    current = max(recorded, default=0)
    wanted = spec.target_version
    if wanted is not None and wanted not in by_version and wanted not in recorded:
        raise PermanentError(Reason.INVALID_SPEC, f"spec.targetVersion: the source has no version {wanted}")
    target = spec.target_version if spec.target_version is not None else max(by_version, default=current)
    if target < current:
        steps = _rollback(rows, by_version, target)
        _refuse_unrunnable(steps)
        return Plan(current, target, steps, baseline, frozenset(recorded))
    skipped = [v for v in by_version if v < current and v not in recorded]
    if skipped:
        raise PermanentError(
            MigrationReason.OUT_OF_ORDER,
            f"version {skipped[0]} is below the current version {current} but was never applied;"
            " give it a version above the current one",
        )
    steps = [Step(UP, by_version[v].up) for v in sorted(by_version) if current < v <= target]
    _refuse_unrunnable(steps)
    return Plan(current, target, steps, baseline, frozenset(recorded))


def _rollback(rows: list[HistoryRow], by_version: dict[int, MigrationFile], target: int) -> list[Step]:
    """Down scripts of the versions above the target, newest first; refused whole if one is missing."""
    steps = []
    for row in sorted(rows, key=lambda r: r.version, reverse=True):
        if row.version <= target:
            break
        file = by_version.get(row.version)
        if row.baselined or file is None or file.down is None:
            raise PermanentError(
                MigrationReason.DOWN_SCRIPT_MISSING,
                f"cannot roll back to version {target}: version {row.version} ({row.name}) has no down"
                " script; nothing was run",
            )
        steps.append(Step(DOWN, file.down))
    return steps


def _refuse_unrunnable(steps: list[Step]) -> None:
    """What PostgreSQL's parser shows cannot run safely: a statement that would end the transaction
    the operator runs a migration in (what ran before it would be committed, or silently undone, and
    a later failure could not roll it back); a no-transaction file it refuses (it would stop part
    way, dirty). A transactional file it refuses runs, and fails whole: PostgreSQL refuses it too."""
    for step in steps:
        script, parsed = step.script, step.script.parsed
        where = f"version {script.version} ({script.name}) {step.direction}"
        where += f" ({script.origin})" if script.origin else ""
        if script.no_transaction:
            if parsed.syntax_error is not None:
                line = line_of(script.sql, parsed.syntax_error.offset)
                raise PermanentError(
                    MigrationReason.INVALID_MIGRATION,
                    f"{where} line {line}: {parsed.syntax_error.message}; it runs outside a transaction,"
                    " so it is refused before it could stop part way; nothing was applied",
                )
            continue
        ending = next((s for s in parsed.statements if s.ends_transaction), None)
        if ending is not None:
            statement = ending.sql.splitlines()[0][:60]
            raise PermanentError(
                MigrationReason.INVALID_MIGRATION,
                f"{where} line {line_of(script.sql, ending.offset)}: {statement!r} would end the"
                " transaction the operator runs the migration in, so a later failure could not roll back"
                " what ran before it; remove it (savepoints are fine) or make the file's first line"
                f" {NO_TRANSACTION_MARKER!r}; nothing was applied",
            )
