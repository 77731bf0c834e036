"""`kubectl habitat status` and `diagnose` as users run them: `kubectl habitat ...` found through PATH
(the venv's bin beside the stack's kubectl), against the stack's apiserver, PostgreSQL, RabbitMQ, S3
and Prometheus. Each broken case is made for real: a Secret without its key, a broker port nothing
listens on, a wrong password, a certificate expiring in three days, a Stalled Backup.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from dev_stack.common import free_port
from habitat_operator import __version__
from habitat_operator.plugin.completion import resource_names
from tests.e2e import prometheus
from tests.e2e.conftest import OperatorProcess
from tests.e2e.helpers import (
    NEVER_IN_THIS_TEST,
    backup,
    create_s3_secret,
    deployment,
    policy,
    queue_trigger,
    s3_storage,
    wait_for,
    wait_phase,
)
from tests.harness import Kubectl, Stack
from tests.unit.helpers import self_signed_certificate

pytestmark = pytest.mark.e2e

Habitat = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def plugin_env(stack: Stack) -> dict[str, str]:
    """The stack's environment with the venv's bin on PATH, where kubectl finds kubectl-habitat."""
    return {**stack.env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{stack.env['PATH']}"}


@pytest.fixture
def habitat(stack: Stack, namespace: str, plugin_env: dict[str, str]) -> Habitat:
    """`kubectl habitat ARGS -n <the test's namespace>`, run by the stack's kubectl from PATH."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [stack.kubectl_path, "habitat", *args, "-n", namespace]
        return subprocess.run(argv, env=plugin_env, capture_output=True, text=True, timeout=120, check=False)

    return run


def checks_of(result: subprocess.CompletedProcess[str]) -> list[dict[str, str]]:
    assert result.stdout, result.stderr
    return list(json.loads(result.stdout))


def tls_secret(kubectl: Kubectl, name: str, days: int, tmp_path: Path) -> None:
    """A kubernetes.io/tls Secret whose self-signed certificate expires in `days`."""
    cert, key = self_signed_certificate(days)
    cert_file, key_file = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    cert_file.write_bytes(cert)
    key_file.write_bytes(key)
    kubectl.run("create", "secret", "tls", name, f"--cert={cert_file}", f"--key={key_file}")


def secret(kubectl: Kubectl, name: str, **values: str) -> None:
    kubectl.run("create", "secret", "generic", name, *(f"--from-literal={k}={v}" for k, v in values.items()))


def suspended(name: str, **spec: Any) -> dict[str, Any]:
    """A schedule that never runs: diagnose reads its spec; the operator leaves it alone."""
    return backup(name, schedule=NEVER_IN_THIS_TEST, suspend=True, **spec)


def test_the_plugin_is_found_by_kubectl_every_command_has_help_and_kubectl_errors_exit_2(
    habitat: Habitat,
) -> None:
    from habitat_operator.plugin.cli import parser

    [commands] = [a for a in parser()._actions if isinstance(a, argparse._SubParsersAction)]
    for command in [None, *commands.choices]:
        result = habitat(*([command] if command else []), "--help")
        assert result.returncode == 0, result.stderr
        assert "usage: kubectl habitat" in result.stdout
    unreachable = habitat("status", "--context", "no-such-context")
    assert unreachable.returncode == 2  # could not check
    assert unreachable.stderr.startswith("kubectl habitat: ") and "no-such-context" in unreachable.stderr


