"""`kubectl habitat backup|restore|replay|suspend|resume|report` as users run them: `kubectl habitat`
found through PATH by the stack's kubectl, against the stack's apiserver, PostgreSQL and the shared
operator. What the plugin writes is checked by the apiserver itself (a server-side dry run of the
printed YAML), and the report's redaction with a real role whose password holds @:/%#? characters.
"""

from __future__ import annotations

import base64
import io
import json
import secrets
import subprocess
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit

import psycopg
import pytest
import yaml
from psycopg import sql

from habitat_operator.api import ALL_KINDS
from tests.e2e.conftest import OperatorProcess
from tests.e2e.helpers import NEVER_IN_THIS_TEST, backup, snapshot, wait_for, wait_phase
from tests.harness import Kubectl, Stack

pytestmark = pytest.mark.e2e

Habitat = Callable[..., subprocess.CompletedProcess[str]]
MANUAL = "ops.habitat.dev/trigger=manual"


def said(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"


def server_accepts(kubectl: Kubectl, manifest: str) -> None:
    """The apiserver validates the YAML (schema and CEL rules) without storing it."""
    kubectl.run("create", "--dry-run=server", "-f", "-", stdin=manifest)


@pytest.mark.parametrize("command", ["backup", "restore", "replay", "suspend", "resume", "report"])
def test_every_action_has_help(habitat: Habitat, command: str) -> None:
    result = habitat(command, "--help")
    assert result.returncode == 0, said(result)
    assert f"usage: kubectl habitat {command}" in result.stdout


# ---------------------------------------------------------------- backup


def test_backup_starts_a_manual_run_of_a_schedule_and_waits_for_it(
    habitat: Habitat, kubectl: Kubectl, db_secret: str, operator_alive: OperatorProcess
) -> None:
    kubectl.apply(backup("nightly", schedule=NEVER_IN_THIS_TEST, retention={"keepLast": 5}))

    result = habitat("backup", "nightly", "--wait")

    assert result.returncode == 0, said(result) + operator_alive.log_tail()
    assert "Succeeded" in result.stdout
    runs = json.loads(kubectl.run("get", "backups", "-l", MANUAL, "-o", "json").stdout)["items"]
    assert len(runs) == 1 and runs[0]["status"]["phase"] == "Succeeded"
    run = runs[0]["metadata"]["name"]
    assert runs[0]["metadata"]["ownerReferences"][0]["name"] == "nightly"
    assert "schedule" not in runs[0]["spec"] and "retention" not in runs[0]["spec"]
    # The schedule counts it as one of its runs.
    wait_for(
        "the schedule to list the manual run",
        lambda: run in (kubectl.get("backup", "nightly").get("status", {}).get("recentRuns") or []),
        operator=operator_alive,
    )


def test_backup_wait_exits_1_when_the_run_fails_and_2_when_it_cannot_tell(
    habitat: Habitat, kubectl: Kubectl, fresh_database: str, operator_alive: OperatorProcess
) -> None:
    wrong = fresh_database.replace("://postgres:", "://postgres:wrong", 1)
    kubectl.run("create", "secret", "generic", "habitat-db", f"--from-literal=uri={wrong}")
    kubectl.apply(backup("nightly", schedule=NEVER_IN_THIS_TEST, retry={"limit": 0}))
    kubectl.apply(backup("once"))
    kubectl.apply(backup("keyless", schedule=NEVER_IN_THIS_TEST, database={"secretRef": {"name": "absent"}}))

    failed = habitat("backup", "nightly", "--wait")
    one_shot = habitat("backup", "once")
    waiting = habitat("backup", "keyless", "--wait", "--wait-timeout", "3")

    assert failed.returncode == 1, said(failed)
    assert "Failed" in failed.stdout
    assert one_shot.returncode == 2, said(one_shot)
    assert "backup/once has no schedule" in one_shot.stderr
    # A run that waits (here for its Secret) is shown waiting, and given up on: exit 2.
    assert waiting.returncode == 2, said(waiting)
    assert "absent" in waiting.stdout and "stopped waiting" in waiting.stdout


# ---------------------------------------------------------------- restore


def test_restore_dry_run_prints_what_the_apiserver_accepts_and_creates_nothing(
    habitat: Habitat, kubectl: Kubectl
) -> None:
    sources = [
        ("nightly", "--run", "nightly-20261207030000"),
        ("walarchive/main", "--time", "2026-12-07T10:00:00Z", "--drill"),
        ("--from-bucket", "habitat-dr", "--credentials", "s3", "--endpoint", "http://s3.example:9000",
         "--path-style", "--latest", "--database", "app", "--create-database"),
        ("--from-bucket", "habitat-dr", "--credentials", "s3", "--archive", "main", "--lsn", "0/3000060"),
    ]  # fmt: skip
    for source in sources:
        result = habitat("restore", *source, "--to-database", "target-db", "--dry-run")
        assert result.returncode == 0, said(result)
        assert yaml.safe_load(result.stdout)["kind"] == "Restore"
        server_accepts(kubectl, result.stdout)
    as_json = habitat("restore", "nightly", "--to-database", "target-db", "--dry-run", "-o", "json")
    assert json.loads(as_json.stdout)["spec"]["source"] == {"backupRef": {"name": "nightly"}}, said(as_json)
    assert json.loads(kubectl.run("get", "restores", "-o", "json").stdout)["items"] == []

    refused = habitat("restore", "walarchive/main", "--to-database", "target-db")
    assert refused.returncode == 2 and "where recovery stops" in refused.stderr, said(refused)


def test_restore_writes_the_restore_and_waits_for_it(
    habitat: Habitat,
    kubectl: Kubectl,
    source_backup: dict[str, Any],
    fresh_database: str,
    target_database: str,
    operator_alive: OperatorProcess,
) -> None:
    result = habitat("restore", "source", "--to-database", "target-db", "--name", "from-source", "--wait")

    assert result.returncode == 0, said(result) + operator_alive.log_tail()
    assert "restore/from-source created" in result.stdout and "Succeeded" in result.stdout
    assert kubectl.get("restore", "from-source")["spec"]["source"] == {
        "backupRef": {"name": "source", "run": "latest"}
    }
    assert snapshot(target_database) == snapshot(fresh_database)


# ---------------------------------------------------------------- replay


def test_replay_writes_a_replayjob_for_a_workflow(habitat: Habitat, kubectl: Kubectl) -> None:
    flags = ("--correlation-id", "order-42", "--to-exchange", "orders", "--events-database", "events-db",
             "--broker", "broker", "--rate-limit", "50", "--name", "order-42")  # fmt: skip

    printed = habitat("replay", *flags, "--dry-run")
    assert printed.returncode == 0, said(printed)
    server_accepts(kubectl, printed.stdout)
    assert kubectl.run("get", "replayjobs", "-o", "name").stdout == ""

    created = habitat("replay", *flags)
    assert created.returncode == 0, said(created)
    stored = kubectl.get("replayjob", "order-42")["spec"]
    assert stored["selector"] == {"correlationIds": ["order-42"]}
    assert stored["target"]["exchange"] == {"name": "orders"}
    assert stored["source"]["database"]["secretRef"]["name"] == "events-db"
    assert stored["rateLimit"] == 50


# ---------------------------------------------------------------- suspend and resume


def test_suspend_and_resume_a_schedule(
    habitat: Habitat, kubectl: Kubectl, db_secret: str, operator_alive: OperatorProcess
) -> None:
    kubectl.apply(backup("nightly", schedule=NEVER_IN_THIS_TEST))
    kubectl.apply(backup("once", verify=False))

    suspended = habitat("suspend", "backup/nightly")
    again = habitat("suspend", "backups.ops.habitat.dev/nightly")

    assert suspended.returncode == 0 and "backup/nightly suspended" in suspended.stdout, said(suspended)
    assert again.returncode == 0 and "already suspended" in again.stdout, said(again)
    assert kubectl.get("backup", "nightly")["spec"]["suspend"] is True
    wait_phase(kubectl, "backup", "nightly", {"Suspended"}, operator_alive)

    resumed = habitat("resume", "backup/nightly", "-o", "json")  # for scripts: the object, the line on stderr
    assert resumed.returncode == 0 and "backup/nightly resumed" in resumed.stderr, said(resumed)
    assert json.loads(resumed.stdout)["spec"]["suspend"] is False
    wait_phase(kubectl, "backup", "nightly", {"Scheduled"}, operator_alive)

    for refused, why in (("backup/once", "has no schedule"), ("migration/m", "cannot be suspended")):
        result = habitat("suspend", refused)
        assert result.returncode == 2 and why in result.stderr, said(result)


# ---------------------------------------------------------------- report

PASSWORD = "Hx7@:/p%25#?q=1&s"


@pytest.fixture
def role_uri(pg_admin_uri: str, fresh_database: str) -> Iterator[str]:  # an empty database: CONNECT is enough
    """The fresh database's URI as a role whose password holds every character a URI treats specially."""
    role = f"t_{secrets.token_hex(5)}"
    with psycopg.connect(pg_admin_uri, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(PASSWORD))
        )
    parts = urlsplit(fresh_database)
    yield f"postgresql://{role}:{quote(PASSWORD, safe='')}@{parts.hostname}:{parts.port}{parts.path}"
    with psycopg.connect(pg_admin_uri, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def encodings(value: str) -> set[str]:
    encoded = base64.b64encode(value.encode()).decode()
    return {value, quote(value, safe=""), quote(value), quote_plus(value), encoded, encoded.rstrip("="),
            base64.urlsafe_b64encode(value.encode()).decode(), json.dumps(value)[1:-1]}  # fmt: skip


def test_report_holds_the_resources_and_no_trace_of_a_password(
    habitat: Habitat,
    kubectl: Kubectl,
    namespace: str,
    role_uri: str,
    operator_alive: OperatorProcess,
    tmp_path: Path,
) -> None:
    raw_uri = role_uri.replace(quote(PASSWORD, safe=""), PASSWORD)  # not a valid URI: the operator says so
    kubectl.run("create", "secret", "generic", "habitat-db", f"--from-literal=uri={role_uri}")
    kubectl.run(
        "create",
        "secret",
        "generic",
        "raw-db",
        f"--from-literal=uri={raw_uri}",
        "--from-literal=password=" + PASSWORD,
    )
    kubectl.apply(backup("good"))
    kubectl.apply(backup("raw", database={"secretRef": {"name": "raw-db"}}, retry={"limit": 0}))
    wait_phase(kubectl, "backup", "good", {"Succeeded"}, operator_alive)
    wait_phase(kubectl, "backup", "raw", {"Failed", "Succeeded"}, operator_alive)
    # What a careless user leaves around: the URI in a Deployment's env, the password in an Event.
    operator_like = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "habitat-operator", "labels": {"app.kubernetes.io/name": "habitat-operator"},
                     "annotations": {"copy": base64.b64encode(PASSWORD.encode()).decode()}},
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": "habitat-operator"}},
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": "habitat-operator"}},
                "spec": {"containers": [{"name": "operator", "image": "registry.invalid/habitat:1", "env": [
                    {"name": "DATABASE_URL", "value": role_uri}, {"name": "PGPASSWORD", "value": PASSWORD},
                    {"name": "RAW", "value": raw_uri}]}]},
            },
        },
    }  # fmt: skip
    kubectl.apply(operator_like)
    good = kubectl.get("backup", "good")
    kubectl.apply({
        "apiVersion": "v1", "kind": "Event", "metadata": {"name": "leaky"},
        "involvedObject": {"apiVersion": good["apiVersion"], "kind": "Backup", "name": "good",
                           "namespace": namespace, "uid": good["metadata"]["uid"]},
        "reason": "Leaky", "type": "Warning", "message": f"tried {raw_uri} and password={PASSWORD}",
    })  # fmt: skip
    path = tmp_path / "report.zip"

    result = habitat("report", "--logs", "-o", str(path))

    assert result.returncode == 0, said(result)
    with zipfile.ZipFile(path) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    found = {
        (name, form)
        for name, content in files.items()
        for form in encodings(PASSWORD) | encodings(role_uri)
        if form.encode() in content
    }
    assert found == set()
    for content in files.values():  # and no member hides it compressed
        assert zipfile.is_zipfile(io.BytesIO(content)) is False
    text = {name: content.decode() for name, content in files.items()}
    backups = yaml.safe_load(text[f"namespaces/{namespace}/backups.yaml"])
    assert [b["metadata"]["name"] for b in backups] == ["good", "raw"]
    assert backups[0]["status"]["phase"] == "Succeeded"
    secrets_listed = yaml.safe_load(text[f"namespaces/{namespace}/secrets.yaml"])
    assert {
        "name": "raw-db",
        "namespace": namespace,
        "type": "Opaque",
        "keys": ["password", "uri"],
    } in secrets_listed
    events = yaml.safe_load(text[f"namespaces/{namespace}/events.yaml"])
    leaky = next(e for e in events if e["metadata"]["name"] == "leaky")
    assert leaky["message"].startswith("tried postgresql://") and "REDACTED" in leaky["message"]
    crds = yaml.safe_load(text["crds.yaml"])
    assert {c["name"] for c in crds} >= {"backups.ops.habitat.dev", "restores.ops.habitat.dev"}
    assert all(c["storedVersions"] == ["v1alpha1"] for c in crds)
    deployments = yaml.safe_load(text["operator/deployments.yaml"])
    assert any(d["metadata"]["namespace"] == namespace for d in deployments)
    index = json.loads(text["report.json"])
    assert index["namespaces"] == [namespace]
    # The stack runs no containers, so the log is empty: the report says so instead of failing.
    assert any("log of" in problem for problem in index["problems"])

    everywhere = habitat("report", "-A", "-o", str(tmp_path / "all.zip"))
    assert everywhere.returncode == 0, said(everywhere)
    with zipfile.ZipFile(tmp_path / "all.zip") as archive:
        assert f"namespaces/{namespace}/backups.yaml" in archive.namelist()
        assert not any(
            form.encode() in archive.read(name) for name in archive.namelist() for form in encodings(PASSWORD)
        )


