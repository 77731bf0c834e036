"""The operator's own Kubernetes API calls (Kopf does the watching): status writes, children, Events.

The only module that imports `kubernetes`. The official client is synchronous; every call here runs
in a worker thread so that handlers stay async. API errors that callers act on come out as the
exceptions below, never as the client's ApiException.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
from typing import Any

import kubernetes
from kubernetes.client import ApiException

from habitat_operator import timestamps
from habitat_operator.api import GROUP, VERSION

JsonDict = dict[str, Any]


class Forbidden(Exception):
    """The operator's RBAC does not allow the call (HTTP 403)."""


class AlreadyExists(Exception):
    """An object of that name exists already (HTTP 409 on create)."""


class Conflict(Exception):
    """The object changed since the resourceVersion a write was based on (HTTP 409 on a patch)."""


def configure() -> None:
    """Loads in-cluster credentials when running in a pod, else the current kubeconfig."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()


@functools.cache
def _api_client() -> kubernetes.client.ApiClient:
    """One client, so one connection pool: a client per call would open a TLS connection per call."""
    return kubernetes.client.ApiClient()


def _custom() -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi(_api_client())


def _request(
    method: str, path: str, body: JsonDict | None = None, content_type: str = "application/json", **query: Any
) -> Any:
    """A request by path, its JSON answer as plain data. Secrets, ConfigMaps, Events and /scale go
    this way: the generated CoreV1Api and AppsV1Api would add about 30 MB of RSS for four calls."""
    client = _api_client()
    request = client.param_serialize(
        method,
        path,
        query_params=list(query.items()),
        header_params={"Accept": "application/json", "Content-Type": content_type},
        body=body,
        auth_settings=["BearerToken"],
    )
    response = client.call_api(*request)
    response.read()
    return client.response_deserialize(response, {"200": "object", "201": "object"}).data


# The apps/v1 kinds whose /scale subresource the operator reads and writes, by kind.
_SCALE_PLURALS = {"Deployment": "deployments", "StatefulSet": "statefulsets"}
FIELD_MANAGER = "habitat-operator"


async def _read(what: str, call: Any, *args: Any, **kwargs: Any) -> Any:
    """A GET in a worker thread: None when the object does not exist, Forbidden when RBAC says no."""
    try:
        return await asyncio.to_thread(call, *args, **kwargs)
    except ApiException as error:
        if error.status == 404:
            return None
        if error.status == 403:
            raise Forbidden(what) from None
        raise


async def read_scale(kind: str, namespace: str, name: str) -> JsonDict | None:
    """The target's /scale subresource ({spec: {replicas}, status: {replicas, selector}}); None when
    the target does not exist. Raises Forbidden."""
    path = f"/apis/apps/v1/namespaces/{namespace}/{_SCALE_PLURALS[kind]}/{name}/scale"
    scale = await _read(f"{kind} {namespace}/{name}", _request, "GET", path)
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
        await asyncio.to_thread(
            _request,
            "PATCH",
            path,
            body,
            "application/apply-patch+yaml",
            fieldManager=FIELD_MANAGER,
            force=True,
        )
    except ApiException as error:
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
    try:
        result = await asyncio.to_thread(
            _custom().patch_namespaced_custom_object_status, GROUP, VERSION, namespace, plural, name, body
        )
    except ApiException as error:
        if error.status == 409:
            raise Conflict(f"{plural} {namespace}/{name}") from None
        raise
    version = (dict(result).get("metadata") or {}).get("resourceVersion")
    return None if version is None else str(version)


async def create(plural: str, namespace: str, body: JsonDict) -> JsonDict:
    try:
        result = await asyncio.to_thread(
            _custom().create_namespaced_custom_object, GROUP, VERSION, namespace, plural, body
        )
    except ApiException as error:
        if error.status == 409:
            raise AlreadyExists(body["metadata"]["name"]) from None
        raise
    return dict(result)


async def list_objects(plural: str, namespace: str, label_selector: str) -> list[JsonDict]:
    result = await asyncio.to_thread(
        _custom().list_namespaced_custom_object,
        GROUP,
        VERSION,
        namespace,
        plural,
        label_selector=label_selector,
    )
    return list(result.get("items", []))


async def get(plural: str, namespace: str, name: str) -> JsonDict | None:
    try:
        result = await asyncio.to_thread(
            _custom().get_namespaced_custom_object, GROUP, VERSION, namespace, plural, name
        )
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return dict(result)


async def delete(plural: str, namespace: str, name: str) -> None:
    try:
        await asyncio.to_thread(
            _custom().delete_namespaced_custom_object, GROUP, VERSION, namespace, plural, name
        )
    except ApiException as error:
        if error.status != 404:
            raise


async def read_secret(namespace: str, name: str) -> dict[str, bytes] | None:
    """A Secret's data, decoded; None when it does not exist. Raises Forbidden."""
    secret = await _read(
        f"Secret {namespace}/{name}", _request, "GET", f"/api/v1/namespaces/{namespace}/secrets/{name}"
    )
    if secret is None:
        return None
    return {key: base64.b64decode(value) for key, value in (secret.get("data") or {}).items()}


async def read_config_map(namespace: str, name: str) -> dict[str, str] | None:
    """A ConfigMap's data; None when it does not exist. Raises Forbidden."""
    path = f"/api/v1/namespaces/{namespace}/configmaps/{name}"
    config_map = await _read(f"ConfigMap {namespace}/{name}", _request, "GET", path)
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
        await asyncio.to_thread(
            _request, "POST", f"/api/v1/namespaces/{meta['namespace']}/events", event_body
        )
    except ApiException as error:
        logging.getLogger(__name__).warning("could not post event %s: %s", reason, error.reason)
