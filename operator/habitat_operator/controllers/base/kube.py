"""The operator's own Kubernetes API calls (Kopf does the watching): status writes, children, Events.

Plain requests by path over one aiohttp session, with the connection the login handler found
(`connect`, handlers/login.py) and within the request slots Kopf's session also uses (apiserver.py).
API errors that callers act on come out as the exceptions below; any other answer of 400 or more as
ApiError.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from typing import Any

import aiohttp

from habitat_operator import timestamps
from habitat_operator.api import GROUP, VERSION
from habitat_operator.controllers.base.apiserver import Connection, open_session

JsonDict = dict[str, Any]

# A call that takes longer than this has lost its connection; the step fails and is retried.
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=60, sock_connect=10)


class Forbidden(Exception):
    """The operator's RBAC does not allow the call (HTTP 403)."""


class AlreadyExists(Exception):
    """An object of that name exists already (HTTP 409 on create)."""


class Conflict(Exception):
    """The object changed since the resourceVersion a write was based on (HTTP 409 on a patch)."""


class ApiError(Exception):
    """Any other refusal: the HTTP status and the apiserver's own message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class _Client:
    """The connection, and the session opened from it in the loop that uses it."""

    connection: Connection | None = None
    session: aiohttp.ClientSession | None = None
    loop: asyncio.AbstractEventLoop | None = None


async def connect(connection: Connection) -> None:
    """Uses `connection` from now on (Kopf's login handler calls it at each login, which happens again
    only after a 401: a call still in flight on the old session fails, and its step is retried)."""
    await close()
    _Client.connection = connection


async def close() -> None:
    """Closes the session (its connections); the next call opens another."""
    session, _Client.session = _Client.session, None
    if session is not None and _Client.loop is asyncio.get_running_loop():
        await session.close()


def _session() -> tuple[aiohttp.ClientSession, str]:
    if _Client.connection is None:
        raise RuntimeError("kube.connect() was not called: Kopf's login handler calls it")
    loop = asyncio.get_running_loop()
    if _Client.session is None or _Client.loop is not loop:
        # One session, so one connection pool: a session per call would open a TLS connection per call.
        _Client.session, _Client.loop = open_session(_Client.connection, REQUEST_TIMEOUT), loop
    return _Client.session, _Client.connection.server


async def _request(
    method: str, path: str, body: JsonDict | None = None, content_type: str = "application/json", **query: str
) -> Any:
    """A request by path, its JSON answer as plain data; ApiError for an answer of 400 or more."""
    session, server = _session()
    headers = {"Accept": "application/json", "Content-Type": content_type, "User-Agent": FIELD_MANAGER}
    data = None if body is None else json.dumps(body)
    async with session.request(method, server + path, params=query, data=data, headers=headers) as response:
        answer = await response.read()
        if response.status >= 400:
            raise ApiError(response.status, _message(answer, response.reason))
        return json.loads(answer)


def _message(answer: bytes, reason: str | None) -> str:
    """The message of the apiserver's Status object, else the HTTP reason."""
    try:
        status = json.loads(answer)
    except ValueError:
        status = None
    message = status.get("message") if isinstance(status, dict) else None
    return str(message or reason or "no message")


def _custom(namespace: str, plural: str, name: str = "") -> str:
    path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{plural}"
    return f"{path}/{name}" if name else path


# The apps/v1 kinds whose /scale subresource the operator reads and writes, by kind.
_SCALE_PLURALS = {"Deployment": "deployments", "StatefulSet": "statefulsets"}
FIELD_MANAGER = "habitat-operator"


async def _read(what: str, path: str) -> Any:
    """A GET: None when the object does not exist, Forbidden when RBAC says no."""
    try:
        return await _request("GET", path)
    except ApiError as error:
        if error.status == 404:
            return None
        if error.status == 403:
            raise Forbidden(what) from None
        raise


async def read_scale(kind: str, namespace: str, name: str) -> JsonDict | None:
    """The target's /scale subresource ({spec: {replicas}, status: {replicas, selector}}); None when
    the target does not exist. Raises Forbidden."""
    path = f"/apis/apps/v1/namespaces/{namespace}/{_SCALE_PLURALS[kind]}/{name}/scale"
    scale = await _read(f"{kind} {namespace}/{name}", path)
    return None if scale is None else dict(scale)


