"""RabbitMQ definitions end to end: the operator process and the stack's RabbitMQ (management API).

A private vhost holds the demo's topology (the ledger exchange, its queues and bindings, a policy);
a Backup exports it, the topology is deleted, a Restore imports it, and a published message reaches
the same queues as before. A private management user's password and the users' password hashes
must appear in no status, Event or operator log.
"""

from __future__ import annotations

import base64
import json
import secrets
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pika
import pytest

from tests.e2e.conftest import OperatorProcess
from tests.e2e.helpers import (
    NEVER_IN_THIS_TEST,
    artifact_path,
    backup,
    condition,
    create_s3_secret,
    events,
    finished,
    restore,
    run_by_hand,
    runs_of,
    s3_storage,
    wait_for,
    wait_ready,
)
from tests.harness import Kubectl, Stack

pytestmark = pytest.mark.e2e

EXCHANGE = "habitat.ledger"
BINDINGS = {"habitat.ledger.demo": "period.close.#", "habitat.ledger.audit": "#"}


@dataclass(frozen=True)
class Broker:
    """The stack's broker as one test sees it: a vhost and an administrator of its own."""

    api: str  # http://127.0.0.1:port/api, no credentials
    vhost: str
    user: str
    password: str

    @property
    def management_url(self) -> str:
        parts = urllib.parse.urlsplit(self.api)
        return parts._replace(netloc=f"{self.user}:{self.password}@{parts.netloc}").geturl()

    def amqp(self, stack: Stack) -> pika.BlockingConnection:
        parts = urllib.parse.urlsplit(stack.amqp_uri)
        params = pika.ConnectionParameters(
            host=parts.hostname,
            port=parts.port,
            virtual_host=self.vhost,
            credentials=pika.PlainCredentials(self.user, self.password),
        )
        return pika.BlockingConnection(params)


