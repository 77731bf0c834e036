"""ScalePolicy: scales a Deployment or StatefulSet from queue depth, Prometheus queries and schedules.

The anchors are KEDA's ScaledObject and the HPA v2 `behavior`; what they lack is here too: min and
max that vary by time of day (schedule triggers), a fallback that never scales down on a missing
metric, and replicas written as the field manager `habitat-operator` so that GitOps tools leave them.
"""

from enum import StrEnum
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field

from habitat_operator.api.common import (
    DNS_SUBDOMAIN_PATTERN,
    SECRET_KEY_PATTERN,
    ApiModel,
    CelRule,
    CronSchedule,
    Duration,
    KindInfo,
    PrinterColumn,
    ResourceStatus,
    SecretKeyRef,
    Timestamp,
)

# A trigger's name is a variable of the formula, so it is an identifier.
TRIGGER_NAME_PATTERN = r"^[a-z_][a-z0-9_]{0,62}$"
# What a formula may contain; the operator's parser (controllers/scalepolicy/formula.py) does the rest.
FORMULA_PATTERN = r"^[a-z0-9_+*/(). -]+$"
MAX_REPLICAS = 10_000


class ScalePolicyReason(StrEnum):
    """Condition and Event reasons of ScalePolicy's own; the shared ones are in `Reason`."""

    TARGET_FOUND = "TargetFound"
    TARGET_NOT_FOUND = "TargetNotFound"
    TARGET_FORBIDDEN = "TargetForbidden"
    SOURCE_UNAVAILABLE = "SourceUnavailable"
    PROMETHEUS_UNREACHABLE = "PrometheusUnreachable"
    PROMETHEUS_BAD_RESPONSE = "PrometheusBadResponse"
    QUERY_NOT_ONE_SAMPLE = "QueryNotOneSample"
    CONFLICT = "Conflict"
    CONFLICT_WITH_HPA = "ConflictWithHPA"
    SCALED = "Scaled"
    TRIGGER_ACTIVE = "TriggerActive"
    WINDOW_OPEN = "WindowOpen"
    NO_TRIGGER_ACTIVE = "NoTriggerActive"
    AT_MAXIMUM = "AtMaximum"
    AT_MINIMUM = "AtMinimum"
    RATE_LIMITED = "RateLimited"
    WITHIN_LIMITS = "WithinLimits"
    TRIGGER_FAILING = "TriggerFailing"
    METRICS_AVAILABLE = "MetricsAvailable"
    PAUSED = "Paused"
    DRY_RUN = "DryRun"
    NOT_PAUSED = "NotPaused"


class ScalePhase(StrEnum):
    """Coarse state shown by `kubectl get`; it follows configuration, not metric values."""

    PENDING = "Pending"
    READY = "Ready"
    PAUSED = "Paused"
    STALLED = "Stalled"


class TargetKind(StrEnum):
    DEPLOYMENT = "Deployment"
    STATEFULSET = "StatefulSet"


class ScaleTarget(ApiModel):
    """The workload to scale, in the policy's namespace."""

    api_version: str = Field(
        "apps/v1", pattern=r"^apps/v1$", description="API version of the target: apps/v1."
    )
    kind: TargetKind = Field(description="Deployment or StatefulSet.")
    name: str = Field(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253, description="Name of the target.")


class QueueSource(StrEnum):
    """How a rabbitmq trigger reads queue depth."""

    MANAGEMENT = "management"
    AMQP = "amqp"


class RabbitMQSecretRef(SecretKeyRef):
    """A key of a Secret in the policy's namespace holding how to reach RabbitMQ."""

    key: str = Field(
        "uri",
        pattern=SECRET_KEY_PATTERN,
        max_length=253,
        description=(
            "Key within the Secret whose value is the management API's URL or, for source amqp, an AMQP URI."
        ),
    )


class RabbitMQTrigger(ApiModel):
    """Replicas from a queue's depth: ceil(depth / targetPerReplica)."""

    queue: str = Field(min_length=1, max_length=255, description="Name of the queue.")
    target_per_replica: int = Field(ge=1, description="Messages one replica is expected to handle.")
    activation_threshold: int = Field(
        0, ge=0, description="Depth above which the trigger is active (scales from zero)."
    )
    source: QueueSource = Field(
        QueueSource.MANAGEMENT,
        description=(
            "management (the default): the management API's ready plus unacknowledged messages, so "
            "workers busy with prefetched messages still count; amqp: a passive queue declare, ready "
            "messages only."
        ),
    )
    vhost: str = Field("/", max_length=255, description="Virtual host of the queue (management source).")
    secret_ref: RabbitMQSecretRef = Field(
        description=(
            "Secret key holding the management API's URL (http://user:password@host:15672/api) or, "
            "for source amqp, an AMQP URI."
        )
    )


