"""RabbitMQ definitions: stripping hashes, what an import carries and changes (a dry run's plan), the
size bounds against a hostile broker or artifact, and the API's rules for spec.rabbitmq."""

from __future__ import annotations

import io
import json
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from habitat_operator.api.backup import BackupSpec
from habitat_operator.api.rabbitmq_definitions import MAX_CHANGED_NAMES
from habitat_operator.api.restore import RestoreSpec
from habitat_operator.config import OperatorConfig
from habitat_operator.controllers.base.kube import JsonDict
from habitat_operator.engines.rabbitmq.definitions import (
    MAX_DEFINITIONS_BYTES,
    artifact_document,
    decode,
    describe_plan,
    encode,
    has_topology,
    import_body,
    plan,
    redact,
    unwrap,
)
from habitat_operator.engines.rabbitmq.definitions_artifact import (
    MAX_PLAINTEXT_BYTES,
    Sealed,
    check_stored,
    read_plaintext,
    seal,
    write_file,
)
from habitat_operator.engines.rabbitmq.management import ManagementApi
from habitat_operator.errors import OperationError
from tests.unit.bodies import NS, backup_body, reconcile_backup, reconcile_restore, restore_body
from tests.unit.fake_engines import FakeDump, FakeLock, FakePostgres
from tests.unit.fake_kube import FakeKube
from tests.unit.helpers import backup_spec, restore_spec

HASH = "kI6ttHu2WCOMsn2IU2bZ7zAfjWlQ7J2p8OeSPsaVvm3Zvts+"


def export(**extra: Any) -> dict[str, Any]:
    return {
        "rabbit_version": "3.10.8",
        "users": [
            {
                "name": "app",
                "password_hash": HASH,
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": [],
            }
        ],
        "vhosts": [{"name": "/"}],
        "permissions": [{"user": "app", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}],
        "exchanges": [
            {"name": "habitat.ledger", "vhost": "/", "type": "topic", "durable": True, "arguments": {}}
        ],
        "queues": [{"name": "habitat.ledger.demo", "vhost": "/", "durable": True, "arguments": {}}],
        "bindings": [
            {
                "source": "habitat.ledger",
                "vhost": "/",
                "destination": "habitat.ledger.demo",
                "destination_type": "queue",
                "routing_key": "period.close.#",
                "arguments": {},
            }
        ],
        **extra,
    }


def by_type(changes: list[Any]) -> dict[str, Any]:
    return {change.type: change for change in changes}


# ---------------------------------------------------------------- stripping


def test_hashes_are_stripped_unless_asked_for() -> None:
    stripped = artifact_document(export(), None, keep_hashes=False)
    assert HASH not in json.dumps(stripped)
    assert stripped["users"] == [
        {"name": "app", "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": []}
    ]
    assert HASH in json.dumps(artifact_document(export(), None, keep_hashes=True))


def test_the_document_records_its_vhost_and_unwraps_to_the_export() -> None:
    document = artifact_document(export(), "ledger", keep_hashes=False)
    definitions, vhost = unwrap(decode(encode(document), "it"), "it")
    assert vhost == "ledger"
    assert "habitat_export" not in definitions and definitions["queues"] == export()["queues"]


def test_a_document_without_its_record_is_not_definitions() -> None:
    with pytest.raises(OperationError, match="are not RabbitMQ definitions: it has no habitat_export record"):
        unwrap(export(), "the definitions of x")


# ---------------------------------------------------------------- what an import carries and changes


def test_users_without_a_hash_and_their_orphaned_permissions_are_left_out() -> None:
    artifact = artifact_document(export(), None, keep_hashes=False)
    body, skipped = import_body(artifact, {"users": [{"name": "someone-else"}]})
    assert body["users"] == [] and body["permissions"] == []
    assert skipped == {"users": 1, "permissions": 1}


def test_permissions_of_a_user_the_broker_has_are_kept() -> None:
    body, skipped = import_body(artifact_document(export(), None, keep_hashes=False), export())
    assert body["permissions"] == export()["permissions"] and skipped == {"users": 1}


