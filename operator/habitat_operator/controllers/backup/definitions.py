"""A Backup of RabbitMQ definitions: exported through the management API, without users' password
hashes unless `includeUsers`, sealed like a dump (zstd unless `compression: none`, encryption,
SHA-256), stored all or nothing, read back and checked, and in a bucket cataloged last.

The management API's URL comes from its Secret and goes to the engine only: status, Events, logs
and the catalog show its host and port.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import TYPE_CHECKING, Any

from habitat_operator import names, timestamps
from habitat_operator.api.artifacts import Compression
from habitat_operator.api.backup import Artifact, BackupSpec, BackupStatus
from habitat_operator.api.common import Reason
from habitat_operator.api.rabbitmq_definitions import (
    ArtifactKind,
    DefinitionsReason,
    RabbitMQDefinitionsSource,
)
from habitat_operator.controllers.base.buckets import encryption_key_id, open_bucket
from habitat_operator.controllers.base.endpoints import management_api
from habitat_operator.durations import parse_duration
from habitat_operator.engines.artifacts.store import ArtifactStore
from habitat_operator.engines.rabbitmq import definitions_artifact as artifact
from habitat_operator.engines.rabbitmq.definitions import artifact_document, describe_counts, encode
from habitat_operator.engines.threads import in_thread
from habitat_operator.errors import RetryableError

if TYPE_CHECKING:
    from habitat_operator.controllers.backup.run import BackupRun

MAX_FILE_STEM = 200  # as a dump's: the name, the suffix and a partial's prefix fit in 255 bytes


async def export_definitions(
    run: BackupRun, spec: BackupSpec, source: RabbitMQDefinitionsSource, encryption_key: bytes | None
) -> None:
    api = await management_api(
        run.namespace, source.management_secret_ref, run.config.allowed_metrics_endpoints
    )
    broker = api.display + (f" vhost {source.vhost}" if source.vhost is not None else "")
    compression = Compression.NONE if spec.compression is Compression.NONE else Compression.ZSTD
    timeout = parse_duration(spec.timeout).total_seconds()
    async with run.slot(api.display):

        def exporting(status: BackupStatus) -> None:
            status.broker = broker

        await run.start(DefinitionsReason.EXPORTING, f"exporting the definitions of {broker}", exporting)
        try:
            async with asyncio.timeout(timeout):
                export = await in_thread(api.export, source.vhost)
                document = artifact_document(export, source.vhost, source.include_users)
                sealed = await in_thread(_seal, document, encryption_key, compression)
                uri = await _store(run, spec, sealed, encryption_key, compression, broker, export)
        except TimeoutError:
            raise RetryableError(
                Reason.TIMEOUT, f"export of {broker} did not finish within {spec.timeout}"
            ) from None
    await run.succeed_with(
        Artifact(
            uri=uri,
            size_bytes=len(sealed.data),
            sha256=sealed.sha256,
            encrypted=encryption_key is not None,
            compression=compression,
            kind=ArtifactKind.RABBITMQ_DEFINITIONS,
        ),
        spec.verify,
    )
    run.log.info("definitions exported", broker=broker, definitions=describe_counts(export))


def _seal(
    document: dict[str, Any], encryption_key: bytes | None, compression: Compression
) -> artifact.Sealed:
    return artifact.seal(encode(document), encryption_key, zstd=compression is Compression.ZSTD)


async def _store(
    run: BackupRun,
    spec: BackupSpec,
    sealed: artifact.Sealed,
    encryption_key: bytes | None,
    compression: Compression,
    broker: str,
    export: dict[str, Any],
) -> str:
    """The sealed artifact in the Backup's storage, checked if `verify`; its URI."""
    stem = names.fit(run.name, MAX_FILE_STEM) + artifact.SUFFIX
    what = f"the definitions artifact of Backup {run.name}"
    check = partial(artifact.check_stored, sealed, encryption_key, what) if spec.verify else None
    if spec.storage.s3 is None:
        assert spec.storage.filesystem is not None  # the CRD requires exactly one of them
        store = ArtifactStore(run.config.backup_root)
        path = store.namespace_directory(spec.storage.filesystem.path, run.namespace) / stem
        return await in_thread(artifact.write_file, path, sealed, check)
    created = timestamps.now()
    bucket = await open_bucket(run.namespace, spec.storage.s3)
    try:
        key = bucket.location.key(run.namespace, stem)
        uri = await in_thread(artifact.upload, bucket, key, sealed, check)
        entry = {
            "kind": ArtifactKind.RABBITMQ_DEFINITIONS.value,
            "namespace": run.namespace,
            "backup": run.name,
            "uid": str(run.body["metadata"].get("uid", "")),
            "broker": broker,
            "rabbitmqVersion": export.get("rabbitmq_version"),
            "sha256": sealed.sha256,
            "sizeBytes": len(sealed.data),
            "compression": compression.value,
            "encrypted": encryption_key is not None,
            "encryptionKeyId": encryption_key_id(encryption_key) if encryption_key else None,
            "verified": spec.verify,
            "createdAt": timestamps.rfc3339(created),
            "completedAt": timestamps.rfc3339(timestamps.now()),
        }
        await in_thread(bucket.put_catalog, key, entry)
        return uri
    finally:
        await in_thread(bucket.close)
