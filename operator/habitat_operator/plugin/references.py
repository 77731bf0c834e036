"""What Habitat resources name outside themselves: Secrets (and the keys they need), S3 buckets and queues.

Read from the API models (pure): a spec is validated with its kind's model, so the defaults the
controllers apply (a SecretKeyRef's key "uri", S3's "accessKeyId") are the ones checked here, and a
new Secret reference in any kind is found without a second list.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ValidationError

from habitat_operator.api import ALL_KINDS
from habitat_operator.api.artifacts import CaSecretRef, S3CredentialsSecretRef, S3Storage
from habitat_operator.api.common import DatabaseRef, EncryptionKeySecretRef, SecretKeyRef
from habitat_operator.api.replayjob import AmqpSecretRef, RabbitMqRef
from habitat_operator.api.scalepolicy import QueueSource, RabbitMQTrigger

SECRET_REFS = (SecretKeyRef, S3CredentialsSecretRef, CaSecretRef, AmqpSecretRef)
_MODELS = {kind.kind: kind.spec_model for kind in ALL_KINDS}


class Purpose(StrEnum):
    """What a Secret's value is, so that diagnose knows how to try it."""

    POSTGRES = "PostgreSQL URI"
    AMQP = "AMQP URI"
    MANAGEMENT = "RabbitMQ management URL"
    S3 = "S3 access keys"
    CA = "CA bundle"
    ENCRYPTION = "encryption key"
    OTHER = "value"


@dataclass(frozen=True)
class SecretUse:
    namespace: str
    resource: str  # kind/name
    path: str  # e.g. spec.database.secretRef
    secret: str
    keys: tuple[str, ...]
    purpose: Purpose


@dataclass(frozen=True)
class StorageUse:
    namespace: str
    resource: str
    path: str
    storage: S3Storage


@dataclass(frozen=True)
class QueueUse:
    namespace: str
    resource: str
    path: str
    trigger: RabbitMQTrigger


@dataclass
class References:
    secrets: list[SecretUse] = field(default_factory=list)
    storages: list[StorageUse] = field(default_factory=list)
    queues: list[QueueUse] = field(default_factory=list)
    unreadable: list[tuple[str, str, str]] = field(default_factory=list)  # namespace, resource, why


def references(items: Iterable[Mapping[str, Any]]) -> References:
    found = References()
    for item in items:
        model = _MODELS.get(str(item.get("kind")))
        if model is None:
            continue
        namespace = str(item["metadata"].get("namespace", ""))
        resource = f"{str(item['kind']).lower()}/{item['metadata']['name']}"
        try:
            spec = model.model_validate(item.get("spec") or {})
        except ValidationError as error:
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            found.unreadable.append((namespace, resource, f"spec.{where}: {first['msg']}"))
            continue
        for path, value, parent in _walk(spec, "spec", None):
            if isinstance(value, SECRET_REFS):
                keys = tuple(
                    getattr(value, name)
                    for name in type(value).model_fields
                    if name == "key" or name.endswith("_key")
                )
                found.secrets.append(
                    SecretUse(namespace, resource, path, value.name, keys, _purpose(value, parent))
                )
            elif isinstance(value, S3Storage):
                found.storages.append(StorageUse(namespace, resource, path, value))
            elif isinstance(value, RabbitMQTrigger):
                found.queues.append(QueueUse(namespace, resource, path, value))
    return found


def _purpose(ref: BaseModel, parent: BaseModel | None) -> Purpose:
    if isinstance(ref, EncryptionKeySecretRef):
        return Purpose.ENCRYPTION
    if isinstance(ref, CaSecretRef):
        return Purpose.CA
    if isinstance(ref, S3CredentialsSecretRef):
        return Purpose.S3
    if isinstance(parent, DatabaseRef):
        return Purpose.POSTGRES
    if isinstance(parent, RabbitMqRef):
        return Purpose.AMQP
    if isinstance(parent, RabbitMQTrigger):
        return Purpose.AMQP if parent.source is QueueSource.AMQP else Purpose.MANAGEMENT
    return Purpose.OTHER


def _walk(value: Any, path: str, parent: BaseModel | None) -> Iterator[tuple[str, Any, BaseModel | None]]:
    """Every model in `value` with its path in the object (camelCase, as kubectl shows it) and the
    model holding it."""
    if isinstance(value, BaseModel):
        yield path, value, parent
        for name, info in type(value).model_fields.items():
            yield from _walk(getattr(value, name), f"{path}.{info.alias or name}", value)
    elif isinstance(value, list):
        for index, member in enumerate(value):
            yield from _walk(member, f"{path}[{index}]", parent)