class PrometheusTrigger(ApiModel):
    """Replicas from a PromQL query's single sample: ceil(value / targetValue)."""

    server_address: str = Field(
        pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$",
        max_length=2048,
        description="Base URL of the Prometheus server, e.g. http://prometheus.monitoring:9090.",
    )
    query: str = Field(min_length=1, max_length=4096, description="PromQL that returns exactly one sample.")
    target_value: float = Field(gt=0, description="Value one replica is expected to handle; > 0.")
    activation_threshold: float = Field(0, ge=0, description="Value above which the trigger is active.")


def _is_timezone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


# CEL's timestamp functions refuse an unknown IANA zone, so the apiserver refuses it at apply time.
Timezone = Annotated[
    str,
    Field(max_length=64, pattern=r"^[A-Za-z0-9_+/-]+$"),
    CelRule(
        "timestamp('2000-01-01T00:00:00Z').getHours(self) >= 0",
        "timezone must be an IANA time zone such as Europe/Paris or UTC",
        _is_timezone,
    ),
]


class ScheduleTrigger(ApiModel):
    """A window that raises the floor (and may move the ceiling) while it is open."""

    cel_rules = (
        CelRule(
            "!has(self.maxReplicas) || self.minReplicas <= self.maxReplicas",
            "schedule minReplicas must not exceed its maxReplicas",
            lambda s: s.max_replicas is None or s.min_replicas <= s.max_replicas,
        ),
    )

    start: CronSchedule = Field(description='Cron expression of the window\'s start, e.g. "0 0 28 * *".')
    duration: Duration = Field(description="How long the window stays open, e.g. 5d.")
    timezone: Timezone = Field("UTC", description="IANA time zone of the cron expression.")
    min_replicas: int = Field(ge=0, le=MAX_REPLICAS, description="At least this many replicas while open.")
    max_replicas: int | None = Field(
        None,
        ge=1,
        le=MAX_REPLICAS,
        description="At most this many replicas while open (replaces the spec's).",
    )


class TriggerType(StrEnum):
    RABBITMQ = "rabbitmq"
    PROMETHEUS = "prometheus"
    SCHEDULE = "schedule"


class Trigger(ApiModel):
    """One source of a replica count; the policy takes the largest over its triggers."""

    cel_rules = (
        CelRule(
            "(self.type == 'rabbitmq') == has(self.rabbitmq) && (self.type == 'prometheus') == "
            "has(self.prometheus) && (self.type == 'schedule') == has(self.schedule)",
            "a trigger sets exactly the field named by its type",
            lambda t: {t.type.value} == {k for k in TriggerType if getattr(t, k.value) is not None},
        ),
    )

    name: str = Field(pattern=TRIGGER_NAME_PATTERN, description="Name of the trigger, used in the formula.")
    type: TriggerType = Field(description="rabbitmq, prometheus or schedule.")
    rabbitmq: RabbitMQTrigger | None = Field(None, description="Queue depth (type rabbitmq).")
    prometheus: PrometheusTrigger | None = Field(None, description="A PromQL query (type prometheus).")
    schedule: ScheduleTrigger | None = Field(None, description="A time window (type schedule).")


class Formula(ApiModel):
    """Combines the metric triggers' values (KEDA's scaling modifiers): replicas = ceil(value / target)."""

    expression: str = Field(
        min_length=1,
        max_length=512,
        pattern=FORMULA_PATTERN,
        description="Arithmetic over trigger names (+ - * / and parentheses), e.g. queue_a + queue_b / 2.",
    )
    target: float = Field(gt=0, description="Value one replica is expected to handle; > 0.")
    activation_threshold: float = Field(0, ge=0, description="Value above which the formula is active.")


class PolicyType(StrEnum):
    PODS = "Pods"
    PERCENT = "Percent"


class SelectPolicy(StrEnum):
    MAX = "Max"
    MIN = "Min"
    DISABLED = "Disabled"


class ScalingPolicy(ApiModel):
    """At most `value` pods, or `value` percent, of change per `periodSeconds`."""

    type: PolicyType = Field(description="Pods or Percent.")
    value: int = Field(ge=1, description="Pods or percent allowed per period.")
    period_seconds: int = Field(ge=1, le=1800, description="Length of the period.")


class ScalingRules(ApiModel):
    """The HPA's scaling rules for one direction."""

    stabilization_window_seconds: int | None = Field(
        None,
        ge=0,
        le=3600,
        description="Use the most cautious recommendation of this window (default: up 0, down 300).",
    )
    select_policy: SelectPolicy = Field(
        SelectPolicy.MAX, description="Max: the policy allowing the most change; Min: the least; Disabled."
    )
    policies: list[ScalingPolicy] | None = Field(
        None,
        max_length=10,
        description="Rate limits (default: up 100% or 4 pods per 15s, down 100% per 15s).",
    )


