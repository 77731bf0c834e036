"""Restore: restores once (a Job-like object); with `drill` and `schedule`, drills on a schedule."""

from __future__ import annotations

from habitat_operator.api.restore import RESTORE
from habitat_operator.controllers.restore import metrics, schedule
from habitat_operator.controllers.restore.run import RestoreRun
from habitat_operator.handlers.registration import register_kind

register_kind(
    RESTORE,
    lambda body, shared: RestoreRun(body, shared.config, shared.slots),
    lambda _: schedule.KIND,
    metrics.forget_restore,
)
