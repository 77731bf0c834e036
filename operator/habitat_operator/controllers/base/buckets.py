"""A bucket as a storage block names it, with its credentials read from the object's own namespace.

The access keys and the CA come only from Secrets in the namespace of the object that names the
bucket; they go to boto3 and nowhere else (never to status, Events, logs or the catalog).
"""

from __future__ import annotations

import hashlib

from habitat_operator.api.artifacts import S3Storage
from habitat_operator.api.common import Reason
from habitat_operator.controllers.base.credentials import read_secret_text, read_secret_value
from habitat_operator.engines.artifacts.s3 import Bucket, S3Location
from habitat_operator.engines.threads import in_thread
from habitat_operator.errors import PermanentError

_KEY_ID_CONTEXT = b"habitat-operator encryption key id v1"


async def open_bucket(namespace: str, storage: S3Storage) -> Bucket:
    """The bucket of `storage`; close it when done. A missing Secret or key is a WaitingError."""
    credentials = storage.credentials_secret_ref
    access_key_id = await read_secret_text(namespace, credentials.name, credentials.access_key_id_key)
    secret_access_key = await read_secret_text(namespace, credentials.name, credentials.secret_access_key_key)
    ca = storage.ca_secret_ref
    ca_bundle = await read_secret_value(namespace, ca.name, ca.key) if ca else None
    location = location_of(storage, access_key_id, secret_access_key, ca_bundle)
    return await in_thread(Bucket, location)  # boto3 loads its service model: not on the event loop


def location_of(
    storage: S3Storage, access_key_id: str, secret_access_key: str, ca_bundle: bytes | None = None
) -> S3Location:
    """The engine's plain S3Location for a storage block and its credentials."""
    return S3Location(
        bucket=storage.bucket,
        prefix=storage.prefix,
        region=storage.region,
        endpoint=storage.endpoint,
        force_path_style=storage.force_path_style,
        access_key_id=access_key_id,
        secret_access_key=secret_access_key,
        ca_bundle=ca_bundle,
    )


def encryption_key_id(key: bytes) -> str:
    """Names an encryption key in a catalog without revealing it: a keyed hash, truncated."""
    return "sha256:" + hashlib.sha256(_KEY_ID_CONTEXT + key).hexdigest()[:16]


def object_key(location: S3Location, uri: str, namespace: str) -> str:
    """The key an `s3://` URI names, which must lie in `namespace`'s part of the location
    (`<prefix>/<namespace>/`): a status edited to name another namespace's artifact reaches nothing."""
    head = f"s3://{location.bucket}/"
    key = uri.removeprefix(head)
    folder = location.key(namespace) + "/"
    if not uri.startswith(head) or not key.startswith(folder) or ".." in key.split("/"):
        raise PermanentError(
            Reason.INVALID_ARTIFACT_PATH, f"artifact {uri!r} is not in {location.uri(folder)}"
        )
    return key
