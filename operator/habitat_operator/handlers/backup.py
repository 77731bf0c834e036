"""Backup: a one-shot run (no schedule) or a schedule that creates one child Backup per run."""

from __future__ import annotations

from typing import Any

import kopf

from habitat_operator.api import GROUP, VERSION
from habitat_operator.api.backup import BACKUP
from habitat_operator.controllers.backup import metrics, schedule
from habitat_operator.controllers.backup.run import BackupRun, restore_metrics
from habitat_operator.handlers.common import is_one_shot
from habitat_operator.handlers.registration import register_kind

register_kind(
    BACKUP,
    lambda body, shared: BackupRun(body, shared.config, shared.slots),
    lambda shared: schedule.kind(shared.config),
    metrics.forget_backup,
)


@kopf.on.resume(GROUP, VERSION, BACKUP.plural, when=is_one_shot)
async def resume_metrics(body: kopf.Body, **_: Any) -> None:
    """After a restart, the gauges of finished Backups come back from their status."""
    restore_metrics(dict(body))
