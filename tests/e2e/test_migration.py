"""Migration end to end: ConfigMaps and inline SQL, the operator process, real PostgreSQL."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

from habitat_operator.engines.postgres.locks import LOCK_CLASS, holder_name
from tests.e2e.conftest import OperatorProcess
from tests.e2e.helpers import condition, finished, inline, migration, restore, wait_for, wait_phase
from tests.harness import Kubectl

pytestmark = pytest.mark.e2e

HISTORY = "habitat.habitat_schema_migrations"

# Three migrations with down scripts; each writes to `ran` so that a second run would show.
THREE = {
    "1_accounts.up.sql": "CREATE TABLE accounts (id bigint PRIMARY KEY);\n"
    "CREATE TABLE ran (version int, at timestamptz DEFAULT now());\nINSERT INTO ran VALUES (1);",
    "1_accounts.down.sql": "DROP TABLE ran;\nDROP TABLE accounts;",
    "2_email.up.sql": "ALTER TABLE accounts ADD COLUMN email text;\nINSERT INTO ran VALUES (2);",
    "2_email.down.sql": "ALTER TABLE accounts DROP COLUMN email;",
    "3_orders.up.sql": "CREATE TABLE orders (id bigint PRIMARY KEY, account bigint);\n"
    "INSERT INTO ran VALUES (3);",
    "3_orders.down.sql": "DROP TABLE orders;",
}


def config_map(name: str, data: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


def wait_status(
    kubectl: Kubectl, name: str, operator: OperatorProcess, check: Any, what: str, timeout: float = 90
) -> dict[str, Any]:
    return wait_for(  # type: ignore[no-any-return]
        f"migration {name}: {what}",
        lambda: check((o := kubectl.get("migration", name)).get("status", {})) and o,
        timeout=timeout,
        operator=operator,
    )


def at_version(kubectl: Kubectl, name: str, version: int, operator: OperatorProcess) -> dict[str, Any]:
    return wait_status(
        kubectl,
        name,
        operator,
        lambda s: s.get("phase") == "Ready" and s.get("currentVersion") == version,
        f"Ready at version {version}",
    )


def failed(kubectl: Kubectl, name: str, operator: OperatorProcess, reason: str) -> dict[str, Any]:
    obj = wait_phase(kubectl, "migration", name, {"Failed"}, operator)
    assert condition(obj, "Stalled")["reason"] == reason, obj["status"]
    return obj


def history(uri: str) -> list[tuple[int, bool]]:
    with psycopg.connect(uri) as conn:
        return conn.execute(f"SELECT version, dirty FROM {HISTORY} ORDER BY version").fetchall()


def ran(uri: str) -> list[int]:
    with psycopg.connect(uri) as conn:
        return [row[0] for row in conn.execute("SELECT version FROM ran ORDER BY version")]


def schema(uri: str) -> list[tuple[str, str]]:
    """The public schema's tables and columns."""
    with psycopg.connect(uri) as conn:
        rows = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = 'public' ORDER BY 1, 2"
        ).fetchall()
    return [(str(t), str(c)) for t, c in rows]


def gauge(operator: OperatorProcess, name: str, namespace: str, migration: str = "app") -> list[float]:
    """The values of the operator's gauge `name` for one Migration (one sample, when it is set)."""
    return [
        sample.value
        for sample in operator.metrics()[name].samples
        if sample.labels.get("namespace") == namespace and sample.labels.get("migration") == migration
    ]