def test_a_hostile_brokers_odd_names_are_compared_as_text() -> None:
    body, skipped = import_body(
        artifact_document(export(), None, keep_hashes=False), {"users": [{"name": ["app"]}]}
    )
    assert body["permissions"] == [] and skipped == {"users": 1, "permissions": 1}


def test_users_with_a_hash_are_imported() -> None:
    body, skipped = import_body(artifact_document(export(), None, keep_hashes=True), {})
    assert [user["name"] for user in body["users"]] == ["app"] and not skipped


def test_the_plan_counts_creations_updates_and_unchanged() -> None:
    current = export()
    del current["bindings"]
    current["queues"] = [{**current["queues"][0], "arguments": {"x-max-length": 10}}]
    changes = by_type(plan(export(), current, {}))
    assert (changes["exchanges"].unchanged, changes["exchanges"].create) == (1, 0)
    assert (changes["queues"].update, changes["queues"].names) == (1, ["/: habitat.ledger.demo"])
    assert changes["bindings"].create == 1
    assert changes["bindings"].names == ["/: habitat.ledger -> queue habitat.ledger.demo (period.close.#)"]
    summary = describe_plan(changes.values())
    assert "exchanges: 1 unchanged" in summary and "bindings: 1 to create" in summary


def test_bindings_differing_in_arguments_are_different_bindings() -> None:
    current = export()
    current["bindings"] = [{**current["bindings"][0], "arguments": {"x-match": "all"}}]
    assert by_type(plan(export(), current, {}))["bindings"].create == 1


def test_the_plan_names_at_most_a_bounded_number_per_type() -> None:
    queues = [{"name": f"q{i}", "vhost": "/"} for i in range(500)]
    change = by_type(plan({"queues": queues}, {}, {}))["queues"]
    assert change.create == 500 and len(change.names) == MAX_CHANGED_NAMES


def test_default_exchanges_do_not_make_a_vhost_occupied() -> None:
    defaults = {"exchanges": [{"name": "amq.topic"}, {"name": ""}], "queues": []}
    assert not has_topology(defaults)
    assert has_topology({**defaults, "exchanges": [{"name": "habitat.ledger"}]})
    assert has_topology({"queues": [{"name": "q"}]})


def test_a_brokers_error_never_shows_a_hash_that_was_sent() -> None:
    text = f"user app: invalid password_hash {HASH}"
    assert HASH not in redact(text, export())


# ---------------------------------------------------------------- bounds


def test_a_document_over_the_bound_is_refused_before_parsing() -> None:
    with pytest.raises(OperationError, match="larger than") as caught:
        decode(b" " * (MAX_DEFINITIONS_BYTES + 1), "the definitions of x")
    assert caught.value.reason == "DefinitionsTooLarge"


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"PGDMP\x01\x0e", "it is not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "it is not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"queues": {}}', "queues are not"),
    ],
)
def test_what_is_not_definitions_says_so(body: bytes, why: str) -> None:
    with pytest.raises(OperationError, match=why):
        decode(body, "the definitions of x")


def test_sealed_documents_read_back_encrypted_and_compressed() -> None:
    key = os.urandom(32)
    plaintext = encode(artifact_document(export(), None, keep_hashes=True))
    sealed = seal(plaintext, key, zstd=True)
    assert HASH.encode() not in sealed.data
    assert read_plaintext(io.BytesIO(sealed.data), key, "it") == (plaintext, sealed.sha256)


def test_a_small_artifact_that_decompresses_past_the_bound_is_refused() -> None:
    sealed = seal(b" " * (MAX_PLAINTEXT_BYTES + 1), None, zstd=True)
    assert len(sealed.data) < 1 << 16
    with pytest.raises(OperationError, match="larger than"):
        read_plaintext(io.BytesIO(sealed.data), None, "the definitions of x")


