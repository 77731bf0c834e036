"""The local stack is real: a kube-apiserver that validates, prunes and authorizes, PostgreSQL, RabbitMQ."""

from __future__ import annotations

import base64
import json
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import psycopg
import pytest
import yaml

from tests.harness import Kubectl, Stack

pytestmark = pytest.mark.integration

GROUP = "stacktest.habitat.dev"
CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"widgets.{GROUP}"},
    "spec": {
        "group": GROUP,
        "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
        "scope": "Namespaced",
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {"size": {"type": "integer", "minimum": 1, "maximum": 10}},
                            },
                            "status": {"type": "object", "properties": {"phase": {"type": "string"}}},
                        },
                    }
                },
            }
        ],
    },
}


def widget(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": f"{GROUP}/v1", "kind": "Widget", "metadata": {"name": name}, "spec": spec}


@pytest.fixture(scope="module")
def widget_crd(stack: Stack) -> Iterator[None]:
    admin = Kubectl(stack, "default")
    admin.apply(CRD)
    admin.run("wait", "--for=condition=Established", f"crd/widgets.{GROUP}", "--timeout=60s")
    yield
    admin.run("delete", "crd", f"widgets.{GROUP}", "--wait=false", check=False)


def test_apiserver_reports_its_release(stack: Stack) -> None:
    admin = Kubectl(stack, "default")
    version = json.loads(admin.run("version", "-o", "json").stdout)["serverVersion"]
    assert version["gitVersion"].startswith("v1.36.")


def test_custom_resource_round_trip(widget_crd: None, kubectl: Kubectl) -> None:
    kubectl.apply(widget("w1", size=3))
    assert kubectl.get("widget", "w1")["spec"] == {"size": 3}


def test_status_subresource_separates_spec_and_status(widget_crd: None, kubectl: Kubectl) -> None:
    kubectl.apply(widget("w2", size=3))
    kubectl.run(
        "patch", "widget", "w2", "--subresource=status", "--type=merge", "-p", '{"status":{"phase":"Ready"}}'
    )
    assert kubectl.get("widget", "w2")["status"] == {"phase": "Ready"}
    # A write to the main resource ignores status.
    kubectl.run(
        "patch", "widget", "w2", "--type=merge", "-p", '{"spec":{"size":4},"status":{"phase":"Hacked"}}'
    )
    obj = kubectl.get("widget", "w2")
    assert obj["spec"] == {"size": 4}
    assert obj["status"] == {"phase": "Ready"}


def test_unknown_fields_are_pruned(widget_crd: None, kubectl: Kubectl) -> None:
    manifest = widget("w3", size=2)
    manifest["spec"]["colour"] = "blue"
    kubectl.run("apply", "--validate=false", "-f", "-", stdin=json.dumps(manifest))
    assert kubectl.get("widget", "w3")["spec"] == {"size": 2}


def test_schema_violation_is_rejected_by_the_apiserver(widget_crd: None, kubectl: Kubectl) -> None:
    result = kubectl.apply(widget("w4", size=99), check=False)
    assert result.returncode != 0
    assert "spec.size" in result.stderr
    assert "should be less than or equal to 10" in result.stderr


def _get_with_token(stack: Stack, token: str, path: str) -> int:
    config = yaml.safe_load(Path(stack.kubeconfig).read_text())
    cluster = config["clusters"][0]["cluster"]
    ctx = ssl.create_default_context()
    ctx.load_verify_locations(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
    request = urllib.request.Request(cluster["server"] + path, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, context=ctx, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def test_rbac_is_enforced_for_service_account_tokens(stack: Stack, kubectl: Kubectl, namespace: str) -> None:
    kubectl.run("create", "serviceaccount", "reader")
    token = kubectl.run("create", "token", "reader", "--duration=10m").stdout.strip()
    path = f"/api/v1/namespaces/{namespace}/configmaps"
    assert _get_with_token(stack, token, path) == 403

    kubectl.run("create", "role", "read-configmaps", "--verb=list", "--resource=configmaps")
    kubectl.run(
        "create", "rolebinding", "reader", "--role=read-configmaps", f"--serviceaccount={namespace}:reader"
    )
    deadline = time.monotonic() + 10  # the authorizer's cache catches up within moments
    while _get_with_token(stack, token, path) != 200:
        assert time.monotonic() < deadline, "RoleBinding did not take effect"
        time.sleep(0.2)


def test_postgres_create_write_read(fresh_database: str) -> None:
    with psycopg.connect(fresh_database) as conn:
        conn.execute("CREATE TABLE habitats (id serial PRIMARY KEY, name text NOT NULL)")
        conn.execute("INSERT INTO habitats (name) VALUES ('reef'), ('tundra')")
        conn.commit()
    with psycopg.connect(fresh_database) as conn:
        rows = conn.execute("SELECT name FROM habitats ORDER BY id").fetchall()
    assert rows == [("reef",), ("tundra",)]


def test_rabbitmq_publish_with_confirms_and_consume(amqp_uri: str, fresh_queue: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_uri))
    channel = connection.channel()
    channel.confirm_delivery()
    for i in range(3):
        channel.basic_publish(
            "", fresh_queue, f"event-{i}".encode(), pika.BasicProperties(delivery_mode=2), mandatory=True
        )
    received = []
    for _ in range(3):
        method, _props, body = channel.basic_get(fresh_queue, auto_ack=True)
        assert method is not None
        received.append(body.decode())
    connection.close()
    assert received == ["event-0", "event-1", "event-2"]


def test_rabbitmq_management_api_reports_queue_depth(stack: Stack, fresh_queue: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(stack.amqp_uri))
    connection.channel().basic_publish("", fresh_queue, b"x")
    connection.close()
    api = urllib.parse.urlsplit(stack.rabbitmq_api)
    request = urllib.request.Request(f"http://{api.hostname}:{api.port}{api.path}/queues/%2F/{fresh_queue}")
    credentials = f"{api.username}:{api.password}".encode()
    request.add_header("Authorization", "Basic " + base64.b64encode(credentials).decode())
    deadline = time.monotonic() + 15  # management stats are sampled every few seconds
    while True:
        with urllib.request.urlopen(request, timeout=5) as response:
            if json.loads(response.read()).get("messages") == 1:
                break
        assert time.monotonic() < deadline, "queue depth never reached 1"
        time.sleep(0.5)