def test_config_map_migrations_converge_follow_the_config_map_and_roll_back(
    operator_alive: OperatorProcess, kubectl: Kubectl, db_secret: str, fresh_database: str
) -> None:
    first = {k: v for k, v in THREE.items() if k.startswith("1_")}
    kubectl.apply(config_map("sql", first))
    kubectl.apply(migration("app"))
    at_version(kubectl, "app", 1, operator_alive)
    v1_schema = schema(fresh_database)

    kubectl.apply(config_map("sql", THREE))  # two more migrations; the Migration itself is unchanged
    obj = at_version(kubectl, "app", 3, operator_alive)
    status = obj["status"]
    assert [a["version"] for a in status["applied"]] == [2, 3]
    assert status["targetVersion"] == 3 and status["pendingCount"] == 0
    assert status["restorePoint"] == "habitat-app-1-to-3"  # made on the stack's server before version 2
    assert condition(obj, "Ready")["status"] == "True"
    assert history(fresh_database) == [(1, False), (2, False), (3, False)]

    fourth = {"4_note.up.sql": "ALTER TABLE orders ADD COLUMN note text;\nINSERT INTO ran VALUES (4);"}
    kubectl.apply(config_map("sql", THREE | fourth))
    at_version(kubectl, "app", 4, operator_alive)
    assert ran(fresh_database) == [1, 2, 3, 4]

    refused = kubectl.run("patch", "migration", "app", "--type=merge", "-p", '{"spec":{"targetVersion":1}}')
    assert refused.returncode == 0
    obj = failed(kubectl, "app", operator_alive, "DownScriptMissing")  # version 4 has no down script
    assert "version 4" in obj["status"]["message"]
    assert history(fresh_database)[-1] == (4, False)  # nothing ran

    fourth["4_note.down.sql"] = "ALTER TABLE orders DROP COLUMN note;"
    kubectl.apply(config_map("sql", THREE | fourth))
    obj = at_version(kubectl, "app", 1, operator_alive)
    assert [(a["version"], a["direction"]) for a in obj["status"]["applied"]] == [
        (4, "down"),
        (3, "down"),
        (2, "down"),
    ]
    assert schema(fresh_database) == v1_schema
    assert history(fresh_database) == [(1, False)]
    assert gauge(operator_alive, "habitat_migration_current_version", kubectl.namespace) == [1.0]


def test_two_migrations_on_one_database_wait_for_the_lock_and_apply_each_version_once(
    operator_alive: OperatorProcess, kubectl: Kubectl, db_secret: str, fresh_database: str, pg_admin_uri: str
) -> None:
    kubectl.apply(config_map("sql", THREE))
    dbname = fresh_database.rsplit("/", 1)[1]
    # A Restore of another operator holds the database's lock, as locks.py takes it.
    holder = psycopg.connect(pg_admin_uri, autocommit=True, application_name=holder_name("restore other/r"))
    try:
        holder.execute("SELECT pg_advisory_lock(%s, hashtext(%s))", (LOCK_CLASS, dbname))
        kubectl.apply(migration("one"))
        kubectl.apply(migration("two"))
        waiting = wait_status(
            kubectl, "one", operator_alive, lambda s: s.get("waitingFor"), "waiting for the database lock"
        )
        assert waiting["status"]["waitingFor"] == "restore other/r"
        assert condition(waiting, "Reconciling")["reason"] == "WaitingForLock"
    finally:
        holder.close()
    one = at_version(kubectl, "one", 3, operator_alive)
    two = at_version(kubectl, "two", 3, operator_alive)
    assert ran(fresh_database) == [1, 2, 3]
    assert history(fresh_database) == [(1, False), (2, False), (3, False)]
    runs = [obj["status"].get("applied") for obj in (one, two)]
    assert sorted(len(r or []) for r in runs) == [0, 3]  # one applied all three, the other found them applied


@contextmanager
def busy_table(uri: str) -> Iterator[None]:
    """A table `busy` that a long reader holds for the block: an ALTER TABLE of it must wait."""
    with psycopg.connect(uri, autocommit=True) as setup:
        setup.execute("CREATE TABLE busy (id bigint)")
    with psycopg.connect(uri) as blocker:
        blocker.execute("LOCK TABLE busy IN ACCESS SHARE MODE")
        yield


def apply_add_column(kubectl: Kubectl, retry: dict[str, Any]) -> None:
    """A Migration "app" whose one version alters `busy`, timing out after 300 ms on its lock."""
    source = inline((1, "add", "ALTER TABLE busy ADD COLUMN note text;"))
    kubectl.apply(migration("app", source=source, lockTimeout="300ms", retry=retry))


def test_a_lock_timeout_is_retried_with_backoff_and_then_applies(
    operator_alive: OperatorProcess, kubectl: Kubectl, db_secret: str, fresh_database: str
) -> None:
    with busy_table(fresh_database):
        apply_add_column(kubectl, retry={"limit": 5, "backoff": "1s"})
        retrying = wait_status(
            kubectl, "app", operator_alive, lambda s: (s.get("attempts") or 0) >= 1, "a lock-timeout retry"
        )
        assert condition(retrying, "Reconciling")["reason"] == "LockTimeout"
        assert "version 1 (add) up hit lock_timeout" in retrying["status"]["message"]
        assert "retry 1/5 in 1s" in retrying["status"]["message"]
    obj = at_version(kubectl, "app", 1, operator_alive)
    assert "attempts" not in obj["status"]


