"""Fixtures for the real local stack: a kube-apiserver, PostgreSQL, RabbitMQ, Prometheus and an S3 server.

A running stack (its `.stack/env`) is reused; otherwise one is started for the session and stopped
after it. `HABITAT_TEST_KUBECONFIG` points the Kubernetes side at any other cluster instead.
Every test gets its own namespace, database or queue, so tests never see each other's data.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

import dev_stack.stack
from tests.harness import Kubectl, Stack


def _stack_is_up(values: dict[str, str]) -> bool:
    return bool(values) and dev_stack.stack.status_quiet()


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    values = dev_stack.stack.read_env()
    started = False
    if not _stack_is_up(values):
        dev_stack.stack.up()
        values = dev_stack.stack.read_env()
        started = True
    kubeconfig = os.environ.get("HABITAT_TEST_KUBECONFIG", values["KUBECONFIG"])
    try:
        yield Stack(
            kubeconfig=kubeconfig,
            kubectl_path=values["HABITAT_KUBECTL"],
            pg_uri=values["HABITAT_PG_URI"],
            amqp_uri=values["HABITAT_AMQP_URI"],
            rabbitmq_api=values["HABITAT_RABBITMQ_API"],
            prometheus_url=values["HABITAT_PROMETHEUS_URL"],
            s3_endpoint=values["HABITAT_S3_ENDPOINT"],
            s3_access_key=values["HABITAT_S3_ACCESS_KEY"],
            s3_secret_key=values["HABITAT_S3_SECRET_KEY"],
            s3_bucket=values["HABITAT_S3_BUCKET"],
        )
    finally:
        if started:
            dev_stack.stack.down()


# ---------------------------------------------------------------- PostgreSQL


@pytest.fixture(scope="session")
def pg_admin_uri(stack: Stack) -> str:
    """Superuser URI to the `postgres` database."""
    return stack.pg_uri


def database_uri(admin_uri: str, name: str) -> str:
    return admin_uri.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture
def fresh_database(pg_admin_uri: str) -> Iterator[str]:
    """URI of a new, empty database, dropped after the test."""
    name = f"t_{secrets.token_hex(6)}"
    with psycopg.connect(pg_admin_uri, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield database_uri(pg_admin_uri, name)
    with psycopg.connect(pg_admin_uri, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


# ---------------------------------------------------------------- RabbitMQ


@pytest.fixture
def amqp_uri(stack: Stack) -> str:
    return stack.amqp_uri


@pytest.fixture
def fresh_queue(amqp_uri: str) -> Iterator[str]:
    """Name of a new durable queue, deleted after the test."""
    import pika

    name = f"t-{secrets.token_hex(6)}"
    connection = pika.BlockingConnection(pika.URLParameters(amqp_uri))
    connection.channel().queue_declare(name, durable=True)
    yield name
    connection.channel().queue_delete(name)
    connection.close()


# ---------------------------------------------------------------- Kubernetes


@pytest.fixture
def namespace(stack: Stack) -> Iterator[str]:
    """A fresh namespace, deleted after the test (without waiting for its finalization)."""
    name = f"t-{secrets.token_hex(5)}"
    base = Kubectl(stack, "default")
    base.run("create", "namespace", name)
    yield name
    base.run("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def kubectl(stack: Stack, namespace: str) -> Kubectl:
    return Kubectl(stack, namespace)
