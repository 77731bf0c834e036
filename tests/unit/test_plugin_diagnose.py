"""diagnose's pure parts: Secret references from the API models, the keys check, CRD versions, the
operator's Deployment, alerts, Object Lock against the bucket, and certificate expiry."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from habitat_operator.plugin.checks import Result
from habitat_operator.plugin.diagnosis import firing, secret_checks
from habitat_operator.plugin.operator_health import (
    deployment_check,
    deployment_version,
    evaluate_crds,
    running_version,
)
from habitat_operator.plugin.probes import certificate, object_lock
from habitat_operator.plugin.references import Purpose, references
from tests.unit.helpers import backup_spec, self_signed_certificate

NOW = dt.datetime.now(dt.UTC)


def item(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"kind": kind, "metadata": {"name": name, "namespace": "shop"}, "spec": spec}


def test_references_come_from_the_models_with_their_defaults() -> None:
    s3 = {"bucket": "offsite", "credentialsSecretRef": {"name": "s3"}, "caSecretRef": {"name": "ca"}}
    found = references([item("Backup", "nightly", backup_spec(storage={"s3": s3}))])
    uses = {(use.secret, use.keys, use.purpose, use.path) for use in found.secrets}
    assert uses == {
        ("habitat-db", ("uri",), Purpose.POSTGRES, "spec.database.secretRef"),
        ("s3", ("accessKeyId", "secretAccessKey"), Purpose.S3, "spec.storage.s3.credentialsSecretRef"),
        ("ca", ("ca.crt",), Purpose.CA, "spec.storage.s3.caSecretRef"),
    }
    assert [storage.path for storage in found.storages] == ["spec.storage.s3"]


def test_a_spec_the_models_refuse_is_reported_not_raised() -> None:
    found = references([item("Backup", "odd", {"database": {}})])
    assert found.secrets == []
    [(namespace, resource, why)] = found.unreadable
    assert (namespace, resource) == ("shop", "backup/odd") and why.startswith("spec.database.secretRef")


def test_missing_secrets_and_keys_fail_and_never_show_values() -> None:
    found = references(
        [
            item("Backup", "a", backup_spec()),
            item("Backup", "b", backup_spec(database={"secretRef": {"name": "other", "key": "dsn"}})),
            item("Backup", "c", backup_spec(database={"secretRef": {"name": "gone"}})),
        ]
    )
    data = {
        ("shop", "habitat-db"): {"uri": b"postgresql://u:hunter2@db/app"},
        ("shop", "other"): {"uri": b"x"},
    }
    checks = {check.target: check for check in secret_checks(found.secrets, data)}
    assert checks["secret shop/habitat-db"].result is Result.PASS
    assert checks["secret shop/other"].result is Result.FAIL
    assert "has no key 'dsn'" in checks["secret shop/other"].message
    assert checks["secret shop/gone"].result is Result.FAIL
    assert "--from-literal=uri=" in checks["secret shop/gone"].hint
    assert not any("hunter2" in str(check) for check in checks.values())


def deployment(ready: int, replicas: int = 1, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": "habitat-operator", "namespace": "habitat-system", "labels": labels or {}},
        "spec": {
            "replicas": replicas,
            "template": {"spec": {"containers": [{"image": "ghcr.io/habitat/habitat-operator:0.3.1"}]}},
        },
        "status": {"readyReplicas": ready},
    }


@pytest.mark.parametrize(
    ("ready", "replicas", "result"),
    [(1, 1, Result.PASS), (1, 2, Result.WARN), (0, 1, Result.FAIL), (0, 0, Result.FAIL)],
)
def test_the_operator_deployment_is_ready(ready: int, replicas: int, result: Result) -> None:
    assert deployment_check(deployment(ready, replicas)).result is result


def test_the_operator_version_from_its_label_its_image_or_its_metrics() -> None:
    assert deployment_version(deployment(1, labels={"app.kubernetes.io/version": "0.4.0"})) == "0.4.0"
    assert deployment_version(deployment(1)) == "0.3.1"
    metrics = 'habitat_operator_build_info{python="3.11.7",version="0.2.0"} 1.0\n'
    assert running_version(metrics) == "0.2.0"
    assert running_version("not metrics {") is None


def crd(name: str, version: str | None) -> dict[str, Any]:
    labels = {"app.kubernetes.io/version": version} if version else {}
    return {"metadata": {"name": name, "labels": labels}}


def test_crds_must_all_be_installed_and_of_the_operators_version() -> None:
    names = ["backups.ops.habitat.dev", "restores.ops.habitat.dev"]
    same = evaluate_crds(names, [crd(n, "0.1.0") for n in names], "0.1.0")
    assert [c.result for c in same if c.target == "crds"] == [Result.PASS]
    older = evaluate_crds(names, [crd(names[0], "0.1.0"), crd(names[1], "0.0.9")], "0.1.0")
    assert older[0].result is Result.FAIL and "0.0.9, 0.1.0" in older[0].message
    missing = evaluate_crds(names, [crd(names[0], "0.1.0")], "0.1.0")
    assert missing[0].result is Result.FAIL and missing[0].target == "restores.ops.habitat.dev"
    unlabelled = evaluate_crds(names, [crd(n, None) for n in names], "0.1.0")
    assert unlabelled[0].result is Result.WARN


def test_firing_alerts_of_the_namespace_critical_ones_fail() -> None:
    alerts = [
        {
            "state": "firing",
            "labels": {"alertname": "HabitatBackupFailed", "namespace": "shop", "severity": "critical"},
        },
        {
            "state": "firing",
            "labels": {"alertname": "HabitatWalArchiveLagging", "namespace": "shop", "severity": "warning"},
        },
        {
            "state": "firing",
            "labels": {"alertname": "HabitatBackupFailed", "namespace": "other", "severity": "critical"},
        },
        {"state": "pending", "labels": {"alertname": "HabitatOperatorDown", "severity": "critical"}},
        {"state": "firing", "labels": {"alertname": "KubePodCrashLooping", "namespace": "shop"}},
    ]
    checks = firing(alerts, "shop", "prometheus")
    assert [(c.result, c.hint) for c in checks] == [
        (Result.FAIL, "docs/runbooks/HabitatBackupFailed.md"),
        (Result.WARN, "docs/runbooks/HabitatWalArchiveLagging.md"),
    ]
    assert [c.result for c in firing([], "shop", "prometheus")] == [Result.PASS]


def lock_configuration(mode: str | None = None, days: int = 0) -> dict[str, Any]:
    configuration: dict[str, Any] = {"ObjectLockEnabled": "Enabled"}
    if mode:
        configuration["Rule"] = {"DefaultRetention": {"Mode": mode, "Days": days}}
    return configuration


@pytest.mark.parametrize(
    ("wanted", "configuration", "result"),
    [
        ({"mode": "COMPLIANCE", "retainFor": "30d"}, {}, Result.FAIL),
        ({"mode": "COMPLIANCE", "retainFor": "30d"}, lock_configuration(), Result.PASS),
        ({"mode": "COMPLIANCE", "retainFor": "30d"}, lock_configuration("COMPLIANCE", 7), Result.PASS),
        ({"mode": "COMPLIANCE", "retainFor": "30d"}, lock_configuration("GOVERNANCE", 7), Result.WARN),
        ({"mode": "GOVERNANCE", "retainFor": "7d"}, lock_configuration("GOVERNANCE", 30), Result.WARN),
        ({"mode": "GOVERNANCE", "retainFor": "retention"}, lock_configuration("GOVERNANCE", 30), Result.PASS),
    ],
)
def test_object_lock_agrees_with_the_bucket(
    wanted: dict[str, str], configuration: dict[str, Any], result: Result
) -> None:
    assert object_lock("s3://b", wanted, configuration).result is result


@pytest.mark.parametrize(
    ("days", "result"), [(90, Result.PASS), (20, Result.WARN), (3, Result.FAIL), (-1, Result.FAIL)]
)
def test_certificate_days_to_expiry(days: int, result: Result) -> None:
    pem, _ = self_signed_certificate(days)
    check = certificate("secret shop/tls", pem, NOW)
    assert check.result is result
    assert "CN=habitat.example" in check.message


def test_a_tls_secret_without_a_certificate_fails() -> None:
    assert certificate("secret shop/tls", b"", NOW).result is Result.FAIL
