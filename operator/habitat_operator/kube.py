"""The operator's own Kubernetes API calls (Kopf does the watching): status writes, children, Events.

The official client is synchronous; every call here runs in a worker thread so that handlers stay async.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

import kubernetes
from kubernetes.client import ApiException

from habitat_operator.api import GROUP, VERSION

JsonDict = dict[str, Any]


def configure() -> None:
    """Loads in-cluster credentials when running in a pod, else the current kubeconfig."""
    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()


def _custom() -> kubernetes.client.CustomObjectsApi:
    return kubernetes.client.CustomObjectsApi()


def core() -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api()


async def patch_status(plural: str, namespace: str, name: str, status: JsonDict) -> None:
    """Writes status at once (not at the handler's end), so a crash right after still shows it."""
    await asyncio.to_thread(
        _custom().patch_namespaced_custom_object_status,
        GROUP,
        VERSION,
        namespace,
        plural,
        name,
        {"status": status},
    )


async def create(plural: str, namespace: str, body: JsonDict) -> JsonDict:
    result = await asyncio.to_thread(
        _custom().create_namespaced_custom_object, GROUP, VERSION, namespace, plural, body
    )
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


def owner_reference(body: JsonDict) -> JsonDict:
    """Makes the child garbage-collected with its parent (a schedule and its runs)."""
    return {
        "apiVersion": body["apiVersion"],
        "kind": body["kind"],
        "name": body["metadata"]["name"],
        "uid": body["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def timestamp(moment: dt.datetime) -> str:
    """RFC 3339 in UTC with a Z, as Kubernetes writes times."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


async def event(body: JsonDict, type_: str, reason: str, message: str) -> None:
    """Posts a core/v1 Event about an object; failing to post one never fails the operation."""
    meta = body["metadata"]
    stamp = timestamp(now())
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
        await asyncio.to_thread(core().create_namespaced_event, meta["namespace"], event_body)
    except ApiException as error:
        logging.getLogger(__name__).warning("could not post event %s: %s", reason, error.reason)
