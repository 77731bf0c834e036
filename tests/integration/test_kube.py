"""controllers/base/kube.py against the stack's real apiserver: custom objects, status writes based on a
resourceVersion, /scale by server-side apply, Secrets, ConfigMaps and Events, the errors callers act on
(RBAC through a ServiceAccount's token), and a ServiceAccount token that the apiserver stops accepting
replaced by the one the file holds now."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import pytest

from habitat_operator.controllers.base import apiserver, kube
from habitat_operator.handlers.login import find_connection
from tests.harness import REPO, Kubectl, Stack

pytestmark = pytest.mark.integration

SCHEDULE_SPEC = {
    "database": {"secretRef": {"name": "habitat-db"}},
    "storage": {"filesystem": {"path": "kube-test"}},
    "schedule": "0 3 * * *",
    "suspend": True,
}


@pytest.fixture(scope="module")
def crds(stack: Stack) -> None:
    admin = Kubectl(stack, "default")
    admin.run("apply", "--server-side", "-k", str(REPO / "crds"))
    admin.run("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")


@pytest.fixture
def admin(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> apiserver.Connection:
    """The connection the operator's login finds with the stack's admin kubeconfig."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", stack.kubeconfig)
    connection = find_connection(kopf.OperatorSettings())
    assert connection is not None
    return connection


def run(connection: apiserver.Connection, scenario: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        await kube.connect(connection)
        try:
            await scenario()
        finally:
            await kube.close()

    asyncio.run(main())


def backup(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "ops.habitat.dev/v1alpha1",
        "kind": "Backup",
        "metadata": {"name": name, "labels": {"kube-test": name}},
        "spec": SCHEDULE_SPEC,
    }


def test_custom_objects_round_trip(crds: None, admin: apiserver.Connection, namespace: str) -> None:
    async def scenario() -> None:
        created = await kube.create("backups", namespace, backup("b1"))
        assert created["metadata"]["uid"]
        with pytest.raises(kube.AlreadyExists):
            await kube.create("backups", namespace, backup("b1"))
        await kube.create("backups", namespace, backup("b2"))
        found = await kube.get("backups", namespace, "b1")
        assert found is not None and found["spec"]["schedule"] == "0 3 * * *"
        listed = await kube.list_objects("backups", namespace, "kube-test=b2")
        assert [item["metadata"]["name"] for item in listed] == ["b2"]
        await kube.delete("backups", namespace, "b1")
        await kube.delete("backups", namespace, "b1")  # gone already: no error
        # Gone, or going: an operator of the full suite may hold it by its finalizer for a moment.
        left = await kube.get("backups", namespace, "b1")
        assert left is None or left["metadata"].get("deletionTimestamp")
        with pytest.raises(kube.ApiError) as refused:  # the CRD's schema: the apiserver's own words
            await kube.create("backups", namespace, {**backup("b3"), "spec": {"suspend": "often"}})
        assert refused.value.status == 422 and "suspend" in str(refused.value)

    run(admin, scenario)


def test_a_status_write_based_on_an_older_version_is_a_conflict(
    crds: None, admin: apiserver.Connection, namespace: str, kubectl: Kubectl
) -> None:
    """An operator of the full suite may be watching this namespace and write the schedule's own
    status fields (phase, conditions) meanwhile: the test writes `database`, which a schedule's
    status never holds, and bases its first write on the version it has just read."""

    async def write_first() -> tuple[str, str]:
        for _ in range(5):
            current = await kube.get("backups", namespace, "b1")
            assert current is not None
            version = current["metadata"]["resourceVersion"]
            try:
                status = {"database": "db:5432/one"}
                newer = await kube.patch_status("backups", namespace, "b1", status, resource_version=version)
            except kube.Conflict:
                continue  # the operator wrote in between: read again
            assert newer is not None and newer != version
            return version, newer
        raise AssertionError("every write met a newer version")

    async def scenario() -> None:
        await kube.create("backups", namespace, backup("b1"))
        stale, _ = await write_first()
        with pytest.raises(kube.Conflict):
            await kube.patch_status(
                "backups", namespace, "b1", {"database": "db:5432/stale"}, resource_version=stale
            )
        current = await kube.get("backups", namespace, "b1")
        assert current is not None and current["status"]["database"] == "db:5432/one"
        assert await kube.patch_status("backups", namespace, "b1", {"database": None}) is not None

    run(admin, scenario)
    assert "database" not in kubectl.get("backup", "b1").get("status", {})  # merged; null removed a key


def test_secrets_config_maps_scale_and_events(
    admin: apiserver.Connection, kubectl: Kubectl, namespace: str
) -> None:
    kubectl.run("create", "secret", "generic", "db", "--from-literal=uri=postgresql://x")
    kubectl.run("create", "configmap", "settings", "--from-literal=mode=fast")
    kubectl.run("create", "deployment", "app", "--image=busybox", "--replicas=1")
    owner = kubectl.get("secret", "db")  # any object will do as the Event's subject

    async def scenario() -> None:
        assert await kube.read_secret(namespace, "db") == {"uri": b"postgresql://x"}
        assert await kube.read_secret(namespace, "missing") is None
        assert await kube.read_config_map(namespace, "settings") == {"mode": "fast"}
        assert await kube.read_config_map(namespace, "missing") is None
        await kube.apply_replicas("Deployment", namespace, "app", 3)
        scale = await kube.read_scale("Deployment", namespace, "app")
        assert scale is not None and scale["spec"]["replicas"] == 3
        assert await kube.read_scale("StatefulSet", namespace, "app") is None
        await kube.event({**owner, "apiVersion": "v1", "kind": "Secret"}, "Normal", "Checked", "read it")

    run(admin, scenario)
    shown = kubectl.run("get", "deployment", "app", "-o", "json", "--show-managed-fields").stdout
    managers = {entry["manager"] for entry in json.loads(shown)["metadata"]["managedFields"]}
    assert kube.FIELD_MANAGER in managers
    events = json.loads(kubectl.run("get", "events", "-o", "json").stdout)["items"]
    assert [(e["reason"], e["message"]) for e in events if e["involvedObject"]["name"] == "db"] == [
        ("Checked", "read it")
    ]


@pytest.fixture
def service_account(kubectl: Kubectl) -> str:
    """A ServiceAccount that may read Backups and nothing else."""
    kubectl.run("create", "serviceaccount", "limited")
    kubectl.run("create", "role", "limited", "--verb=get,list", "--resource=backups.ops.habitat.dev")
    kubectl.run(
        "create", "rolebinding", "limited", "--role=limited", f"--serviceaccount={kubectl.namespace}:limited"
    )
    return "limited"


def test_what_rbac_does_not_allow_is_forbidden(
    crds: None, admin: apiserver.Connection, kubectl: Kubectl, namespace: str, service_account: str
) -> None:
    kubectl.run("create", "secret", "generic", "db", "--from-literal=uri=postgresql://x")
    kubectl.run("create", "deployment", "app", "--image=busybox", "--replicas=1")
    token = kubectl.run("create", "token", service_account).stdout.strip()
    limited = apiserver.Connection(
        server=admin.server, ssl=admin.ssl, headers={"Authorization": f"Bearer {token}"}
    )

    async def scenario() -> None:
        assert await kube.get("backups", namespace, "missing") is None  # allowed
        with pytest.raises(kube.Forbidden):
            await kube.read_secret(namespace, "db")
        with pytest.raises(kube.Forbidden):
            await kube.read_config_map(namespace, "settings")
        with pytest.raises(kube.Forbidden):
            await kube.read_scale("Deployment", namespace, "app")
        with pytest.raises(kube.Forbidden):
            await kube.apply_replicas("Deployment", namespace, "app", 2)
        with pytest.raises(kube.ApiError) as refused:
            await kube.create("backups", namespace, backup("b1"))
        assert refused.value.status == 403

    run(limited, scenario)


async def answer_to(connection: apiserver.Connection, token: str, path: str) -> int:
    """The HTTP status of a GET of `path` with `token`, outside kube.py."""
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=connection.ssl)) as session,
        session.get(connection.server + path, headers={"Authorization": f"Bearer {token}"}) as response,
    ):
        return response.status