def test_lock_timeouts_use_up_the_retries_then_fail_until_the_spec_changes(
    operator_alive: OperatorProcess, kubectl: Kubectl, db_secret: str, fresh_database: str
) -> None:
    with busy_table(fresh_database):  # locked for the whole retry budget
        apply_add_column(kubectl, retry={"limit": 1, "backoff": "1s"})
        obj = failed(kubectl, "app", operator_alive, "LockTimeout")
        message = obj["status"]["message"]
        assert "version 1 (add) up hit lock_timeout" in message and message.endswith("; no retries left")
        assert "attempts" not in obj["status"]
        assert condition(obj, "Ready")["status"] == "False"
        assert counter(operator_alive, "habitat_migration_runs_total", kubectl.namespace, "failure") == 1.0
    assert history(fresh_database) == []
    # The same spec and source would fail the same way: it waits for a change, and a change runs it.
    kubectl.run(
        "patch", "migration", "app", "--type=merge", "-p", json.dumps({"spec": {"lockTimeout": "5s"}})
    )
    at_version(kubectl, "app", 1, operator_alive)
    assert history(fresh_database) == [(1, False)]


def counter(
    operator: OperatorProcess, name: str, namespace: str, result: str, migration: str = "app"
) -> float:
    """A counter's value for one Migration and result."""
    return sum(
        sample.value
        for sample in operator.metrics()[name.removesuffix("_total")].samples
        if sample.name == name
        and sample.labels.get("namespace") == namespace
        and sample.labels.get("migration") == migration
        and sample.labels.get("result") == result
    )


def test_a_failing_migration_leaves_the_database_at_the_previous_version(
    operator_alive: OperatorProcess, kubectl: Kubectl, db_secret: str, fresh_database: str
) -> None:
    source = inline(
        (1, "t", "CREATE TABLE t (id bigint);"),
        (2, "broken", "CREATE TABLE u (id bigint);\nINSERT INTO t VALUES (1);\nSELEC 1;"),
    )
    kubectl.apply(migration("app", source=source))
    obj = failed(kubectl, "app", operator_alive, "MigrationFailed")
    message = obj["status"]["message"]
    assert "version 2 (broken)" in message and "line 3" in message and "syntax error" in message, message
    assert obj["status"]["currentVersion"] == 1
    assert history(fresh_database) == [(1, False)]
    assert [t for t, _ in schema(fresh_database)] == ["t"]  # u was rolled back with its migration
    with psycopg.connect(fresh_database) as conn:
        assert conn.execute("SELECT count(*) FROM t").fetchone() == (0,)


def test_drift_concurrent_index_outside_a_transaction_and_a_dirty_version(
    operator_alive: OperatorProcess, kubectl: Kubectl, db_secret: str, fresh_database: str
) -> None:
    steps = [
        (1, "t", "CREATE TABLE t (id bigint, v text);"),
        (
            2,
            "idx",
            "-- habitat:no-transaction\nSET lock_timeout = '2s';\nCREATE INDEX CONCURRENTLY t_v ON t (v);",
        ),
    ]
    kubectl.apply(migration("app", source=inline(*steps)))
    at_version(kubectl, "app", 2, operator_alive)
    with psycopg.connect(fresh_database) as conn:
        valid = conn.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = 't_v'::regclass").fetchone()
    assert valid == (True,)

    # A no-transaction migration that fails after its first statement: dirty, and it blocks the next.
    half = (
        3,
        "half",
        "-- habitat:no-transaction\n"
        "CREATE INDEX CONCURRENTLY t_id ON t (id);\nCREATE INDEX CONCURRENTLY t_x ON t (nope);",
    )
    kubectl.apply(migration("app", source=inline(*steps, half)))
    obj = failed(kubectl, "app", operator_alive, "Dirty")
    assert obj["status"]["dirtyVersion"] == 3 and "resolveDirty" in obj["status"]["message"]
    assert history(fresh_database)[-1] == (3, True)
    kubectl.apply(migration("app", source=inline(*steps, half, (4, "next", "CREATE TABLE n (id bigint);"))))
    obj = failed(kubectl, "app", operator_alive, "Dirty")
    assert "version 3" in obj["status"]["message"] and "n" not in [t for t, _ in schema(fresh_database)]
    assert gauge(operator_alive, "habitat_migration_dirty", kubectl.namespace) == [1.0]

    # Repaired by hand (the valid index kept, the statement fixed), then marked applied.
    fixed = (3, "half", half[2])
    kubectl.apply(
        migration(
            "app",
            source=inline(*steps, fixed, (4, "next", "CREATE TABLE n (id bigint);")),
            resolveDirty={"version": 3, "action": "markApplied"},
        )
    )
    at_version(kubectl, "app", 4, operator_alive)
    assert history(fresh_database) == [(1, False), (2, False), (3, False), (4, False)]

    # Drift: an applied migration edited in the source stops the object.
    edited = (1, "t", "CREATE TABLE t (id bigint, v text, w text);")
    kubectl.apply(
        migration("app", source=inline(edited, steps[1], fixed, (4, "next", "CREATE TABLE n (id bigint);")))
    )
    obj = failed(kubectl, "app", operator_alive, "ChecksumMismatch")
    assert "version 1 (t)" in obj["status"]["message"]


