"""ReplayJob: a one-shot run (with suspend); it has no schedule."""

from __future__ import annotations

from habitat_operator.api.replayjob import REPLAYJOB
from habitat_operator.controllers.replayjob import metrics
from habitat_operator.controllers.replayjob.run import ReplayRun
from habitat_operator.handlers.registration import register_kind

register_kind(
    REPLAYJOB,
    lambda body, memo: ReplayRun(body, memo.config, memo.slots),
    None,
    metrics.forget_replayjob,
)