def test_a_token_the_apiserver_no_longer_accepts_is_replaced_by_the_one_in_the_file(
    crds: None,
    admin: apiserver.Connection,
    kubectl: Kubectl,
    namespace: str,
    service_account: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As in a pod whose token the kubelet rotated: the old token is bound to a Secret that is then
    deleted, so the apiserver refuses it (401); the next call goes through with the new one, long
    before the file's periodic read."""
    monkeypatch.setattr(apiserver, "TOKEN_REREAD_SECONDS", 3600.0)
    binding = f"binding-{secrets.token_hex(3)}"
    kubectl.run("create", "secret", "generic", binding)
    old = kubectl.run(
        "create", "token", service_account, "--bound-object-kind=Secret", f"--bound-object-name={binding}"
    ).stdout.strip()
    token_file = tmp_path / "token"
    token_file.write_text(old)
    in_pod = apiserver.Connection(
        server=admin.server, ssl=admin.ssl, token_file=apiserver.TokenFile(token_file)
    )
    backups = f"/apis/ops.habitat.dev/v1alpha1/namespaces/{namespace}/backups"

    async def scenario() -> None:
        assert await kube.get("backups", namespace, "missing") is None
        token_file.write_text(kubectl.run("create", "token", service_account).stdout.strip())
        kubectl.run("delete", "secret", binding)
        async with asyncio.timeout(30):
            while await answer_to(admin, old, backups) != 401:
                await asyncio.sleep(0.2)
        assert await kube.get("backups", namespace, "missing") is None

    run(in_pod, scenario)