class Behavior(ApiModel):
    """How fast the target may move, with the HPA v2 semantics."""

    scale_up: ScalingRules | None = Field(None, description="Rules when adding replicas.")
    scale_down: ScalingRules | None = Field(None, description="Rules when removing replicas.")


class Fallback(ApiModel):
    """What to hold while a trigger's source keeps failing."""

    replicas: int = Field(ge=0, le=MAX_REPLICAS, description="Hold at least this many replicas.")
    failure_threshold: int = Field(
        3, ge=1, le=100, description="Consecutive failed polls before falling back."
    )


class ScalePolicySpec(ApiModel):
    """Desired scaling: the target, its bounds, the triggers and how fast to move."""

    cel_rules = (
        CelRule(
            "self.minReplicas <= self.maxReplicas",
            "minReplicas must not exceed maxReplicas",
            lambda spec: spec.min_replicas <= spec.max_replicas,
        ),
        CelRule(
            "!has(self.formula) || self.triggers.exists(t, t.type != 'schedule')",
            "a formula needs at least one rabbitmq or prometheus trigger",
            lambda spec: (
                spec.formula is None or any(t.type is not TriggerType.SCHEDULE for t in spec.triggers)
            ),
        ),
    )

    target: ScaleTarget = Field(description="The Deployment or StatefulSet to scale.")
    min_replicas: int = Field(1, ge=0, le=MAX_REPLICAS, description="Floor; 0 scales to zero when idle.")
    max_replicas: int = Field(ge=1, le=MAX_REPLICAS, description="Ceiling.")
    triggers: list[Trigger] = Field(
        min_length=1,
        max_length=20,
        description="Sources of replica counts; the largest wins.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    formula: Formula | None = Field(None, description="Combine the metric triggers into one value.")
    behavior: Behavior | None = Field(None, description="Stabilization windows and rate limits.")
    polling_interval: int = Field(30, ge=1, le=3600, description="Seconds between two polls of the triggers.")
    cooldown_period: int = Field(
        300, ge=0, le=86400, description="Seconds without an active trigger before scaling to zero."
    )
    fallback: Fallback | None = Field(None, description="Replicas to hold while a trigger keeps failing.")
    paused: bool = Field(False, description="Change nothing and poll nothing.")
    dry_run: bool = Field(False, description="Compute and report the decision, change nothing.")


class Decision(ApiModel):
    """The last change of the desired count, and why."""

    replicas: int | None = Field(None, ge=0, description="Desired replicas decided.")
    trigger: str | None = Field(None, description="The trigger (or formula) that decided.")
    value: float | None = Field(None, description="Its value at the time.")
    reason: str | None = Field(None, description="The decision in one line.")


class ScalePolicyStatus(ResourceStatus):
    """Observed state; metric values go to metrics, so status changes only when a decision does."""

    phase: ScalePhase | None = Field(None, description="Pending, Ready, Paused or Stalled.")  # type: ignore[assignment]
    desired_replicas: int | None = Field(None, ge=0, description="Replicas the policy wants now.")
    current_replicas: int | None = Field(None, ge=0, description="The target's spec.replicas.")
    last_scale_time: Timestamp | None = Field(None, description="When the policy last changed the target.")
    last_decision: Decision | None = Field(None, description="The last change of the desired count.")


SCALE_POLICY = KindInfo(
    kind="ScalePolicy",
    plural="scalepolicies",
    singular="scalepolicy",
    short_names=("hsp", "hscale"),
    printer_columns=(
        PrinterColumn("Target", ".spec.target.name"),
        PrinterColumn("Min", ".spec.minReplicas", type="integer"),
        PrinterColumn("Max", ".spec.maxReplicas", type="integer"),
        PrinterColumn("Desired", ".status.desiredReplicas", type="integer"),
        PrinterColumn("Current", ".status.currentReplicas", type="integer"),
        PrinterColumn("Active", '.status.conditions[?(@.type=="Active")].status'),
        PrinterColumn("Phase", ".status.phase", priority=1),
        PrinterColumn("Age", ".metadata.creationTimestamp", type="date"),
    ),
    spec_model=ScalePolicySpec,
    status_model=ScalePolicyStatus,
    description=(
        "ScalePolicy scales a Deployment or StatefulSet from RabbitMQ queue depth, Prometheus queries "
        "and schedules, with HPA-style stabilization and rate limits and a fallback on metric outages."
    ),
)
