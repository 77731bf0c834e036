"""A Restore of RabbitMQ definitions into a broker (`target.rabbitmq`), once.

The order protects the broker: the artifact is read whole (bounded) and checked (its SHA-256, its
decryption, its shape) before the broker is asked anything; the broker's current definitions are
read next, and what the import would create and update is computed from both. A dry run ends
there, with that plan in status and an Event. Otherwise a broker (or the artifact's vhost) that
holds queues or exchanges of its own is refused without `mode.force`, and only then is the import
posted (a run resumed after the operator died mid-import was past that check, and posts again:
an import is idempotent). Users the artifact has no password hash for are left out (RabbitMQ would
clear the password of an existing user imported without one), and so are permissions of users the
broker will not have.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from habitat_operator.api.common import Reason
from habitat_operator.api.rabbitmq_definitions import (
    ArtifactKind,
    DefinitionChanges,
    DefinitionsImport,
    DefinitionsReason,
    RabbitMQTarget,
)
from habitat_operator.api.restore import RestoredFrom, RestoreSpec, RestoreStatus
from habitat_operator.controllers.base.endpoints import management_api
from habitat_operator.controllers.restore.source import SourceArtifact
from habitat_operator.engines.artifacts.codec import Readable
from habitat_operator.engines.rabbitmq.definitions import (
    Definitions,
    decode,
    describe_plan,
    has_topology,
    import_body,
    plan,
    unwrap,
)
from habitat_operator.engines.rabbitmq.definitions_artifact import read_plaintext
from habitat_operator.engines.threads import in_thread
from habitat_operator.errors import OperationError, PermanentError, one_line

if TYPE_CHECKING:
    from habitat_operator.controllers.restore.run import RestoreRun

MESSAGE_LIMIT = 1000  # the plan's names are all in status.definitions; the message and Event may cut them


async def restore_definitions(
    run: RestoreRun, spec: RestoreSpec, target: RabbitMQTarget, source: SourceArtifact
) -> None:
    if source.kind is ArtifactKind.DATABASE:
        raise PermanentError(
            DefinitionsReason.ARTIFACT_KIND_MISMATCH,
            f"{source.uri} is a database dump, not RabbitMQ definitions; restore it into target.database",
        )
    api = await management_api(
        run.namespace, target.management_secret_ref, run.config.allowed_metrics_endpoints
    )
    definitions, vhost = await _read_artifact(spec, source)
    where = api.display + (f" vhost {vhost}" if vhost is not None else "")
    async with run.slot(api.display):
        if spec.dry_run:
            await run.start(DefinitionsReason.DRY_RUN, f"planning the import into {where}")
        current = await in_thread(api.export, vhost)
        body, skipped = import_body(definitions, current)
        changes = plan(body, current, skipped)
        summary = describe_plan(changes)
        occupied = has_topology(current) and not spec.mode.force
        if spec.dry_run:
            note = "; a real run would be refused: it holds queues or exchanges (set mode.force)"
            message = f"dry run into {where}: {summary}{note if occupied else ''}"
            await _succeed(run, spec, source, where, vhost, changes, message)
            return
        # A resumed run passed this check before it started importing: what it finds now may be its own.
        if occupied and not run.resumed:
            raise PermanentError(
                DefinitionsReason.VHOST_NOT_EMPTY,
                f"{where} already holds queues or exchanges; set mode.force to import into it anyway"
                " (the broker was not changed)",
            )
        await run.start(
            DefinitionsReason.IMPORTING,
            f"importing into {where}",
            _edit(source, where, vhost, changes, False),
        )
        await in_thread(api.import_definitions, body, vhost)
    await _succeed(run, spec, source, where, vhost, changes, f"imported into {where}: {summary}")


async def _read_artifact(spec: RestoreSpec, source: SourceArtifact) -> tuple[Definitions, str | None]:
    """The artifact's definitions and vhost, once its stored bytes match its SHA-256."""
    what = f"the definitions of {source.uri}"
    try:
        plaintext, sha256 = await in_thread(read_plaintext, _open(source), source.encryption_key, what)
        expected = source.sha256 if spec.verify.checksum or source.checksum_required else None
        if expected is not None and sha256 != expected:
            raise PermanentError(
                Reason.CHECKSUM_MISMATCH, f"{source.uri} does not match its recorded SHA-256"
            )
        document = await in_thread(decode, plaintext, what)
        return unwrap(document, what)
    except OperationError as error:
        raise PermanentError(error.reason, f"{error.message}; the broker was not changed") from None


def _open(source: SourceArtifact) -> Readable:
    stored = source.stored
    return stored.open("rb") if isinstance(stored, Path) else stored()


async def _succeed(
    run: RestoreRun,
    spec: RestoreSpec,
    source: SourceArtifact,
    where: str,
    vhost: str | None,
    changes: list[DefinitionChanges],
    message: str,
) -> None:
    await run.succeed_with(
        one_line(message, MESSAGE_LIMIT), _edit(source, where, vhost, changes, spec.dry_run)
    )


def _edit(
    source: SourceArtifact, where: str, vhost: str | None, changes: list[DefinitionChanges], dry_run: bool
) -> Callable[[RestoreStatus], None]:
    def imported(status: RestoreStatus) -> None:
        status.target = where
        status.restored_from = RestoredFrom(backup=source.backup, uri=source.uri, sha256=source.sha256)
        status.definitions = DefinitionsImport(broker=where, vhost=vhost, dry_run=dry_run, changes=changes)
        status.verification_summary = "dry run" if dry_run else "checksum only"

    return imported