def call(url: str, method: str = "GET", body: Any = None) -> Any:
    """The management API, as its guest administrator (the stack's own)."""
    parts = urllib.parse.urlsplit(url)
    request = urllib.request.Request(
        parts._replace(netloc=f"{parts.hostname}:{parts.port}").geturl(),
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Content-Type": "application/json"},
    )
    token = base64.b64encode(f"{parts.username}:{parts.password}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read()
    return json.loads(text) if text.strip() else None


@pytest.fixture
def broker(stack: Stack) -> Iterator[Broker]:
    guest_api = stack.rabbitmq_api.rstrip("/")
    parts = urllib.parse.urlsplit(guest_api)
    suffix = secrets.token_hex(4)
    found = Broker(
        api=parts._replace(netloc=f"{parts.hostname}:{parts.port}").geturl(),
        vhost=f"t-defs-{suffix}",
        user=f"t-admin-{suffix}",
        password=f"pw-{secrets.token_hex(12)}",
    )
    quoted = urllib.parse.quote(found.vhost, safe="")
    call(f"{guest_api}/vhosts/{quoted}", "PUT", {})
    call(f"{guest_api}/users/{found.user}", "PUT", {"password": found.password, "tags": "administrator"})
    everything = {"configure": ".*", "write": ".*", "read": ".*"}
    call(f"{guest_api}/permissions/{quoted}/{found.user}", "PUT", everything)
    try:
        yield found
    finally:
        call(f"{guest_api}/vhosts/{quoted}", "DELETE")
        call(f"{guest_api}/users/{found.user}", "DELETE")


def declare_topology(connection: pika.BlockingConnection) -> None:
    channel = connection.channel()
    channel.exchange_declare(EXCHANGE, exchange_type="topic", durable=True)
    for queue, key in BINDINGS.items():
        channel.queue_declare(queue, durable=True)
        channel.queue_bind(queue, EXCHANGE, routing_key=key)


def delete_topology(connection: pika.BlockingConnection) -> None:
    channel = connection.channel()
    for queue in BINDINGS:
        channel.queue_delete(queue)  # its bindings go with it
    channel.exchange_delete(EXCHANGE)


def routed(connection: pika.BlockingConnection, routing_key: str) -> dict[str, int]:
    """Publishes one message to the exchange and counts what each queue then holds."""
    channel = connection.channel()
    channel.confirm_delivery()
    channel.basic_publish(EXCHANGE, routing_key, b"{}", mandatory=True)
    return {queue: channel.queue_declare(queue, passive=True).method.message_count for queue in BINDINGS}


def definitions_backup(name: str, **spec: Any) -> dict[str, Any]:
    body = backup(name, **spec)
    del body["spec"]["database"]
    return body


def definitions_restore(name: str, backup_name: str, **spec: Any) -> dict[str, Any]:
    return restore(
        name,
        **{
            "source": {"backupRef": {"name": backup_name}},
            "target": {"rabbitmq": {"managementSecretRef": {"name": "rabbitmq-management"}}},
            **spec,
        },
    )


def changes(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {change["type"]: change for change in obj["status"]["definitions"]["changes"]}


def test_definitions_backed_up_deleted_restored_and_routed(
    operator_alive: OperatorProcess, kubectl: Kubectl, stack: Stack, broker: Broker
) -> None:
    kubectl.run(
        "create", "secret", "generic", "rabbitmq-management", f"--from-literal=uri={broker.management_url}"
    )
    kubectl.run("create", "secret", "generic", "backup-key", f"--from-literal=key={secrets.token_hex(32)}")
    connection = broker.amqp(stack)
    declare_topology(connection)
    quoted = urllib.parse.quote(broker.vhost, safe="")
    call(
        f"{stack.rabbitmq_api.rstrip('/')}/policies/{quoted}/ledger-limit",
        "PUT",
        {"pattern": "^habitat\\.ledger\\.", "definition": {"max-length": 100000}, "apply-to": "queues"},
    )
    before = routed(connection, "period.close.2026-01")
    assert before == {"habitat.ledger.demo": 1, "habitat.ledger.audit": 1}

    rabbitmq = {"managementSecretRef": {"name": "rabbitmq-management"}}
    sealed = {"keySecretRef": {"name": "backup-key"}}
    kubectl.apply(
        definitions_backup("ledger", rabbitmq={**rabbitmq, "vhost": broker.vhost}, encryption=sealed)
    )
    create_s3_secret(kubectl, stack)
    offsite = s3_storage(stack, f"defs-{secrets.token_hex(4)}")
    kubectl.apply(definitions_backup("broker", rabbitmq=rabbitmq, storage=offsite))
    exported = wait_ready(kubectl, "ledger", operator_alive)
    artifact = exported["status"]["artifact"]
    assert artifact["kind"] == "rabbitmqDefinitions" and artifact["encrypted"] is True
    assert len(artifact["sha256"]) == 64 and exported["status"]["verification"] == "Verified"
    assert exported["status"]["broker"].endswith(f"vhost {broker.vhost}")

    # While the topology is there: a dry run shows nothing to create; a real run is refused.
    kubectl.apply(definitions_restore("plan", "ledger", dryRun=True))
    kubectl.apply(definitions_restore("refused", "ledger"))
    kubectl.apply(restore("into-a-database", source={"backupRef": {"name": "ledger"}}))
    # The whole broker's, off site: found again by its key alone, as after a disaster.
    uri = wait_ready(kubectl, "broker", operator_alive)["status"]["artifact"]["uri"]
    key = uri.removeprefix(f"s3://{stack.s3_bucket}/")
    in_bucket = {"storage": {"s3": offsite["s3"], "key": key}}
    kubectl.apply(definitions_restore("broker-plan", "broker", dryRun=True, source=in_bucket))
    planned = finished(kubectl, "plan", operator_alive)
    assert planned["status"]["phase"] == "Succeeded", planned["status"]
    assert changes(planned)["exchanges"]["unchanged"] == 1 and changes(planned)["queues"]["create"] == 0
    refused = finished(kubectl, "refused", operator_alive)
    assert condition(refused, "Stalled")["reason"] == "VhostNotEmpty"
    mismatch = finished(kubectl, "into-a-database", operator_alive)
    assert condition(mismatch, "Stalled")["reason"] == "ArtifactKindMismatch"
    assert "holds RabbitMQ definitions, not a database dump" in mismatch["status"]["message"]
    whole = finished(kubectl, "broker-plan", operator_alive)
    assert whole["status"]["phase"] == "Succeeded", whole["status"]
    assert changes(whole)["users"]["skipped"] >= 2  # no hashes without includeUsers: left as they are
    assert whole["status"]["restoredFrom"]["uri"] == uri

    delete_topology(connection)
    kubectl.apply(definitions_restore("ledger-back", "ledger"))
    restored = finished(kubectl, "ledger-back", operator_alive)
    assert restored["status"]["phase"] == "Succeeded", restored["status"]
    assert restored["status"]["verificationSummary"] == "checksum checked"
    done = changes(restored)
    assert (done["exchanges"]["create"], done["queues"]["create"], done["bindings"]["create"]) == (1, 2, 2)
    assert EXCHANGE in done["exchanges"]["names"]
    assert routed(connection, "period.close.2026-02") == {"habitat.ledger.demo": 1, "habitat.ledger.audit": 1}
    assert routed(connection, "invoice.paid") == {"habitat.ledger.demo": 1, "habitat.ledger.audit": 2}
    policy = call(f"{stack.rabbitmq_api.rstrip('/')}/policies/{quoted}/ledger-limit")
    assert policy["definition"] == {"max-length": 100000}
    connection.close()

    hashes = [user["password_hash"] for user in call(f"{stack.rabbitmq_api.rstrip('/')}/users")]
    statuses = [
        kubectl.get(kind, name)
        for kind, name in (
            ("backup", "ledger"),
            ("backup", "broker"),
            ("restore", "plan"),
            ("restore", "refused"),
            ("restore", "broker-plan"),
            ("restore", "ledger-back"),
        )
    ]
    for text in (json.dumps(statuses), json.dumps(events(kubectl)), operator_alive.log_text()):
        for secret in (broker.password, *hashes):
            assert secret not in text


def test_scheduled_definitions_backups_are_retained_like_any(
    operator_alive: OperatorProcess, kubectl: Kubectl, broker: Broker
) -> None:
    kubectl.run(
        "create", "secret", "generic", "rabbitmq-management", f"--from-literal=uri={broker.management_url}"
    )
    spec = {"rabbitmq": {"managementSecretRef": {"name": "rabbitmq-management"}, "vhost": broker.vhost}}
    kubectl.apply(
        definitions_backup("hourly", schedule=NEVER_IN_THIS_TEST, retention={"keepLast": 1}, **spec)
    )
    parent = kubectl.get("backup", "hourly")
    paths = []
    for run in ("hourly-20200101000000", "hourly-20200102000000"):
        child = run_by_hand(run, parent, **spec)
        del child["spec"]["database"]
        kubectl.apply(child)
        paths.append(artifact_path(wait_ready(kubectl, run, operator_alive)))
    wait_for(
        "the older run to expire",
        lambda: [r["metadata"]["name"] for r in runs_of(kubectl, "hourly")] == ["hourly-20200102000000"],
        timeout=60,
        operator=operator_alive,
    )
    assert (
        not paths[0].exists() and paths[1].exists() and paths[1].name == "hourly-20200102000000.definitions"
    )


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (
            backup("both", rabbitmq={"managementSecretRef": {"name": "m"}}),
            "exactly one of database or rabbitmq",
        ),
        (
            definitions_backup(
                "users", rabbitmq={"managementSecretRef": {"name": "m"}, "vhost": "v", "includeUsers": True}
            ),
            "includeUsers needs the whole broker",
        ),
        (
            definitions_restore("drill", "b", drill=True),
            "target.rabbitmq imports a definitions artifact once",
        ),
        (restore("dry", dryRun=True), "dryRun is supported with target.rabbitmq"),
    ],
)
def test_invalid_definitions_specs_are_rejected_at_apply_time(
    installed: None, kubectl: Kubectl, document: dict[str, Any], message: str
) -> None:
    result = kubectl.apply(document, check=False)
    assert result.returncode != 0 and message in result.stderr