def scale_resource(kind: str) -> str:
    """The resource an RBAC rule names to let the operator scale `kind`: `deployments/scale`."""
    return f"{_SCALE_PLURALS[kind]}/scale"


async def apply_replicas(kind: str, namespace: str, name: str, replicas: int) -> None:
    """Sets spec.replicas alone by a server-side apply of the /scale subresource, as the field
    manager `habitat-operator`: GitOps tools that apply the target's other fields leave it alone."""
    body = {
        "apiVersion": "autoscaling/v1",
        "kind": "Scale",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"replicas": replicas},
    }
    path = f"/apis/apps/v1/namespaces/{namespace}/{_SCALE_PLURALS[kind]}/{name}/scale"
    try:
        await _request(
            "PATCH", path, body, "application/apply-patch+yaml", fieldManager=FIELD_MANAGER, force="true"
        )
    except ApiError as error:
        if error.status == 403:
            raise Forbidden(f"{kind} {namespace}/{name}/scale") from None
        raise


async def patch_status(
    plural: str, namespace: str, name: str, status: JsonDict, resource_version: str | None = None
) -> str | None:
    """Writes status at once (not at the handler's end), so a crash right after still shows it.
    With `resource_version`, the write applies only to that version of the object (else Conflict).
    Returns the object's new resourceVersion."""
    body: JsonDict = {"status": status}
    if resource_version is not None:
        body["metadata"] = {"resourceVersion": resource_version}
    path = f"{_custom(namespace, plural, name)}/status"
    try:
        result = await _request("PATCH", path, body, "application/merge-patch+json")
    except ApiError as error:
        if error.status == 409:
            raise Conflict(f"{plural} {namespace}/{name}") from None
        raise
    version = (result.get("metadata") or {}).get("resourceVersion")
    return None if version is None else str(version)


async def create(plural: str, namespace: str, body: JsonDict) -> JsonDict:
    try:
        result = await _request("POST", _custom(namespace, plural), body)
    except ApiError as error:
        if error.status == 409:
            raise AlreadyExists(body["metadata"]["name"]) from None
        raise
    return dict(result)


async def list_objects(plural: str, namespace: str, label_selector: str) -> list[JsonDict]:
    result = await _request("GET", _custom(namespace, plural), labelSelector=label_selector)
    return list(result.get("items") or [])


async def get(plural: str, namespace: str, name: str) -> JsonDict | None:
    try:
        result = await _request("GET", _custom(namespace, plural, name))
    except ApiError as error:
        if error.status == 404:
            return None
        raise
    return dict(result)


async def delete(plural: str, namespace: str, name: str) -> None:
    try:
        await _request("DELETE", _custom(namespace, plural, name))
    except ApiError as error:
        if error.status != 404:
            raise


async def read_secret(namespace: str, name: str) -> dict[str, bytes] | None:
    """A Secret's data, decoded; None when it does not exist. Raises Forbidden."""
    secret = await _read(f"Secret {namespace}/{name}", f"/api/v1/namespaces/{namespace}/secrets/{name}")
    if secret is None:
        return None
    return {key: base64.b64decode(value) for key, value in (secret.get("data") or {}).items()}


async def read_config_map(namespace: str, name: str) -> dict[str, str] | None:
    """A ConfigMap's data; None when it does not exist. Raises Forbidden."""
    path = f"/api/v1/namespaces/{namespace}/configmaps/{name}"
    config_map = await _read(f"ConfigMap {namespace}/{name}", path)
    return None if config_map is None else dict(config_map.get("data") or {})


async def event(body: JsonDict, type_: str, reason: str, message: str) -> None:
    """Posts a core/v1 Event about an object; failing to post one never fails the operation."""
    meta = body["metadata"]
    stamp = timestamps.rfc3339(timestamps.now())
    event_body = {
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": body["apiVersion"],
            "kind": body["kind"],
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
        },
        "type": type_,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": "habitat-operator"},
        "reportingComponent": "habitat-operator",
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }
    try:
        await _request("POST", f"/api/v1/namespaces/{meta['namespace']}/events", event_body)
    except (ApiError, aiohttp.ClientError, TimeoutError) as error:
        logging.getLogger(__name__).warning("could not post event %s: %s", reason, error)