HABITAT_RESOURCES = ",".join(kind.crd_name for kind in ALL_KINDS)


def test_report_for_a_user_who_may_read_only_the_habitat_resources(
    habitat: Habitat, kubectl: Kubectl, stack: Stack, namespace: str, tmp_path: Path
) -> None:
    kubectl.apply(backup("nightly", schedule=NEVER_IN_THIS_TEST))
    kubectl.run("create", "serviceaccount", "reader")
    kubectl.run(
        "create",
        "role",
        "reader",
        "--verb=get,list",
        f"--resource={HABITAT_RESOURCES},events",
    )
    kubectl.run("create", "rolebinding", "reader", "--role=reader", f"--serviceaccount={namespace}:reader")
    token = kubectl.run("create", "token", "reader").stdout.strip()
    config = yaml.safe_load(Path(stack.kubeconfig).read_text())
    config["users"] = [{"name": "reader", "user": {"token": token}}]
    config["contexts"][0]["context"]["user"] = "reader"
    (tmp_path / "kubeconfig").write_text(json.dumps(config))

    result = habitat("report", "--kubeconfig", str(tmp_path / "kubeconfig"), "-o", str(tmp_path / "r.zip"))

    assert result.returncode == 0, said(result)
    with zipfile.ZipFile(tmp_path / "r.zip") as archive:
        index = json.loads(archive.read("report.json"))
        assert "nightly" in archive.read(f"namespaces/{namespace}/backups.yaml").decode()
    not_read = " ".join(index["problems"])
    assert "secrets not read" in not_read and "customresourcedefinitions not read" in not_read
    assert "secrets not read" in result.stderr