LINTED = {
    # rule -> a migration that breaks it
    "adding-required-field": "ALTER TABLE t ADD COLUMN a text NOT NULL;",
    "require-concurrent-index-creation": "CREATE INDEX t_id ON t (id);",
    "changing-column-type": "ALTER TABLE t ALTER COLUMN v TYPE varchar(10);",
    "renaming-column": "ALTER TABLE t RENAME COLUMN v TO w;",
    "renaming-table": "ALTER TABLE t RENAME TO t2;",
    "constraint-missing-not-valid": "ALTER TABLE t2 ADD CONSTRAINT positive CHECK (id > 0);",
}


def test_the_linter_flags_each_rule_plan_changes_nothing_and_enforce_refuses(
    operator_alive: OperatorProcess, kubectl: Kubectl, db_secret: str, fresh_database: str
) -> None:
    steps = [(1, "t", "CREATE TABLE t (id bigint PRIMARY KEY, v text);")] + [
        (i, rule.replace("-", "_"), sql) for i, (rule, sql) in enumerate(LINTED.items(), start=2)
    ]
    # No lockTimeout: squawk's require-lock-timeout applies too.
    spec = {"source": inline(*steps), "plan": True, "lockTimeout": None}
    kubectl.apply(migration("app", **spec))
    obj = wait_phase(kubectl, "migration", "app", {"Planned"}, operator_alive)
    findings = obj["status"]["lintFindings"]
    found = {(f["rule"], f["version"]) for f in findings}
    for version, rule in enumerate(LINTED, start=2):
        assert (rule, version) in found, (rule, findings)
    assert ("require-lock-timeout", 2) in found
    assert all(f["line"] == 1 for f in findings if f["version"] > 1)
    assert obj["status"]["pending"] == list(range(1, len(LINTED) + 2))
    assert condition(obj, "Ready")["reason"] == "Planned"
    assert schema(fresh_database) == []  # nothing applied, not even the history table
    with psycopg.connect(fresh_database) as conn:
        assert conn.execute("SELECT to_regclass(%s)", (HISTORY,)).fetchone() == (None,)
    events = json.loads(kubectl.run("get", "events", "-o", "json").stdout)["items"]
    assert [e["reason"] for e in events if e["reason"] == "LintFindings"] == ["LintFindings"]

    kubectl.apply(migration("app", **(spec | {"plan": False, "lint": {"mode": "enforce"}})))
    obj = failed(kubectl, "app", operator_alive, "LintRefused")
    assert "adding-required-field (version 2 line 1)" in obj["status"]["message"]
    assert schema(fresh_database) == []

    skip = {
        "mode": "enforce",
        "skip": [
            *LINTED,
            "require-lock-timeout",
            "prefer-robust-stmts",
            "require-statement-timeout",
            "prefer-text-field",
            "adding-foreign-key-constraint",
        ],
    }
    kubectl.apply(migration("app", **(spec | {"plan": False, "lint": skip})))
    at_version(kubectl, "app", len(LINTED) + 1, operator_alive)


