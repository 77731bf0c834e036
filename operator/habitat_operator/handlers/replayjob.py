"""ReplayJob: a one-shot run (with suspend); it has no schedule."""

from __future__ import annotations

from typing import Any

import kopf

from habitat_operator.api import GROUP, VERSION
from habitat_operator.api.replayjob import REPLAYJOB
from habitat_operator.controllers.replayjob import metrics
from habitat_operator.controllers.replayjob.run import ReplayRun, restore_metrics
from habitat_operator.handlers.registration import register_kind

register_kind(
    REPLAYJOB,
    lambda body, shared: ReplayRun(body, shared.config, shared.slots),
    None,
    metrics.forget_replayjob,
)


@kopf.on.resume(GROUP, VERSION, REPLAYJOB.plural)
async def resume_metrics(body: kopf.Body, **_: Any) -> None:
    """After a restart, a replay's progress and event counts come back from its status."""
    restore_metrics(dict(body))
