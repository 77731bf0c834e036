"""The plugin's actions as pure functions: the objects they write, checked with the API models, and
the kinds they can suspend. The commands against the apiserver: tests/e2e/test_plugin_actions.py."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

import pytest
from pydantic import ValidationError

from habitat_operator.api import ALL_KINDS, GROUP
from habitat_operator.api.backup import BackupSpec
from habitat_operator.api.children import TRIGGER_LABEL, Trigger, child_body
from habitat_operator.api.common import SCHEDULE_LABEL
from habitat_operator.api.replayjob import REPLAYJOB, ReplayJobSpec
from habitat_operator.api.restore import RESTORE, RestoreSpec
from habitat_operator.plugin import (
    cli,
    flags,
    manual_run,
    replay_manifest,
    restore_manifest,
    suspend,
    suspension,
)
from habitat_operator.plugin.kubectl import Kubectl
from habitat_operator.plugin.writing import UsageError, describe, manifest

NOW = dt.datetime(2026, 12, 7, 10, 30, 5, tzinfo=dt.UTC)


def parse(*argv: str) -> argparse.Namespace:
    return cli.parser().parse_args(argv)


def schedule_body(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "ops.habitat.dev/v1alpha1",
        "kind": "Backup",
        "metadata": {"name": "nightly", "namespace": "app", "uid": "u-1"},
        "spec": {
            "database": {"secretRef": {"name": "db"}},
            "storage": {"filesystem": {"path": "app"}},
            "schedule": "0 3 * * *",
            "suspend": True,
            "retention": {"keepLast": 3},
            **spec,
        },
    }


# ---------------------------------------------------------------- backup


def test_a_manual_run_is_the_schedules_child_with_a_manual_label() -> None:
    parent = schedule_body()
    run = manual_run.manual_run(parent, NOW)

    scheduled = child_body(parent, ("schedule", "suspend", "retention"), NOW)
    assert run["metadata"]["labels"] == {SCHEDULE_LABEL: "nightly", TRIGGER_LABEL: Trigger.MANUAL}
    assert {**run["metadata"], "labels": None} == {**scheduled["metadata"], "labels": None}
    assert run["metadata"]["name"] == "nightly-20261207103005"
    assert run["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert run["spec"] == scheduled["spec"]
    assert "schedule" not in run["spec"] and "retention" not in run["spec"] and "suspend" not in run["spec"]
    BackupSpec.model_validate(run["spec"])


def test_a_one_shot_backup_has_no_run_to_start() -> None:
    one_shot = schedule_body()
    del one_shot["spec"]["schedule"], one_shot["spec"]["retention"]
    with pytest.raises(manual_run.NotASchedule, match="has no schedule"):
        manual_run.manual_run(one_shot, NOW)


# ---------------------------------------------------------------- restore


def restore_of(*argv: str) -> dict[str, Any]:
    args = parse("restore", *argv)
    body = manifest(RESTORE, "r", "app", restore_manifest.restore_spec(args))
    RestoreSpec.model_validate(body["spec"])  # what the apiserver's schema and CEL rules check too
    return dict(body["spec"])


def test_restore_of_a_backup_writes_only_what_was_asked() -> None:
    assert restore_of("nightly", "--to-database", "target-db") == {
        "source": {"backupRef": {"name": "nightly"}},
        "target": {"database": {"secretRef": {"name": "target-db"}}},
    }
    spec = restore_of(
        "backup/nightly", "--run", "nightly-20261207030000", "--to-database", "t/dsn", "--drill"
    )
    assert spec["source"] == {"backupRef": {"name": "nightly", "run": "nightly-20261207030000"}}
    assert spec["target"] == {"database": {"secretRef": {"name": "t", "key": "dsn"}}}
    assert spec["drill"] is True


def test_restore_to_a_point_in_time_of_a_wal_archive() -> None:
    spec = restore_of("walarchive/main", "--time", "2026-12-07T10:00:00Z", "--to-database", "t")
    assert spec["source"] == {
        "pointInTime": {"walArchiveRef": {"name": "main"}, "target": {"time": "2026-12-07T10:00:00Z"}}
    }
    latest = restore_of("walarchive/main", "--latest", "--to-database", "t", "--database", "app")
    assert latest["source"]["pointInTime"]["target"] == {"latest": True}
    assert latest["source"]["pointInTime"]["database"] == "app"


BUCKET = ("--from-bucket", "backups", "--credentials", "s3", "--endpoint", "http://s3:9000", "--path-style")


def test_restore_from_a_bucket_alone() -> None:
    newest = restore_of(*BUCKET, "--latest", "--database", "app", "--to-database", "t")
    assert newest["source"]["storage"] == {
        "s3": {
            "bucket": "backups",
            "endpoint": "http://s3:9000",
            "forcePathStyle": True,
            "credentialsSecretRef": {"name": "s3"},
        },
        "latestOf": {"database": "app"},
    }
    by_key = restore_of(*BUCKET, "--key", "habitat/app/nightly.dump", "--to-database", "t")
    assert by_key["source"]["storage"]["key"] == "habitat/app/nightly.dump"
    pitr = restore_of(*BUCKET, "--archive", "main", "--lsn", "0/3000060", "--to-database", "t")
    assert pitr["source"]["pointInTime"]["storage"]["archive"] == "main"
    assert pitr["source"]["pointInTime"]["target"] == {"lsn": "0/3000060"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("--to-database", "t"), "name a source"),
        (("nightly", "--from-bucket", "b", "--to-database", "t"), "not both"),
        (("nightly", "--time", "2026-12-07T10:00:00Z", "--to-database", "t"), "point-in-time source"),
        (("walarchive/main", "--to-database", "t"), "where recovery stops"),
        (("migration/x", "--to-database", "t"), "the source is a Backup"),
        (("--from-bucket", "backups", "--to-database", "t"), "--credentials"),
        ((*BUCKET, "--to-database", "t"), "--key KEY, or --database NAME"),
        ((*BUCKET, "--time", "2026-12-07T10:00:00Z", "--to-database", "t"), "need --archive"),
    ],
)
def test_restore_flags_that_make_no_restore_are_refused_in_one_line(
    argv: tuple[str, ...], message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        restore_manifest.restore_spec(parse("restore", *argv))


def test_a_value_the_api_models_refuse_is_named() -> None:
    with pytest.raises(ValidationError) as refused:
        restore_manifest.restore_spec(parse("restore", "Not_A_Name", "--to-database", "t"))
    assert describe(refused.value).startswith("name: String should match pattern")
    with pytest.raises(ValidationError) as bad_time:
        restore_manifest.restore_spec(
            parse("restore", "walarchive/m", "--time", "yesterday", "--to-database", "t")
        )
    assert describe(bad_time.value).startswith("time: ")


# ---------------------------------------------------------------- replay


def test_replay_of_a_workflow_to_an_exchange() -> None:
    args = parse(
        "replay", "--correlation-id", "order-42", "--to-exchange", "orders",
        "--events-database", "events-db", "--broker", "mq/amqp", "--count-only",
    )  # fmt: skip
    body = manifest(REPLAYJOB, "r", "app", replay_manifest.replay_spec(args))
    assert body["spec"] == {
        "source": {"database": {"secretRef": {"name": "events-db"}}},
        "selector": {"correlationIds": ["order-42"]},
        "target": {"rabbitmq": {"secretRef": {"name": "mq", "key": "amqp"}}, "exchange": {"name": "orders"}},
        "dryRun": True,
    }
    ReplayJobSpec.model_validate(body["spec"])
    assert replay_manifest.default_name(args).startswith("order-42-")
    odd = parse(
        "replay", "--correlation-id", "Ω/42", "--to-queue", "q", "--events-database", "e", "--broker", "b"
    )
    assert replay_manifest.default_name(odd).startswith("replay-")


def test_replay_needs_a_destination_and_a_selection() -> None:
    common = ("--events-database", "e", "--broker", "b")
    with pytest.raises(UsageError, match="--to-exchange"):
        replay_manifest.replay_spec(parse("replay", "--correlation-id", "x", *common))
    with pytest.raises(ValidationError, match="selector needs at least one of"):
        replay_manifest.replay_spec(parse("replay", "--to-queue", "q", *common))


# ---------------------------------------------------------------- suspend and resume


def test_the_kinds_with_a_suspend_switch_come_from_the_api_models() -> None:
    assert [kind.kind for kind in suspension.SUSPENDABLE] == ["Backup", "Restore", "ReplayJob", "WalArchive"]
    # The parser's copy, which it keeps to build without the models.
    assert tuple(kind.singular for kind in suspension.SUSPENDABLE) == suspend.SUSPENDABLE_KINDS
    assert {flags.habitat_resource(f"{kind}s") for kind in suspend.SUSPENDABLE_KINDS} <= {
        kind.crd_name for kind in ALL_KINDS
    }
    assert suspension.suspendable_kind("backup/nightly")[1] == "nightly"
    for reference in (
        "Backup/x",
        "backups/x",
        "hbk/x",
        "backups.ops.habitat.dev/x",
        "replayjob/x",
        "walarchive/x",
    ):
        assert suspension.suspendable_kind(reference)[1] == "x"
    with pytest.raises(UsageError, match="'migration' cannot be suspended; these kinds can: backup, restore"):
        suspension.suspendable_kind("migration/x")
    with pytest.raises(UsageError, match="KIND/NAME"):
        suspension.suspendable_kind("nightly")


def test_only_a_scheduled_backup_or_restore_can_be_suspended() -> None:
    kind, _ = suspension.suspendable_kind("backup/nightly")
    assert suspension.refusal(kind, schedule_body()) is None
    one_shot = schedule_body()
    del one_shot["spec"]["schedule"]
    assert (
        suspension.refusal(kind, one_shot)
        == "backup/nightly has no schedule: only a scheduled Backup can be suspended"
    )
    replay_kind, _ = suspension.suspendable_kind("replayjob/r")
    assert suspension.refusal(replay_kind, {"metadata": {"name": "r"}, "spec": {}}) is None


# ---------------------------------------------------------------- the parsers


def test_the_parsers_group_is_the_apis() -> None:
    """The parsers name resources without importing the models (plugin/flags.py)."""
    assert flags.HABITAT_GROUP == GROUP


@pytest.mark.parametrize(
    "argv",
    [
        ("report", "--log-lines", "-1"),  # kubectl's "every line": unbounded
        ("report", "--log-lines", "1000000"),
        ("backup", "nightly", "--wait", "--wait-timeout", "0"),
        ("restore", "nightly", "--to-database", "t", "--wait-timeout", "nan"),
    ],
)
def test_numbers_out_of_bounds_are_refused_by_the_parser(argv: tuple[str, ...]) -> None:
    with pytest.raises(SystemExit) as refused:
        parse(*argv)
    assert refused.value.code == 2


def test_a_name_the_apiserver_would_refuse_is_refused_before_anything_is_printed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = parse("restore", "nightly", "--to-database", "t", "--name", "Nightly_Restore", "--dry-run")

    assert args.run(args, Kubectl(binary="/nonexistent/kubectl")) == 2

    printed = capsys.readouterr()
    assert printed.out == ""
    assert printed.err == "kubectl habitat restore: --name 'Nightly_Restore' is not a valid object name\n"