def test_backup_before_produces_a_backup_that_restores(
    operator_alive: OperatorProcess,
    kubectl: Kubectl,
    db_secret: str,
    fresh_database: str,
    target_database: str,
) -> None:
    kubectl.apply(migration("app", source=inline((1, "t", "CREATE TABLE t (id bigint);"))))
    at_version(kubectl, "app", 1, operator_alive)
    before = schema(fresh_database)
    two = inline((1, "t", "CREATE TABLE t (id bigint);"), (2, "u", "CREATE TABLE u (id bigint);"))
    kubectl.apply(migration("app", source=two, backupBefore={"storage": {"filesystem": {"path": "pre"}}}))
    obj = at_version(kubectl, "app", 2, operator_alive)
    name = obj["status"]["backup"]
    backup = kubectl.get("backup", name)
    assert backup["status"]["phase"] == "Succeeded"
    assert backup["metadata"]["ownerReferences"][0]["name"] == "app"

    kubectl.apply(restore("back", source={"backupRef": {"name": name}}))
    assert finished(kubectl, "back", operator_alive)["status"]["phase"] == "Succeeded"
    assert schema(target_database) == before


def test_operator_killed_mid_migration_converges_without_running_anything_twice(
    operator_alive: OperatorProcess, kubectl: Kubectl, db_secret: str, fresh_database: str
) -> None:
    slow = "CREATE TABLE ran (version int);\nINSERT INTO ran VALUES (1);\nSELECT pg_sleep(4);"
    kubectl.apply(
        migration("app", source=inline((1, "slow", slow), (2, "next", "INSERT INTO ran VALUES (2);")))
    )
    wait_phase(kubectl, "migration", "app", {"Running"}, operator_alive)
    sleeping = (
        "SELECT 1 FROM pg_stat_activity"
        " WHERE application_name LIKE 'habitat-migration %' AND query LIKE '%pg_sleep%'"
    )
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        wait_for("the migration's session to sleep", lambda: conn.execute(sleeping).fetchone())
    operator_alive.kill()
    operator_alive.start()
    at_version(kubectl, "app", 2, operator_alive)
    assert ran(fresh_database) == [1, 2]
    assert history(fresh_database) == [(1, False), (2, False)]


