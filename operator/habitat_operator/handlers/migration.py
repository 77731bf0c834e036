"""Migration: a convergent kind. One daemon per object looks again when its spec changes or a
ConfigMap it reads changes (found through an index of the Migrations' ConfigMap references, kept
from the watch, not by polling), and hourly otherwise.

Every Migration has a daemon, and so Kopf's finalizer, even Ready and unchanged: its hourly look is
what finds drift (a version applied or removed by hand, a changed checksum) and a ConfigMap edit
that no watch event of the Migration itself announces (docs/troubleshooting.md)."""

from __future__ import annotations

from typing import Any

import kopf

from habitat_operator.api import GROUP, VERSION
from habitat_operator.api.migration import MIGRATION
from habitat_operator.controllers.migration import metrics
from habitat_operator.controllers.migration.run import MigrationRun
from habitat_operator.handlers.common import is_gone_with_its_series, wake, wakes_a_daemon
from habitat_operator.handlers.driver import drive, shared

ConfigMapKey = tuple[str, str]  # (namespace, name)
INDEX = "migrations_by_config_map"  # Kopf passes the index to handlers and filters under its id


@kopf.index(GROUP, VERSION, MIGRATION.plural, id=INDEX)
async def by_config_map(body: kopf.Body, **_: Any) -> dict[ConfigMapKey, str]:
    """Each Migration under every ConfigMap of its own namespace that it reads."""
    namespace, uid = body["metadata"]["namespace"], body["metadata"]["uid"]
    refs = (body.get("spec") or {}).get("source", {}).get("configMapRefs") or []
    return {(namespace, ref["name"]): uid for ref in refs if isinstance(ref, dict) and "name" in ref}


def _readers(body: kopf.Body, index: kopf.Index[ConfigMapKey, str]) -> list[str]:
    return list(index.get((body["metadata"]["namespace"], body["metadata"]["name"]), ()))


def is_read_by_a_migration(body: kopf.Body, **kwargs: Any) -> bool:
    return bool(_readers(body, kwargs[INDEX]))


@kopf.on.event("", "v1", "configmaps", id="wake_migrations", when=is_read_by_a_migration)
async def config_map_changed(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    for uid in _readers(body, kwargs[INDEX]):
        shared(memo).wakeups.wake(uid)


# Cancelled at once when the operator stops or the object goes: a migration's transaction rolls back
# with its session, and a no-transaction one is left dirty for the user to resolve, as after a kill.
@kopf.daemon(GROUP, VERSION, MIGRATION.plural, id="converge", cancellation_timeout=60)
async def converge(body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, **_: Any) -> None:
    state = shared(memo)

    def run_for(latest: dict[str, Any]) -> MigrationRun:
        return MigrationRun(latest, state.config, state.slots)

    await drive(MIGRATION.kind, body, stopped, run_for, state.wakeups)


@kopf.on.event(GROUP, VERSION, MIGRATION.plural, id="wake_on_spec_change", when=wakes_a_daemon)
async def spec_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    wake(body, memo)


@kopf.on.event(GROUP, VERSION, MIGRATION.plural, id="forget", when=is_gone_with_its_series)
async def forget_series(body: kopf.Body, **_: Any) -> None:
    metrics.forget_migration(body["metadata"]["namespace"], body["metadata"]["name"])
