"""Migration's pure logic: API rules, source, plan, the linter's rule mapping, the history's shape."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from habitat_operator.api.common import Reason
from habitat_operator.api.migration import MigrationReason, MigrationSource, MigrationSpec
from habitat_operator.controllers.migration.plan import DOWN, UP, clean_version, make_plan
from habitat_operator.controllers.migration.source import MigrationFile, from_config_maps, from_inline
from habitat_operator.engines.postgres import migrations
from habitat_operator.engines.postgres.lint import lint
from habitat_operator.engines.postgres.migrations import HistoryRow, Script, checksum
from habitat_operator.errors import PermanentError


def spec(**overrides: Any) -> MigrationSpec:
    base: dict[str, Any] = {
        "database": {"secretRef": {"name": "db"}},
        "source": {"configMapRefs": [{"name": "sql"}]},
    }
    return MigrationSpec.model_validate(base | overrides)


def files(*versions: int, down: bool = True) -> list[MigrationFile]:
    return [
        MigrationFile(
            v,
            f"m{v}",
            Script(v, f"m{v}", f"CREATE TABLE t{v} ();"),
            Script(v, f"m{v}", f"DROP TABLE t{v};") if down else None,
        )
        for v in versions
    ]


def row(version: int, sql: str | None = None, dirty: bool = False, baselined: bool = False) -> HistoryRow:
    text = f"CREATE TABLE t{version} ();" if sql is None else sql
    return HistoryRow(
        version, f"m{version}", checksum(text), datetime.now(UTC), 1, "ns/app", dirty, baselined
    )


# ---------------------------------------------------------------- the API


@pytest.mark.parametrize(
    "source, message",
    [
        ({"configMapRefs": [{"name": "a"}], "inline": []}, "exactly one of configMapRefs or inline"),
        ({}, "exactly one of configMapRefs or inline"),
        (
            {"inline": [{"version": 1, "name": "a", "up": "x"}, {"version": 1, "name": "b", "up": "y"}]},
            "unique",
        ),
        ({"inline": [{"version": 0, "name": "a", "up": "x"}]}, "greater than or equal to 1"),
    ],
)
def test_the_python_checks_agree_with_the_cel_rules(source: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        spec(source=source)


def test_a_target_the_inline_source_lacks_and_an_unknown_lint_mode_are_refused() -> None:
    inline = {"inline": [{"version": 1, "name": "a", "up": "x"}]}
    with pytest.raises(ValidationError, match=r"targetVersion must be one of"):
        spec(source=inline, targetVersion=2)
    with pytest.raises(ValidationError, match=r"lint\.mode"):
        spec(source=inline, lint={"mode": "strict"})


# ---------------------------------------------------------------- the source


def test_config_maps_are_read_in_order_with_their_down_scripts() -> None:
    found = from_config_maps(
        [
            ("a", {"10_late.up.sql": "S10", "2_b.up.sql": "S2", "2_b.down.sql": "D2"}),
            ("b", {"3_c.up.sql": "S3"}),
        ]
    )
    assert [(f.version, f.name, f.up.sql, f.down.sql if f.down else None) for f in found] == [
        (2, "b", "S2", "D2"),
        (3, "c", "S3", None),
        (10, "late", "S10", None),
    ]


@pytest.mark.parametrize(
    "config_maps, message",
    [
        ([("a", {"readme.txt": ""})], "spec.source.configMapRefs[0] (ConfigMap a): key 'readme.txt' is not"),
        ([("a", {"0_x.up.sql": ""})], "a version must be positive"),
        ([("a", {"1_x.up.sql": ""}), ("b", {"1_y.up.sql": ""})], "version 1 also comes from a/1_x.up.sql"),
        ([("a", {"1_x.down.sql": ""})], "a/1_x.down.sql has no up script"),
    ],
)
def test_what_the_schema_cannot_see_is_an_invalid_spec(
    config_maps: list[tuple[str, dict[str, str]]], message: str
) -> None:
    with pytest.raises(PermanentError) as raised:
        from_config_maps(config_maps)
    assert raised.value.reason is Reason.INVALID_SPEC
    assert message in raised.value.message


# ---------------------------------------------------------------- the plan


def test_pending_versions_up_to_the_target() -> None:
    plan = make_plan(files(1, 2, 3), [row(1)], spec(targetVersion=2))
    assert (plan.current, plan.target, plan.pending) == (1, 2, [2])
    assert plan.steps[0].direction == UP
    assert make_plan(files(1, 2, 3), [row(1)], spec()).pending == [2, 3]


def test_a_rollback_runs_down_scripts_newest_first_and_is_refused_whole_without_one() -> None:
    plan = make_plan(files(1, 2, 3), [row(1), row(2), row(3)], spec(targetVersion=1))
    assert [(s.direction, s.script.version) for s in plan.steps] == [(DOWN, 3), (DOWN, 2)]
    lacking = [*files(1, 2), *files(3, down=False)]
    with pytest.raises(PermanentError, match="version 3 \\(m3\\) has no down script") as raised:
        make_plan(lacking, [row(1), row(2), row(3)], spec(targetVersion=1))
    assert raised.value.reason is MigrationReason.DOWN_SCRIPT_MISSING


def test_drift_and_lost_versions_stop_the_plan() -> None:
    with pytest.raises(PermanentError, match="version 1 \\(m1\\) was applied") as raised:
        make_plan(files(1, 2), [row(1, sql="CREATE TABLE other ();")], spec())
    assert raised.value.reason is Reason.CHECKSUM_MISMATCH
    with pytest.raises(PermanentError, match="no longer in the source") as raised:
        make_plan(files(2), [row(1), row(2)], spec())
    assert raised.value.reason is MigrationReason.VERSION_MISSING_FROM_SOURCE


def test_a_dirty_version_blocks_until_resolved() -> None:
    history = [row(1), row(2, dirty=True)]
    with pytest.raises(PermanentError, match=r"version 2 \(m2\) is dirty.*resolveDirty") as raised:
        make_plan(files(1, 2, 3), history, spec())
    assert raised.value.reason is MigrationReason.DIRTY
    applied = make_plan(files(1, 2, 3), history, spec(resolveDirty={"version": 2, "action": "markApplied"}))
    assert applied.pending == [3]
    reverted = make_plan(files(1, 2, 3), history, spec(resolveDirty={"version": 2, "action": "markReverted"}))
    assert reverted.pending == [2, 3]


def test_a_baseline_records_versions_instead_of_running_them() -> None:
    plan = make_plan(files(1, 2, 3), [], spec(baselineVersion=2))
    assert [s.version for s in plan.baseline] == [1, 2]
    assert plan.pending == [3]
    beyond = make_plan(files(5), [], spec(baselineVersion=4))  # the source starts after the baseline
    assert [s.version for s in beyond.baseline] == [4] and beyond.pending == [5]
    later = make_plan(files(5), [row(4, baselined=True)], spec())
    assert later.pending == [5] and not later.baseline


def test_a_version_below_the_current_one_that_never_ran_is_refused() -> None:
    with pytest.raises(PermanentError, match=r"version 2 is below the current version 3"):
        make_plan(files(1, 2, 3), [row(1), row(3)], spec())


def test_a_target_version_the_source_lacks_is_an_invalid_spec() -> None:
    with pytest.raises(PermanentError, match=r"spec\.targetVersion: the source has no version 9") as raised:
        make_plan(files(1), [], spec(targetVersion=9))
    assert raised.value.reason is Reason.INVALID_SPEC


ENDINGS = [
    "COMMIT",
    "commit and chain",
    "END",
    "ROLLBACK",
    "ABORT",
    "BEGIN",
    "START TRANSACTION",
    "PREPARE TRANSACTION 'x'",
    "COMMIT PREPARED 'x'",
    "ROLLBACK PREPARED 'x'",
    "/* even after a comment */ Commit",
]


@pytest.mark.parametrize("ending", ENDINGS)
def test_transaction_control_in_a_transactional_migration_is_refused_naming_file_and_line(
    ending: str,
) -> None:
    text = (
        f"-- café ☕\nCREATE TABLE ledger (id int);\nINSERT INTO ledger VALUES ('é');\n{ending};\nSELECT 1/0;"
    )
    source = {
        "inline": [
            {"version": 1, "name": "t", "up": "SELECT 1;"},
            {"version": 2, "name": "ledger", "up": text},
        ]
    }
    with pytest.raises(PermanentError) as raised:
        make_plan(from_inline(MigrationSource.model_validate(source)), [], spec(source=source))
    assert raised.value.reason is MigrationReason.INVALID_MIGRATION
    assert raised.value.message.startswith("version 2 (ledger) up (spec.source.inline[1].up) line 4: ")
    assert "nothing was applied" in raised.value.message
    from_map = from_config_maps([("sql", {"1_ledger.up.sql": text})])
    with pytest.raises(PermanentError, match=r"\(ConfigMap sql key 1_ledger.up.sql\) line 4: "):
        make_plan(from_map, [], spec())


def test_savepoints_strings_and_no_transaction_files_are_not_transaction_control() -> None:
    fine = [
        "SAVEPOINT a;\nINSERT INTO t VALUES (1);\nROLLBACK TO SAVEPOINT a;\nRELEASE SAVEPOINT a;",
        "SELECT 'COMMIT; ROLLBACK';\n-- COMMIT;\n/* ROLLBACK; */\nPREPARE q AS SELECT 1;",
        "DO $$ BEGIN PERFORM 1; END $$;\n"
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; END;",
        "-- habitat:no-transaction\nBEGIN;\nSELECT 1;\nCOMMIT;",
    ]
    steps = [(MigrationFile(v, "ok", Script(v, "ok", text), None)) for v, text in enumerate(fine, 1)]
    assert make_plan(steps, [], spec()).pending == [1, 2, 3, 4]
    statements = [s.sql for s in steps[2].up.parsed.statements]
    assert len(statements) == 2 and statements[1].endswith("END")  # one statement, ATOMIC body and all


def test_a_syntax_error_refuses_a_no_transaction_file_and_a_transactional_one_runs_whole() -> None:
    broken = "CREATE TABLE t (id int);\n\nSELEC 1;"
    with pytest.raises(PermanentError, match=r"version 1 \(m\) up line 4: syntax error at or near \"SELEC\""):
        make_plan(
            [MigrationFile(1, "m", Script(1, "m", f"-- habitat:no-transaction\n{broken}"), None)], [], spec()
        )
    script = Script(1, "m", f"{broken}\nCOMMIT;")
    assert make_plan([MigrationFile(1, "m", script, None)], [], spec()).pending == [1]
    # PostgreSQL parses a query string whole before it runs any of it: nothing of it runs.
    assert [s.sql for s in script.parsed.statements] == [script.sql]


def test_a_rollback_is_refused_too_when_a_down_script_ends_its_transaction() -> None:
    two = MigrationFile(2, "m2", files(2)[0].up, Script(2, "m2", "DROP TABLE t2;\nCOMMIT;"))
    with pytest.raises(PermanentError, match=r"version 2 \(m2\) down line 2: 'COMMIT' would end"):
        make_plan([*files(1), two], [row(1), row(2)], spec(targetVersion=1))


def test_the_current_version_shown_is_the_last_clean_one() -> None:
    assert clean_version([row(1), row(2, dirty=True)]) == 1
    assert clean_version([row(3, baselined=True)]) == 3
    assert clean_version([]) == 0


# ---------------------------------------------------------------- the linter: one case per runbook rule

RULES = [
    (
        "a NOT NULL column without a default",
        "ALTER TABLE t ADD COLUMN a text NOT NULL;",
        "adding-required-field",
    ),
    ("CREATE INDEX without CONCURRENTLY", "CREATE INDEX i ON t (a);", "require-concurrent-index-creation"),
    ("a column type change", "ALTER TABLE t ALTER COLUMN a TYPE bigint;", "changing-column-type"),
    ("renaming a column", "ALTER TABLE t RENAME COLUMN a TO b;", "renaming-column"),
    ("renaming a table", "ALTER TABLE t RENAME TO u;", "renaming-table"),
    (
        "ADD CONSTRAINT without NOT VALID",
        "ALTER TABLE t ADD CONSTRAINT c CHECK (a > 0);",
        "constraint-missing-not-valid",
    ),
    ("a missing lock_timeout", "ALTER TABLE t ADD COLUMN b text;", "require-lock-timeout"),
]


@pytest.mark.parametrize("what, statement, rule", RULES, ids=[r[0] for r in RULES])
def test_each_runbook_rule_maps_to_a_squawk_finding_with_version_and_line(
    what: str, statement: str, rule: str
) -> None:
    script = Script(7, "change", f"-- {what}\n{statement}")
    findings = asyncio.run(lint([script]))
    assert (rule, 7, 2) in {(f.rule, f.version, f.line) for f in findings}, findings
    assert rule not in {f.rule for f in asyncio.run(lint([script], skip=[rule]))}


def test_lint_sets_its_own_lock_timeout_and_no_transaction_files_are_linted_as_such() -> None:
    own = Script(1, "own", "SET lock_timeout = '2s';\nALTER TABLE t ADD COLUMN b text;")
    assert "require-lock-timeout" not in {f.rule for f in asyncio.run(lint([own]))}
    concurrent = Script(2, "idx", "-- habitat:no-transaction\nCREATE INDEX CONCURRENTLY i ON t (a);")
    assert concurrent.no_transaction
    rules = {f.rule for f in asyncio.run(lint([concurrent]))}
    assert "require-concurrent-index-creation" not in rules
    assert "transaction-nesting" not in rules


# ---------------------------------------------------------------- the history table


def test_the_history_table_holds_what_the_issue_asks_and_what_history_reads() -> None:
    ddl = " ".join(migrations.HISTORY_DDL.split())
    for column in (
        "version bigint PRIMARY KEY",
        "name text NOT NULL",
        "checksum text NOT NULL",  # sha256 of the up script, hex
        "applied_at timestamptz NOT NULL DEFAULT now()",
        "duration_ms bigint NOT NULL",
        "applied_by text NOT NULL",  # namespace/name and uid of the Migration
        "dirty boolean NOT NULL DEFAULT false",
        "baselined boolean NOT NULL DEFAULT false",
    ):
        assert column in ddl
    read = [name.strip() for name in migrations._HISTORY_COLUMNS.split(",")]
    assert read == [field.name for field in dataclasses.fields(HistoryRow)]
    assert checksum("SELECT 1;") == "17db4fd369edb9244b9f91d9aeed145c3d04ad8ba6e95d06247f07a63527d11a"
