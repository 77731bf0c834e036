"""WalArchive: a convergent kind whose daemon streams for as long as the object exists.

Every WalArchive has a daemon (and so Kopf's finalizer): it looks every `partialUploadInterval`,
and its receiver lives in the `Streams` of the memo's `Shared` between looks. Whatever ends the
daemon stops the receiver; a deletion also drops the slot (docs/pitr.md). With peering, only the
active replica runs daemons: a standby that takes over resumes from the slot.
"""

from __future__ import annotations

from typing import Any

import kopf

from habitat_operator.api import GROUP, VERSION
from habitat_operator.api.walarchive import WAL_ARCHIVE
from habitat_operator.controllers.walarchive.run import WalArchiveRun
from habitat_operator.handlers.common import wake, wakes_a_daemon
from habitat_operator.handlers.driver import drive, shared


# Cancelled when the operator stops or the object goes: the receiver is stopped, a base backup in
# flight killed (it leaves no entry, so nothing half-made is listed).
@kopf.daemon(GROUP, VERSION, WAL_ARCHIVE.plural, id="stream", cancellation_timeout=60)
async def stream(body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, **_: Any) -> None:
    state = shared(memo)

    def run_for(latest: dict[str, Any]) -> WalArchiveRun:
        return WalArchiveRun(latest, state.config, state.slots, state.streams)

    try:
        await drive(WAL_ARCHIVE.kind, body, stopped, run_for, state.wakeups)
    finally:
        deleted = bool(stopped.reason and stopped.reason & kopf.DaemonStoppingReason.RESOURCE_DELETED)
        await run_for(dict(body)).forget(deleted)


@kopf.on.event(GROUP, VERSION, WAL_ARCHIVE.plural, id="wake_on_spec_change", when=wakes_a_daemon)
async def spec_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    wake(body, memo)


@kopf.on.cleanup(id="stop_wal_receivers")
async def stop_receivers(memo: kopf.Memo, **_: Any) -> None:
    """The operator stops: any receiver still running stops; every slot stays."""
    await shared(memo).streams.close_all()
