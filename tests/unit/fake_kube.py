"""An in-memory stand-in for `habitat_operator.controllers.base.kube`, for the controllers' unit tests.

It keeps what the apiserver would, and checks what the apiserver would check:
- objects by (plural, namespace, name); create fills uid, creationTimestamp, generation and
  resourceVersion, refuses a second object of a name (`kube.AlreadyExists`), a name that is not a
  DNS subdomain of at most 253 characters, a label that Kubernetes would refuse, and a spec that the
  kind's model (the CRD's schema) rejects;
- status written by JSON merge patch (RFC 7386: objects merge, null removes a key, anything else
  replaces), JSON-serialisable and valid for the kind's status model, as the CRD's schema wants;
- status writes based on an older resourceVersion refused (`kube.Conflict`), as the apiserver does;
- Secrets, and Secrets the operator may not read (`kube.Forbidden`);
- Deployments' and StatefulSets' /scale, which RBAC may forbid to read or to patch;
- the Events posted, in order.

Every body handed out is a copy, so a controller never sees a later write through a body it holds;
a test reads the stored state with `object()` and `status()`. `install` replaces the kube module's
calls with these and makes the real client unreachable.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import re
import uuid
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from pydantic import ValidationError

from habitat_operator import timestamps
from habitat_operator.api import ALL_KINDS, KindInfo
from habitat_operator.controllers.base import kube

JsonDict = dict[str, Any]
Key = tuple[str, str, str]

KINDS: dict[str, KindInfo] = {info.plural: info for info in ALL_KINDS}

_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_NAME = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
_SELECTOR_TERM = re.compile(r"(?P<key>[^=!\s]+)\s*(?P<op>==|!=|=)\s*(?P<value>\S*)")


class NotFound(Exception):
    """404 from a call the real module does not map (a status patch of a missing object)."""


class Invalid(Exception):
    """422: the apiserver refuses the object or the status (schema, name or label)."""


@dataclass(frozen=True)
class RecordedEvent:
    kind: str
    namespace: str
    name: str
    type: str
    reason: str
    message: str


@dataclass(frozen=True)
class StatusPatch:
    plural: str
    namespace: str
    name: str
    patch: JsonDict


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch of `target` by `patch`; neither is modified."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def check_name(name: str) -> None:
    if len(name) > 253 or not _DNS_SUBDOMAIN.fullmatch(name):
        raise Invalid(f"metadata.name {name!r} is not a DNS subdomain of at most 253 characters")


def check_labels(labels: Mapping[str, str]) -> None:
    for key, value in labels.items():
        prefix, _, label_name = key.rpartition("/")
        if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
            raise Invalid(f"label key {key!r}: invalid prefix")
        if not label_name or len(label_name) > 63 or not _LABEL_NAME.fullmatch(label_name):
            raise Invalid(f"label key {key!r}: invalid name")
        if len(value) > 63 or not _LABEL_NAME.fullmatch(value):
            raise Invalid(f"label {key}: value {value!r} is not a label value of at most 63 characters")


def matches(labels: Mapping[str, str], selector: str) -> bool:
    """Equality-based label selectors: `k=v`, `k==v`, `k!=v`, `k` and `!k`, comma-separated."""
    for raw in filter(None, (term.strip() for term in selector.split(","))):
        term = _SELECTOR_TERM.fullmatch(raw)
        if term is None:
            if not re.fullmatch(r"!?[^=!\s,]+", raw):
                raise ValueError(f"label selector term {raw!r} is not supported by the fake")
            if (raw.removeprefix("!") in labels) == raw.startswith("!"):
                return False
        elif (labels.get(term["key"]) == term["value"]) == (term["op"] == "!="):
            return False
    return True


class FakeKube:
    """The apiserver, as far as the controllers see it through `kube`."""

    def __init__(self) -> None:
        self.objects: dict[Key, JsonDict] = {}
        self.secrets: dict[tuple[str, str], dict[str, bytes]] = {}
        self.forbidden_secrets: set[tuple[str, str]] = set()
        self.events: list[RecordedEvent] = []
        self.patches: list[StatusPatch] = []
        self.created: list[Key] = []
        self.deleted: list[Key] = []
        # Objects a list does not show yet (a list served from a cache that lags behind).
        self.unlisted: set[Key] = set()
        self.scales: dict[tuple[str, str, str], int] = {}  # (kind, namespace, name): spec.replicas
        self.forbidden_scale_verbs: set[str] = set()  # "get", "patch"
        self._faults: dict[str, list[BaseException]] = defaultdict(list)
        self._version = 0

    # ---------------------------------------------------------------- for the tests

    def add(self, plural: str, body: JsonDict, *, validate: bool = True) -> JsonDict:
        """Stores an object as `kubectl apply` would; `validate=False` stores a spec the model
        rejects (e.g. one written for an older operator)."""
        return copy.deepcopy(self._store(plural, body, validate=validate))

    def object(self, plural: str, namespace: str, name: str) -> JsonDict:
        return copy.deepcopy(self.objects[(plural, namespace, name)])

    def status(self, plural: str, namespace: str, name: str) -> JsonDict:
        return dict(self.object(plural, namespace, name).get("status") or {})

    def set_status(self, plural: str, namespace: str, name: str, status: JsonDict) -> None:
        """Replaces an object's status, as another writer (or an older operator) left it."""
        stored = self.objects[(plural, namespace, name)]
        stored["status"] = copy.deepcopy(status)
        stored["metadata"]["resourceVersion"] = self._next_version()

    def edit_spec(self, plural: str, namespace: str, name: str, **changes: Any) -> None:
        """A user's edit of the spec: a new generation and resourceVersion."""
        stored = self.objects[(plural, namespace, name)]
        stored["spec"] = {**stored.get("spec", {}), **changes}
        stored["metadata"]["generation"] += 1
        stored["metadata"]["resourceVersion"] = self._next_version()

    def names(self, plural: str, namespace: str) -> list[str]:
        return sorted(name for (p, ns, name) in self.objects if (p, ns) == (plural, namespace))

    def put_secret(self, namespace: str, name: str, data: Mapping[str, bytes | str]) -> None:
        self.secrets[(namespace, name)] = {
            key: value.encode() if isinstance(value, str) else value for key, value in data.items()
        }

    def forbid_secret(self, namespace: str, name: str) -> None:
        self.forbidden_secrets.add((namespace, name))

    def fail_next(self, operation: str, error: BaseException) -> None:
        """The next call of `operation` (e.g. "patch_status") raises `error` (after doing its work
        for "create": the object exists, but the caller never hears so, as when the response is lost)."""
        self._faults[operation].append(error)

    def events_for(self, name: str) -> list[RecordedEvent]:
        return [event for event in self.events if event.name == name]

    def reasons(self, name: str) -> list[str]:
        return [event.reason for event in self.events_for(name)]

    def patches_of(self, name: str) -> list[JsonDict]:
        return [p.patch for p in self.patches if p.name == name]

    # ---------------------------------------------------------------- the kube module's calls

    async def patch_status(
        self, plural: str, namespace: str, name: str, status: JsonDict, resource_version: str | None = None
    ) -> str:
        self._fault("patch_status")
        stored = self.objects.get((plural, namespace, name))
        if stored is None:
            raise NotFound(f"{plural} {namespace}/{name}")
        if resource_version is not None and resource_version != stored["metadata"]["resourceVersion"]:
            raise kube.Conflict(f"{plural} {namespace}/{name}")
        wire = json.loads(json.dumps(status))  # what the client would send; fails on non-JSON values
        merged = merge_patch(stored.get("status"), wire)
        try:
            KINDS[plural].status_model.model_validate(merged)
        except ValidationError as error:
            raise Invalid(f"status of {plural} {namespace}/{name}: {error}") from None
        stored["status"] = merged
        stored["metadata"]["resourceVersion"] = version = self._next_version()
        self.patches.append(StatusPatch(plural, namespace, name, wire))
        return version

    async def create(self, plural: str, namespace: str, body: JsonDict) -> JsonDict:
        if body["metadata"].get("namespace", namespace) != namespace:
            raise Invalid("the body's namespace does not match the request's")
        stored = self._store(plural, {**body, "metadata": {**body["metadata"], "namespace": namespace}})
        self._fault("create")
        return copy.deepcopy(stored)

    async def list_objects(self, plural: str, namespace: str, label_selector: str) -> list[JsonDict]:
        self._fault("list_objects")
        return [
            copy.deepcopy(obj)
            for key, obj in sorted(self.objects.items())
            if key[:2] == (plural, namespace)
            and key not in self.unlisted
            and matches(obj["metadata"].get("labels") or {}, label_selector)
        ]

    async def get(self, plural: str, namespace: str, name: str) -> JsonDict | None:
        self._fault("get")
        stored = self.objects.get((plural, namespace, name))
        return copy.deepcopy(stored) if stored is not None else None

    async def delete(self, plural: str, namespace: str, name: str) -> None:
        self._fault("delete")
        if self.objects.pop((plural, namespace, name), None) is not None:
            self.deleted.append((plural, namespace, name))

    async def read_secret(self, namespace: str, name: str) -> dict[str, bytes] | None:
        self._fault("read_secret")
        if (namespace, name) in self.forbidden_secrets:
            raise kube.Forbidden(f"Secret {namespace}/{name}")
        data = self.secrets.get((namespace, name))
        return dict(data) if data is not None else None

    async def read_scale(self, kind: str, namespace: str, name: str) -> JsonDict | None:
        self._fault("read_scale")
        if "get" in self.forbidden_scale_verbs:
            raise kube.Forbidden(f"{kind} {namespace}/{name}")
        replicas = self.scales.get((kind, namespace, name))
        return (
            None if replicas is None else {"spec": {"replicas": replicas}, "status": {"replicas": replicas}}
        )

    async def apply_replicas(self, kind: str, namespace: str, name: str, replicas: int) -> None:
        self._fault("apply_replicas")
        if "patch" in self.forbidden_scale_verbs:
            raise kube.Forbidden(f"{kind} {namespace}/{name}/scale")
        self.scales[(kind, namespace, name)] = replicas

    async def event(self, body: JsonDict, type_: str, reason: str, message: str) -> None:
        meta = body["metadata"]
        # The real call reads these too: a body without them would fail there.
        involved = (body["apiVersion"], meta["uid"])
        assert all(involved), f"event about an object without apiVersion or uid: {meta['name']}"
        assert type_ in ("Normal", "Warning"), type_
        self.events.append(
            RecordedEvent(body["kind"], meta["namespace"], meta["name"], type_, str(reason), message[:1024])
        )

    # ---------------------------------------------------------------- inside

    def _store(self, plural: str, body: JsonDict, *, validate: bool = True) -> JsonDict:
        obj = copy.deepcopy(body)
        meta = obj["metadata"]
        key = (plural, meta["namespace"], meta["name"])
        info = KINDS[plural]
        check_name(meta["name"])
        check_labels(meta.get("labels") or {})
        assert obj["kind"] == info.kind, f"{obj['kind']} stored as {plural}"
        if validate:
            try:
                info.spec_model.model_validate(obj.get("spec") or {})
            except ValidationError as error:
                raise Invalid(f"spec of {plural} {meta['namespace']}/{meta['name']}: {error}") from None
        if key in self.objects:
            raise kube.AlreadyExists(meta["name"])
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", timestamps.rfc3339(timestamps.now()))
        meta.setdefault("generation", 1)
        meta["resourceVersion"] = self._next_version()
        self.objects[key] = obj
        self.created.append(key)
        return obj

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    def _fault(self, operation: str) -> None:
        if self._faults[operation]:
            raise self._faults[operation].pop(0)


class Clock:
    """`timestamps.now()` for the operator and the fake apiserver alike; it moves only when told."""

    def __init__(self, start: dt.datetime) -> None:
        self.moment = start

    def now(self) -> dt.datetime:
        return self.moment

    def set(self, moment: dt.datetime) -> None:
        self.moment = moment

    def advance(self, seconds: float) -> None:
        self.moment += dt.timedelta(seconds=seconds)


def _unreachable(*_: Any, **__: Any) -> Any:
    raise AssertionError("a unit test reached the real Kubernetes client")


def install(monkeypatch: pytest.MonkeyPatch) -> FakeKube:
    """Replaces every call of the kube module with a new FakeKube's; the real client is unreachable."""
    fake = FakeKube()
    calls = ("patch_status", "create", "list_objects", "get", "delete", "read_secret", "event")
    for name in (*calls, "read_scale", "apply_replicas"):
        monkeypatch.setattr(kube, name, getattr(fake, name))
    monkeypatch.setattr(kube, "_request", _unreachable)
    return fake
