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
from dataclasses import dataclass
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
from habitat_operator.errors import PermanentError, one_line

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
    checked = source.sha256 is not None and (spec.verify.checksum or source.checksum_required)
    landing = _Landing(source, api.display, where, vhost, checked)
    async with run.slot(api.display):
        if spec.dry_run:
            await run.start(DefinitionsReason.DRY_RUN, f"planning the import into {where}")
        current = await in_thread(api.export, vhost)
        body, changes, summary, occupied = await in_thread(_prepare, definitions, current)
        occupied = occupied and not spec.mode.force
        if spec.dry_run:
            note = "; a real run would be refused: it holds queues or exchanges (set mode.force)"
            message = f"dry run into {where}: {summary}{note if occupied else ''}"
            await _succeed(run, spec, landing, changes, message)
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
            landing.edit(changes, dry_run=False),
        )
        await in_thread(api.import_definitions, body, vhost)
    await _succeed(run, spec, landing, changes, f"imported into {where}: {summary}")


def _prepare(
    definitions: Definitions, current: Definitions
) -> tuple[Definitions, list[DefinitionChanges], str, bool]:
    """What to post, its plan (and in one line), and whether the broker holds topology; blocking
    (every entry is compared as JSON)."""
    body, skipped = import_body(definitions, current)
    changes = plan(body, current, skipped)
    return body, changes, describe_plan(changes), has_topology(current)


async def _read_artifact(spec: RestoreSpec, source: SourceArtifact) -> tuple[Definitions, str | None]:
    """The artifact's definitions and vhost, once its stored bytes match its SHA-256."""
    what = f"the definitions of {source.uri}"
    try:
        plaintext, sha256 = await in_thread(_read, source, what)
        expected = source.sha256 if spec.verify.checksum or source.checksum_required else None
        if expected is not None and sha256 != expected:
            raise PermanentError(
                Reason.CHECKSUM_MISMATCH, f"{source.uri} does not match its recorded SHA-256"
            )
        document = await in_thread(decode, plaintext, what)
        return unwrap(document, what)
    except PermanentError as error:  # a retryable one (the bucket unreachable) is retried as it is
        raise PermanentError(error.reason, f"{error.message}; the broker was not changed") from None


def _read(source: SourceArtifact, what: str) -> tuple[bytes, str]:
    """Blocking: opening an object of a bucket is a request."""
    stored = source.stored
    raw = stored.open("rb") if isinstance(stored, Path) else stored()
    return read_plaintext(raw, source.encryption_key, what)


@dataclass(frozen=True)
class _Landing:
    """Where the definitions go, as status shows it."""

    source: SourceArtifact
    broker: str
    where: str
    vhost: str | None
    checked: bool  # against its recorded SHA-256

    def edit(self, changes: list[DefinitionChanges], *, dry_run: bool) -> Callable[[RestoreStatus], None]:
        def imported(status: RestoreStatus) -> None:
            status.target = self.where
            status.restored_from = RestoredFrom(
                backup=self.source.backup, uri=self.source.uri, sha256=self.source.sha256
            )
            status.definitions = DefinitionsImport(
                broker=self.broker, vhost=self.vhost, dry_run=dry_run, changes=changes
            )
            checksum = "checksum checked" if self.checked else "checksum not checked"
            status.verification_summary = f"dry run, {checksum}" if dry_run else checksum

        return imported


async def _succeed(
    run: RestoreRun, spec: RestoreSpec, landing: _Landing, changes: list[DefinitionChanges], message: str
) -> None:
    await run.succeed_with(one_line(message, MESSAGE_LIMIT), landing.edit(changes, dry_run=spec.dry_run))
