"""Recovery objectives (RPO, RTO) and the recoverability the operator measures against them.

A scheduled Backup and a WalArchive set `rpo`: how old the newest recoverable point may be. A
scheduled restore drill sets `rto`: how long a restore, start to verified, may take. Each kind
measures what it can observe itself, so a verdict never waits on another object's watch.
"""

from enum import StrEnum

from pydantic import Field

from habitat_operator.api.common import ApiModel, CelRule, Duration, ScheduledStatus, Timestamp

OBJECTIVES_MET = "ObjectivesMet"  # the condition's type
DRILL_HISTORY = 10


class ObjectivesReason(StrEnum):
    """Reasons of the ObjectivesMet condition."""

    OBJECTIVES_MET = "ObjectivesMet"
    RPO_EXCEEDED = "RPOExceeded"
    RTO_EXCEEDED = "RTOExceeded"
    NO_RECENT_DRILL = "NoRecentDrill"
    NO_DRILL = "NoDrill"


class Objectives(ApiModel):
    """Recovery objectives; at least one."""

    cel_rules = (
        CelRule(
            "has(self.rpo) || has(self.rto)",
            "objectives needs rpo or rto",
            lambda objectives: objectives.rpo is not None or objectives.rto is not None,
        ),
    )

    rpo: Duration | None = Field(
        None, description="Recovery point objective: the newest recoverable point is at most this old."
    )
    rto: Duration | None = Field(
        None, description="Recovery time objective: a drill, from start to verified, takes at most this."
    )


def objectives_rule(kind: str, allowed: str, where: str) -> CelRule:
    """The rule that `kind` accepts only the objective it measures (`allowed`: rpo or rto)."""
    other = "rto" if allowed == "rpo" else "rpo"
    return CelRule(
        f"!has(self.objectives) || !has(self.objectives.{other})",
        f"a {kind} measures objectives.{allowed} only; set objectives.{other} on {where}",
        lambda spec: spec.objectives is None or getattr(spec.objectives, other) is None,
    )


class DrillRun(ApiModel):
    """One successful drill: how long it took and how much it restored."""

    run: str = Field(description="Name of the drill's Restore.")
    completed_at: Timestamp | None = Field(None, description="When it was verified.")
    duration_seconds: float = Field(ge=0, description="Wall time from start to verified.")
    size_bytes: int | None = Field(
        None, ge=0, description="Size of the artifact it restored.", json_schema_extra={"format": "int64"}
    )


class Recoverability(ApiModel):
    """What the operator measured against spec.objectives. `rpo` is as of the last status write
    (the metric habitat_recoverability_rpo_seconds is exact at every scrape)."""

    recovery_point: Timestamp | None = Field(None, description="The newest recoverable point.")
    rpo: str | None = Field(None, description='Live RPO when last written, e.g. "4m12s".')
    rpo_seconds: int | None = Field(None, ge=0, description="Live RPO in seconds when last written.")
    measured_rto: str | None = Field(None, description="Wall time of the newest successful drill.")
    measured_rto_seconds: int | None = Field(
        None, ge=0, description="Wall time of the newest successful drill in seconds."
    )
    restored_size_bytes: int | None = Field(
        None,
        ge=0,
        description="Size of the artifact the newest successful drill restored.",
        json_schema_extra={"format": "int64"},
    )
    last_drill_at: Timestamp | None = Field(None, description="When the newest successful drill finished.")
    objectives_met: bool | None = Field(None, description="Whether every objective holds.")
    drills: list[DrillRun] | None = Field(
        None, max_length=DRILL_HISTORY, description="The newest successful drills, newest first."
    )


class RecoverableScheduleStatus(ScheduledStatus):
    """Status of a schedule that may have objectives: a scheduled Backup, a drill schedule."""

    recoverability: Recoverability | None = Field(
        None, description="What the operator measured against spec.objectives."
    )
