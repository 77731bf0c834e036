"""Orphaned drill scratch databases: found on a drill's server and dropped.

Each drill sweeps its target's server before it creates its own scratch database: a scratch database
whose Restore no longer exists (deleted while the operator was down, or mid-drill) is dropped, and
the drill says so in an Event. Only namespaces this operator watches are swept, so an operator that
watches some namespaces never drops another operator's scratch databases.
"""

from __future__ import annotations

import structlog

from habitat_operator.api.restore import RESTORE, RestoreReason
from habitat_operator.config import OperatorConfig
from habitat_operator.controllers.base import kube
from habitat_operator.controllers.restore.engines import RestoreEngines
from habitat_operator.engines.postgres.uri import ConnectionTarget
from habitat_operator.errors import OperationError

log = structlog.get_logger(__name__)


async def sweep_orphans(
    target: ConnectionTarget, config: OperatorConfig, reporter: kube.JsonDict, engines: RestoreEngines
) -> list[str]:
    """Drops the orphaned scratch databases on `target`'s server; returns their names. A sweep that
    fails (the role may not list or drop them) is logged and never fails the drill."""
    dropped = []
    try:
        for found in await engines.scratch.list_scratch_databases(target):
            if config.namespaces and found.namespace not in config.namespaces:
                continue
            owners = await kube.list_objects(RESTORE.plural, found.namespace, "")
            if any(owner["metadata"]["uid"] == found.uid for owner in owners):
                continue
            await engines.restore.drop_database(target.with_database(found.name))
            dropped.append(found.name)
            message = f"dropped scratch database {found.name} of a deleted drill in {found.namespace}"
            log.info("dropped an orphaned scratch database", database=found.name, namespace=found.namespace)
            await kube.event(reporter, "Normal", RestoreReason.SCRATCH_DATABASE_DROPPED, message)
    except OperationError as error:
        log.warning("could not sweep scratch databases", server=target.display, error=error.message)
    return dropped