def test_kubectl_completes_the_plugins_commands_flags_and_resource_names(
    stack: Stack,
    namespace: str,
    kubectl: Kubectl,
    plugin_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def complete(*words: str) -> list[str]:
        """What `kubectl habitat WORDS<TAB>` offers: kubectl runs kubectl_complete-habitat."""
        argv = [stack.kubectl_path, "__complete", "habitat", *words]
        result = subprocess.run(argv, env=plugin_env, capture_output=True, text=True, timeout=60, check=False)
        assert result.returncode == 0, result.stderr
        return result.stdout.splitlines()

    assert complete("diag") == ["diagnose", ":4"]
    assert namespace in complete("status", "-n", namespace[:4])
    kubectl.apply(backup("nightly", schedule=NEVER_IN_THIS_TEST, suspend=True))
    monkeypatch.setenv("PATH", plugin_env["PATH"])  # the completer runs kubectl from PATH
    names = resource_names("backups", qualified=True)
    assert names("", argparse.Namespace(namespace=namespace, context=None, kubeconfig=stack.kubeconfig)) == [
        "backup/nightly"
    ]


def test_status_shows_the_newest_verified_backup_then_a_stalled_one_first_with_exit_1(
    habitat: Habitat, kubectl: Kubectl, source_backup: dict[str, Any], operator_alive: OperatorProcess
) -> None:
    healthy = habitat("status", "-o", "json")
    assert healthy.returncode == 0, healthy.stderr
    sections = json.loads(healthy.stdout)
    assert sections["problems"] == []
    [database] = sections["databases"]
    assert database["newestVerifiedBackup"] == "source"
    assert database["backupAge"].endswith("s")

    secret(kubectl, "not-a-uri", uri="mysql://nowhere")
    kubectl.apply(backup("broken", database={"secretRef": {"name": "not-a-uri"}}))
    wait_for(
        "backup/broken to stall",
        lambda: any(
            c["type"] == "Stalled" and c["status"] == "True"
            for c in kubectl.get("backup", "broken").get("status", {}).get("conditions", [])
        ),
        operator=operator_alive,
    )
    failing = habitat("status")
    assert failing.returncode == 1, failing.stderr
    lines = failing.stdout.splitlines()
    assert lines[0] == "PROBLEMS"
    assert "backup/broken" in lines[2] and "InvalidConnectionUri" in lines[2]
    assert "postgresql://" in lines[2]  # the message: the URI must be a postgresql:// one
    assert "DATABASES" in lines and any("source" in line for line in lines)


def test_diagnose_passes_on_a_healthy_namespace(
    habitat: Habitat,
    kubectl: Kubectl,
    stack: Stack,
    db_secret: str,
    fresh_queue: str,
    operator_alive: OperatorProcess,
    tmp_path: Path,
) -> None:
    create_s3_secret(kubectl, stack)
    kubectl.apply(suspended("nightly", storage=s3_storage(stack, "plugin-view")))
    secret(kubectl, "rabbitmq", uri=stack.rabbitmq_api)
    secret(kubectl, "rabbitmq-amqp", uri=stack.amqp_uri)
    kubectl.apply(deployment("workers"))
    triggers = [
        queue_trigger("depth", fresh_queue),
        queue_trigger("ready", fresh_queue, source="amqp", secretRef={"name": "rabbitmq-amqp"}),
    ]
    kubectl.apply(policy("workers", "workers", triggers))
    tls_secret(kubectl, "ingress-tls", 90, tmp_path)

    result = habitat(
        "diagnose",
        "-o",
        "json",
        f"--operator-url=http://127.0.0.1:{operator_alive.metrics_port}",
        f"--prometheus-url={stack.prometheus_url}",
    )
    checks = checks_of(result)
    assert result.returncode == 0, checks
    assert [c for c in checks if c["result"] != "PASS"] == []
    families = {c["check"] for c in checks}
    assert families >= {
        "operator",
        "version",
        "secret",
        "database",
        "broker",
        "queue",
        "storage",
        "tls",
        "alerts",
    }
    assert not any(stack.s3_secret_key in c["message"] + c["target"] for c in checks)


def test_diagnose_fails_each_broken_check_with_exit_1(
    habitat: Habitat, kubectl: Kubectl, stack: Stack, pg_admin_uri: str, tmp_path: Path
) -> None:
    wrong_password = pg_admin_uri.replace("postgres:", "postgres:Xq9-nope-", 1)
    secret(kubectl, "habitat-db", url=pg_admin_uri)  # the key is `url`, the Backup reads `uri`
    secret(kubectl, "wrong-db", uri=wrong_password)
    secret(kubectl, "rabbitmq", uri=f"amqp://guest:guest@127.0.0.1:{free_port()}/%2F")  # nothing listens
    create_s3_secret(kubectl, stack, secret_key="not-the-key")
    kubectl.apply(suspended("missing-key"))
    kubectl.apply(suspended("wrong-password", database={"secretRef": {"name": "wrong-db"}}))
    kubectl.apply(suspended("offsite", storage=s3_storage(stack, "plugin-view")))
    kubectl.apply(deployment("workers"))
    kubectl.apply(policy("workers", "workers", [queue_trigger("ready", "jobs", source="amqp")]))
    tls_secret(kubectl, "expiring-tls", 3, tmp_path)
    operator = deployment("habitat-operator")
    operator["metadata"]["labels"] = {"app.kubernetes.io/name": "habitat-operator"}
    kubectl.apply(operator)  # no kubelet here: its Pod never becomes ready

    result = habitat("diagnose", "-o", "json")
    checks = checks_of(result)
    assert result.returncode == 1, result.stderr
    failed = {(c["check"], c["target"]): c for c in checks if c["result"] == "FAIL"}
    namespace = kubectl.namespace
    assert "has no key 'uri'" in failed[("secret", f"secret {namespace}/habitat-db")]["message"]
    [database] = [c for (check, _), c in failed.items() if check == "database"]
    assert "password authentication failed" in database["message"]
    assert "Xq9-nope-" not in json.dumps(checks)  # the password appears nowhere
    [broker] = [c for (check, _), c in failed.items() if check == "broker"]
    assert "from this machine" in broker["message"]
    [storage] = [c for (check, _), c in failed.items() if check == "storage"]
    assert "refused the credentials" in storage["message"]
    assert "expires in under a week" in failed[("tls", f"secret {namespace}/expiring-tls")]["message"]
    assert "0/1 replicas ready" in failed[("operator", f"deployment {namespace}/habitat-operator")]["message"]
    for check in failed.values():
        assert check["hint"], check


def host_address() -> str | None:
    """An address of this machine the apiserver may proxy to (it refuses loopback ones)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(
                ("10.255.255.255", 1)
            )  # UDP: no packet is sent, this only picks the outgoing address
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    return None if address.startswith("127.") else address


def test_diagnose_reads_readyz_and_the_version_through_the_apiservers_service_proxy(
    habitat: Habitat, kubectl: Kubectl, namespace: str, operator_alive: OperatorProcess
) -> None:
    address = host_address()
    if address is None:
        pytest.skip("no address but loopback: the apiserver proxies to none of those")
    labels = {"app.kubernetes.io/name": "habitat-operator"}
    kubectl.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "habitat-operator-metrics", "labels": labels},
            "spec": {"ports": [{"name": "metrics", "port": 8080, "targetPort": operator_alive.metrics_port}]},
        }
    )
    # The apiserver proxies only to an endpoint backed by a Pod with that IP: without a kubelet, the
    # Pod's status is written by hand, and the operator process serves the address.
    kubectl.apply(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "habitat-operator-0", "labels": labels},
            "spec": {"containers": [{"name": "operator", "image": "registry.invalid/habitat-operator:1"}]},
        }
    )
    ip = {"podIP": address, "podIPs": [{"ip": address}]}
    kubectl.run(
        "patch",
        "pod",
        "habitat-operator-0",
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": ip}),
    )
    pod = {"kind": "Pod", "name": "habitat-operator-0", "namespace": namespace}
    kubectl.apply(
        {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": {"name": "habitat-operator-metrics"},
            "subsets": [
                {
                    "addresses": [{"ip": address, "targetRef": pod}],
                    "ports": [{"name": "metrics", "port": operator_alive.metrics_port}],
                }
            ],
        }
    )
    operator = deployment("habitat-operator")
    operator["metadata"]["labels"] = labels
    kubectl.apply(operator)

    checks = {(c["check"], c["target"]): c for c in checks_of(habitat("diagnose", "-o", "json"))}
    readyz = checks[("operator", f"service {namespace}/habitat-operator-metrics /readyz")]
    assert readyz["result"] == "PASS", readyz
    assert checks[("version", "crds")]["message"] == f"CRDs and operator are {__version__}"
    assert checks[("operator", f"deployment {namespace}/habitat-operator")]["result"] == "FAIL"  # no kubelet


def test_diagnose_lists_the_habitat_alerts_firing_in_the_namespace(
    habitat: Habitat, kubectl: Kubectl, stack: Stack, pg_admin_uri: str, operator_alive: OperatorProcess
) -> None:
    secret(kubectl, "habitat-db", uri=pg_admin_uri.replace("postgres:", "postgres:not-", 1))
    with prometheus.scraping(stack, operator_alive):
        kubectl.apply(backup("doomed", retry={"limit": 0}))
        wait_phase(kubectl, "backup", "doomed", {"Failed"}, operator_alive)
        wait_for(
            "HabitatBackupFailed to fire",
            lambda: any(
                alert["labels"].get("namespace") == kubectl.namespace and alert["state"] == "firing"
                for alert in prometheus.get(stack, "/api/v1/alerts")["alerts"]
            ),
            timeout=60,
        )
        result = habitat("diagnose", "-o", "json", f"--prometheus-url={stack.prometheus_url}")
    # Cluster-wide alerts (no namespace label) are listed too: in the full suite one may be firing.
    alerts = [c for c in checks_of(result) if c["check"] == "alerts"]
    [alert] = [c for c in alerts if c["hint"] == "docs/runbooks/HabitatBackupFailed.md"]
    assert alert["result"] == "WARN"  # a warning
    assert kubectl.namespace in alert["message"]