def test_an_artifact_that_fails_its_check_is_never_put_in_place(tmp_path: Path) -> None:
    sealed = seal(b"{}", None, zstd=False)
    destination = tmp_path / "ns" / "b.definitions"
    tampered = Sealed(sealed.data, "0" * 64)  # as if the disk returned other bytes than were written
    with pytest.raises(OperationError, match="do not match what was written"):
        write_file(destination, sealed, partial(check_stored, tampered, None, "it"))
    assert list(tmp_path.rglob("*.definitions*")) == []
    write_file(destination, sealed, partial(check_stored, sealed, None, "it"))
    assert destination.read_bytes() == sealed.data


class _Broker(BaseHTTPRequestHandler):
    status = 200
    body = b"{}"
    requests = 0
    posted: list[bytes] = []  # noqa: RUF012 - each test's handler class gets a list of its own

    def do_GET(self) -> None:
        type(self).requests += 1
        self._answer()

    def do_POST(self) -> None:
        type(self).posted = [*type(self).posted, self.rfile.read(int(self.headers["Content-Length"]))]
        self._answer()

    def _answer(self) -> None:
        self.send_response(self.status)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def broker() -> Iterator[tuple[type[_Broker], str]]:
    handler = type("Broker", (_Broker,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield handler, f"http://admin:s3cret-pw@127.0.0.1:{server.server_port}/api"
    finally:
        server.shutdown()
        server.server_close()


def test_a_hostile_brokers_oversized_export_is_refused(broker: tuple[type[_Broker], str]) -> None:
    handler, url = broker
    handler.body = b'{"queues": [' + b" " * MAX_DEFINITIONS_BYTES + b"]}"
    with pytest.raises(OperationError, match="larger than") as caught:
        ManagementApi(url).export("ledger")
    assert caught.value.reason == "DefinitionsTooLarge" and "s3cret-pw" not in caught.value.message


def test_a_brokers_answer_nested_too_deep_is_refused(broker: tuple[type[_Broker], str]) -> None:
    handler, url = broker
    handler.body = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(OperationError, match="unreadable: RecursionError"):
        ManagementApi(url).export(None)


def test_a_refused_import_says_why_without_hashes_or_password(broker: tuple[type[_Broker], str]) -> None:
    handler, url = broker
    handler.status = 400
    handler.body = json.dumps({"error": "bad_request", "reason": f"bad hash {HASH}"}).encode()
    with pytest.raises(OperationError) as caught:
        ManagementApi(url).import_definitions(export(), None)
    message = caught.value.message
    assert caught.value.reason == "BrokerRefused" and "HTTP 400: bad hash <redacted>" in message
    assert HASH not in message and "s3cret-pw" not in message and "127.0.0.1" in message


def test_a_malformed_management_url_is_refused_without_showing_it() -> None:
    with pytest.raises(OperationError, match="must be http") as caught:
        ManagementApi("amqp://admin:s3cret-pw@host/")
    assert "s3cret-pw" not in caught.value.message


# ---------------------------------------------------------------- the API's rules


def rabbitmq(**extra: Any) -> dict[str, Any]:
    return {"managementSecretRef": {"name": "rabbitmq-management"}, **extra}


def test_a_backup_of_definitions() -> None:
    spec = BackupSpec.model_validate(
        {"storage": backup_spec()["storage"], "rabbitmq": rabbitmq(vhost="ledger")}
    )
    assert spec.database is None and spec.rabbitmq is not None
    assert spec.rabbitmq.management_secret_ref.key == "uri" and spec.rabbitmq.include_users is False


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"rabbitmq": rabbitmq()}, "spec needs exactly one of database or rabbitmq"),
        (
            {"database": None, "rabbitmq": rabbitmq(vhost="v", includeUsers=True)},
            "includeUsers needs the whole",
        ),
        (
            {"database": None, "rabbitmq": rabbitmq(), "jobs": 2, "format": "directory"},
            "rabbitmq takes no format",
        ),
    ],
)
def test_invalid_definitions_backups(overrides: dict[str, Any], message: str) -> None:
    spec = {k: v for k, v in backup_spec(**overrides).items() if v is not None}
    with pytest.raises(ValidationError, match=message):
        BackupSpec.model_validate(spec)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"drill": True}, "target.rabbitmq imports a definitions artifact once"),
        ({"mode": {"createDatabase": True}}, "target.rabbitmq imports a definitions artifact once"),
        ({"target": {"database": {"secretRef": {"name": "db"}}}, "dryRun": True}, "dryRun is supported with"),
    ],
)
def test_invalid_definitions_restores(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        RestoreSpec.model_validate(restore_spec(**{"target": {"rabbitmq": rabbitmq()}, **overrides}))


def test_a_dry_run_of_definitions() -> None:
    spec = RestoreSpec.model_validate(restore_spec(target={"rabbitmq": rabbitmq()}, dryRun=True))
    assert spec.dry_run and spec.target.rabbitmq is not None and spec.target.database is None


def test_types_without_entries_are_left_out_of_the_plan() -> None:
    changes = plan({"queues": [], "topic_permissions": [], "exchanges": [{"name": "x"}]}, {}, {"users": 2})
    assert [change.type for change in changes] == ["users", "exchanges"]


# ---------------------------------------------------------------- the Backup's run


def definitions_backup(kube: FakeKube, url: str) -> None:
    kube.put_secret(NS, "rabbitmq-management", {"uri": url})
    body = backup_body("definitions", rabbitmq=rabbitmq())
    del body["spec"]["database"]
    kube.add("backups", body)


def test_a_broker_outside_the_allowed_endpoints_is_never_asked(
    fake_kube: FakeKube, dump: FakeDump, config: OperatorConfig, broker: tuple[type[_Broker], str]
) -> None:
    handler, url = broker
    definitions_backup(fake_kube, url)
    allowed = OperatorConfig(backup_root=config.backup_root, allowed_metrics_endpoints=("rabbitmq.internal",))
    reconcile_backup(fake_kube, allowed, dump, "definitions")
    status = fake_kube.status("backups", NS, "definitions")
    assert status["phase"] == "Failed" and handler.requests == 0
    assert status["message"].endswith("is not among the operator's --allowed-metrics-endpoints")
    assert "s3cret-pw" not in json.dumps(status)


def test_an_oversized_export_fails_the_backup_and_stores_nothing(
    fake_kube: FakeKube, dump: FakeDump, config: OperatorConfig, broker: tuple[type[_Broker], str]
) -> None:
    handler, url = broker
    handler.body = b'{"queues": [' + b" " * MAX_DEFINITIONS_BYTES + b"]}"
    definitions_backup(fake_kube, url)
    reconcile_backup(fake_kube, config, dump, "definitions")
    status = fake_kube.status("backups", NS, "definitions")
    assert status["phase"] == "Failed" and "larger than" in status["message"]
    assert not [path for path in config.backup_root.rglob("*") if path.is_file()]


def test_a_backup_of_definitions_stores_them_without_hashes(
    fake_kube: FakeKube, dump: FakeDump, config: OperatorConfig, broker: tuple[type[_Broker], str]
) -> None:
    handler, url = broker
    handler.body = json.dumps(export()).encode()
    definitions_backup(fake_kube, url)
    reconcile_backup(fake_kube, config, dump, "definitions")
    status = fake_kube.status("backups", NS, "definitions")
    assert status["phase"] == "Succeeded", status
    assert status["artifact"]["kind"] == "rabbitmqDefinitions" and status["broker"].startswith("127.0.0.1:")
    stored = config.backup_root.resolve() / "app" / NS / "definitions.definitions"
    assert status["artifact"]["uri"] == stored.as_uri()
    plaintext, sha256 = read_plaintext(stored.open("rb"), None, "it")
    assert sha256 == status["artifact"]["sha256"] and HASH.encode() not in plaintext
    assert unwrap(decode(plaintext, "it"), "it")[0]["queues"] == export()["queues"]


# ---------------------------------------------------------------- the Restore's run


def backed_up(kube: FakeKube, config: OperatorConfig, url: str) -> None:
    """A Backup of one vhost's definitions, Succeeded, its artifact on disk; the Secret of the broker."""
    kube.put_secret(NS, "rabbitmq-management", {"uri": url})
    body = backup_body("definitions", rabbitmq=rabbitmq(vhost="ledger"))
    del body["spec"]["database"]
    kube.add("backups", body)
    sealed = seal(encode(artifact_document(export(), "ledger", keep_hashes=False)), None, zstd=True)
    path = config.backup_root.resolve() / "app" / NS / "definitions.definitions"
    artifact = {"uri": write_file(path, sealed), "sha256": sealed.sha256, "kind": "rabbitmqDefinitions"}
    kube.set_status("backups", NS, "definitions", {"phase": "Succeeded", "artifact": artifact})


@dataclass
class Restoring:
    """A broker with its handler, a Backup of its definitions, and one Restore of them to run."""

    kube: FakeKube
    config: OperatorConfig
    postgres: FakePostgres
    lock: FakeLock
    handler: type[_Broker]

    def apply(self, **spec: Any) -> None:
        target = {"rabbitmq": rabbitmq()}
        self.kube.add(
            "restores", restore_body(source={"backupRef": {"name": "definitions"}}, target=target, **spec)
        )

    def run(self) -> JsonDict:
        reconcile_restore(self.kube, self.config, self.postgres, self.lock, "restore")
        return self.kube.status("restores", NS, "restore")


@pytest.fixture
def restoring(
    fake_kube: FakeKube,
    config: OperatorConfig,
    postgres: FakePostgres,
    lock: FakeLock,
    broker: tuple[type[_Broker], str],
) -> Restoring:
    handler, url = broker
    backed_up(fake_kube, config, url)
    return Restoring(fake_kube, config, postgres, lock, handler)


def test_an_occupied_vhost_is_refused_and_left_as_it_was(restoring: Restoring) -> None:
    restoring.handler.body = json.dumps(export()).encode()  # the vhost has its queue already
    restoring.apply()
    status = restoring.run()
    assert status["phase"] == "Failed" and "set mode.force" in status["message"]
    assert restoring.handler.posted == []


def test_a_run_resumed_mid_import_imports_again_without_refusing(restoring: Restoring) -> None:
    restoring.handler.body = json.dumps(export()).encode()  # what the interrupted attempt imported already
    restoring.apply(retry={"limit": 2, "backoff": "1s"})
    restoring.kube.set_status("restores", NS, "restore", {"phase": "Running", "attempts": 1})
    restoring.run()  # counts the interrupted attempt
    status = restoring.run()
    assert status["phase"] == "Succeeded", status
    (posted,) = restoring.handler.posted
    assert json.loads(posted)["queues"] == export()["queues"] and "habitat_export" not in json.loads(posted)
    assert HASH.encode() not in posted and status["definitions"]["vhost"] == "ledger"


def test_a_dry_run_changes_nothing(restoring: Restoring) -> None:
    restoring.handler.body = b'{"exchanges": [{"name": "amq.topic"}]}'
    restoring.apply(dryRun=True)
    status = restoring.run()
    assert status["phase"] == "Succeeded" and restoring.handler.posted == []
    assert status["verificationSummary"] == "dry run, checksum checked"
    planned = {change["type"]: change for change in status["definitions"]["changes"]}
    assert planned["queues"] == {
        "type": "queues",
        "create": 1,
        "update": 0,
        "unchanged": 0,
        "skipped": 0,
        "names": ["/: habitat.ledger.demo"],
    }
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")["message"]
    assert ready.startswith("dry run into 127.0.0.1:") and "queues: 1 to create" in ready
    assert restoring.kube.reasons("restore")[-1] == "Succeeded"


def test_a_database_dump_is_not_imported_into_a_broker(restoring: Restoring) -> None:
    status = restoring.kube.status("backups", NS, "definitions")
    restoring.kube.set_status(
        "backups", NS, "definitions", {**status, "artifact": {**status["artifact"], "kind": "database"}}
    )
    restoring.apply()
    status = restoring.run()
    assert status["phase"] == "Failed" and status["message"].endswith(
        "is a database dump, not RabbitMQ definitions; restore it into target.database"
    )
    assert restoring.handler.requests == 0 and restoring.handler.posted == []
