"""A one-shot Backup or Restore is immutable, like a Job's template; a schedule stays editable.

The CRDs' CEL transition rules enforce it in the apiserver at apply time, so no operator runs here:
the objects are never acted on, only created, edited and refused.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.e2e.helpers import backup, restore
from tests.harness import Kubectl

pytestmark = pytest.mark.e2e

BACKUP_IMMUTABLE = "spec of a one-shot Backup is immutable; create a new Backup to run again"
RESTORE_IMMUTABLE = "spec of a one-shot Restore is immutable; create a new Restore to run again"


def refused(kubectl: Kubectl, manifest: dict[str, Any]) -> str:
    """kubectl apply's error for a manifest the apiserver must refuse."""
    result = kubectl.apply(manifest, check=False)
    assert result.returncode != 0, f"apply was accepted: {result.stdout}"
    return result.stderr


def test_one_shot_backup_spec_change_is_refused(installed: None, kubectl: Kubectl) -> None:
    kubectl.apply(backup("once"))
    created = kubectl.get("backup", "once")

    error = refused(kubectl, backup("once", verify=False))
    assert BACKUP_IMMUTABLE in error
    assert "schedule cannot be removed" not in error
    patch = kubectl.run("patch", "backup", "once", "--type=merge", "-p", '{"spec":{"jobs":1}}', check=False)
    assert patch.returncode == 0, patch.stderr  # the default written out: no change at all
    patch = kubectl.run(
        "patch", "backup", "once", "--type=merge", "-p", '{"spec":{"timeout":"2h"}}', check=False
    )
    assert patch.returncode != 0 and BACKUP_IMMUTABLE in patch.stderr
    server_side = kubectl.run(
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        "-",
        stdin=json.dumps(backup("once", timeout="2h")),
        check=False,
    )
    assert server_side.returncode != 0 and BACKUP_IMMUTABLE in server_side.stderr

    after = kubectl.get("backup", "once")
    assert after["spec"] == created["spec"]
    assert after["metadata"]["generation"] == 1

    # Only the spec is frozen: the same manifest again, metadata and status still go through.
    kubectl.apply(backup("once"))
    kubectl.run("label", "backup", "once", "team=platform")
    kubectl.run("annotate", "backup", "once", "note=kept")
    kubectl.run(
        "patch",
        "backup",
        "once",
        "--subresource=status",
        "--type=merge",
        "-p",
        '{"status":{"phase":"Running"}}',
    )
    after = kubectl.get("backup", "once")
    assert after["metadata"]["labels"]["team"] == "platform"
    assert after["status"]["phase"] == "Running"
    assert after["metadata"]["generation"] == 1


def test_one_shot_restore_spec_change_is_refused(installed: None, kubectl: Kubectl) -> None:
    kubectl.apply(restore("once"))
    assert RESTORE_IMMUTABLE in refused(kubectl, restore("once", jobs=2))
    # A one-shot drill too: without a schedule it runs once.
    kubectl.apply(restore("drill-once", drill=True))
    assert RESTORE_IMMUTABLE in refused(kubectl, restore("drill-once", drill=True, timeout="2h"))
    assert RESTORE_IMMUTABLE in refused(kubectl, restore("drill-once", drill=True, schedule="0 4 * * 0"))
    assert kubectl.get("restore", "once")["spec"]["jobs"] == 1
    assert "schedule" not in kubectl.get("restore", "drill-once")["spec"]


def test_scheduled_backup_stays_editable(installed: None, kubectl: Kubectl) -> None:
    kubectl.apply(backup("nightly", schedule="0 3 * * *"))
    kubectl.apply(backup("nightly", schedule="*/5 * * * *", suspend=True, retention={"keepLast": 3}))
    obj = kubectl.get("backup", "nightly")
    assert obj["spec"]["schedule"] == "*/5 * * * *"
    assert obj["spec"]["suspend"] is True
    assert obj["spec"]["retention"] == {"keepLast": 3}
    assert obj["metadata"]["generation"] == 2


def test_scheduled_drill_stays_editable(installed: None, kubectl: Kubectl) -> None:
    kubectl.apply(restore("weekly", drill=True, schedule="0 4 * * 0"))
    kubectl.apply(restore("weekly", drill=True, schedule="0 5 * * 0", historyLimit=3))
    spec = kubectl.get("restore", "weekly")["spec"]
    assert (spec["schedule"], spec["historyLimit"]) == ("0 5 * * 0", 3)


def test_a_one_shot_backup_cannot_become_a_schedule(installed: None, kubectl: Kubectl) -> None:
    kubectl.apply(backup("once"))
    assert BACKUP_IMMUTABLE in refused(kubectl, backup("once", schedule="@daily"))
    assert "schedule" not in kubectl.get("backup", "once")["spec"]


def test_a_schedule_cannot_become_a_one_shot_backup(installed: None, kubectl: Kubectl) -> None:
    kubectl.apply(backup("nightly", schedule="@daily"))
    patch = kubectl.run(
        "patch",
        "backup",
        "nightly",
        "--type=json",
        "-p",
        '[{"op":"remove","path":"/spec/schedule"}]',
        check=False,
    )
    assert patch.returncode != 0
    assert (
        "schedule cannot be removed from a scheduled Backup; create a one-shot Backup instead" in patch.stderr
    )
    assert BACKUP_IMMUTABLE not in patch.stderr
    assert kubectl.get("backup", "nightly")["spec"]["schedule"] == "@daily"