@pytest.mark.parametrize(
    "spec, message",
    [
        (
            {"source": {"inline": [], "configMapRefs": [{"name": "x"}]}},
            "exactly one of configMapRefs or inline",
        ),
        ({"source": inline((0, "zero", "SELECT 1;"))}, "should be greater than or equal to 1"),
        ({"source": inline((1, "a", "SELECT 1;"), (1, "b", "SELECT 2;"))}, "versions must be unique"),
        ({"source": inline((1, "a", "SELECT 1;")), "targetVersion": 7}, "targetVersion must be one of"),
        (
            {"source": inline((1, "a", "SELECT 1;")), "lint": {"mode": "strict"}},
            'supported values: "warn", "enforce"',
        ),
    ],
)
def test_invalid_specs_are_rejected_at_apply_time(
    installed: None, kubectl: Kubectl, spec: dict[str, Any], message: str
) -> None:
    result = kubectl.apply(migration("bad", **spec), check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr


def test_what_the_schema_cannot_see_stalls_with_invalid_spec(
    operator_alive: OperatorProcess, kubectl: Kubectl, db_secret: str
) -> None:
    kubectl.apply(config_map("a", {"1_x.up.sql": "SELECT 1;"}))
    kubectl.apply(config_map("b", {"1_y.up.sql": "SELECT 2;"}))
    kubectl.apply(migration("app", source={"configMapRefs": [{"name": "a"}, {"name": "b"}]}))
    obj = failed(kubectl, "app", operator_alive, "InvalidSpec")
    assert (
        "spec.source.configMapRefs[1] (ConfigMap b): key '1_y.up.sql': version 1 also comes from a/1_x.up.sql"
        in (obj["status"]["message"])
    )


def test_transaction_control_in_a_transactional_migration_is_refused_before_anything_runs(
    operator_alive: OperatorProcess, kubectl: Kubectl, db_secret: str, fresh_database: str
) -> None:
    ledger = (
        "CREATE TABLE ledger (id int);\nINSERT INTO ledger VALUES (1);\nCOMMIT;\n"
        "INSERT INTO ledger VALUES (2);\nSELECT 1/0;"
    )
    kubectl.apply(
        migration("app", source=inline((1, "t", "CREATE TABLE t (id int);"), (2, "ledger", ledger)))
    )
    obj = failed(kubectl, "app", operator_alive, "InvalidMigration")
    message = obj["status"]["message"]
    assert message.startswith("version 2 (ledger) up (spec.source.inline[1].up) line 3: 'COMMIT'"), message
    assert "rolled back" not in message and "nothing was applied" in message
    assert schema(fresh_database) == []  # not even version 1 ran
    with psycopg.connect(fresh_database) as conn:
        assert conn.execute("SELECT to_regclass(%s)", (HISTORY,)).fetchone() == (None,)


def test_a_dirty_migration_shows_the_last_clean_version_as_current(
    operator_alive: OperatorProcess, kubectl: Kubectl, db_secret: str, fresh_database: str
) -> None:
    slow = "-- habitat:no-transaction\nCREATE TABLE half (id int);\nSELECT pg_sleep(4);"
    kubectl.apply(migration("app", source=inline((1, "t", "CREATE TABLE t (id int);"), (2, "slow", slow))))
    sleeping = (
        "SELECT 1 FROM pg_stat_activity"
        " WHERE application_name LIKE 'habitat-migration %' AND query LIKE '%pg_sleep%'"
    )
    with psycopg.connect(fresh_database, autocommit=True) as conn:
        wait_for("version 2 to sleep", lambda: conn.execute(sleeping).fetchone())
    operator_alive.kill()  # mid version 2, outside a transaction: dirty
    operator_alive.start()
    obj = failed(kubectl, "app", operator_alive, "Dirty")
    assert (obj["status"]["currentVersion"], obj["status"]["dirtyVersion"]) == (1, 2), obj["status"]
    assert history(fresh_database) == [(1, False), (2, True)]


def test_a_config_map_edited_mid_run_says_which_copy_ran(
    operator_alive: OperatorProcess, kubectl: Kubectl, db_secret: str, fresh_database: str
) -> None:
    first = "CREATE TABLE t (id int);\nSELECT pg_sleep(3);"
    kubectl.apply(config_map("sql", {"1_t.up.sql": first}))
    kubectl.apply(migration("app"))
    wait_phase(kubectl, "migration", "app", {"Running"}, operator_alive)
    kubectl.apply(config_map("sql", {"1_t.up.sql": "CREATE TABLE t (id int, v text);\nSELECT pg_sleep(3);"}))
    obj = failed(kubectl, "app", operator_alive, "ChecksumMismatch")
    status = obj["status"]
    ran = hashlib.sha256(first.encode()).hexdigest()
    assert [(a["version"], a["checksum"]) for a in status["applied"]] == [(1, ran)]
    assert f"sha256 {ran[:12]}… then" in status["message"]
    assert status["appliedSourceDigest"] != status["sourceDigest"]


def big_migration(table: str, size: int) -> str:
    """About `size` characters of multi-row INSERTs: a data migration as users write them."""
    rows = ",".join(f"({i}, 'row number {i} of the big migration')" for i in range(200))
    statement = f"INSERT INTO {table} VALUES {rows};\n"
    return f"CREATE TABLE {table} (id int, note text);\n" + statement * (size // len(statement))


def test_healthz_answers_within_a_second_while_two_megabytes_of_migrations_run(
    operator_alive: OperatorProcess, kubectl: Kubectl, db_secret: str, fresh_database: str
) -> None:
    for version, name in ((1, "big-a"), (2, "big-b")):
        data = {
            f"{version}_{name.replace('-', '_')}.up.sql": big_migration(name.replace("-", "_"), 1_000_000)
        }
        kubectl.run("create", "-f", "-", stdin=json.dumps(config_map(name, data)))  # too big to apply
    refs = {"configMapRefs": [{"name": "big-a"}, {"name": "big-b"}]}
    kubectl.apply(migration("app", source=refs, lint={"skip": ["prefer-bigint-over-int"]}))
    healthz = operator_alive.metrics_url.replace("/metrics", "/healthz")
    slowest = 0.0
    deadline = time.monotonic() + 120
    while kubectl.get("migration", "app").get("status", {}).get("currentVersion") != 2:
        assert time.monotonic() < deadline, operator_alive.log_tail()
        started = time.monotonic()
        with urllib.request.urlopen(healthz, timeout=5) as response:
            assert response.status == 200
        slowest = max(slowest, time.monotonic() - started)
        assert slowest < 1.0, f"/healthz took {slowest:.1f}s"
    with psycopg.connect(fresh_database) as conn:
        counts = conn.execute("SELECT (SELECT count(*) FROM big_a), (SELECT count(*) FROM big_b)").fetchone()
    assert counts is not None and min(counts) > 20_000
