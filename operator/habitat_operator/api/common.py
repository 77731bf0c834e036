"""Building blocks shared by every kind: the base model, CEL rules, references, status and KindInfo."""

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal, Self

from croniter import croniter
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    PlainSerializer,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

from habitat_operator.durations import DURATION_PATTERN, parse_duration
from habitat_operator.timestamps import rfc3339

GROUP = "ops.habitat.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

VALIDATIONS_KEY = "x-kubernetes-validations"


def qualified(name: str) -> str:
    """A label, annotation or finalizer key under the operator's own group."""
    return f"{GROUP}/{name}"


SCHEDULE_LABEL = qualified("schedule")
SCHEDULED_AT_ANNOTATION = qualified("scheduled-at")


@dataclass(frozen=True)
class CelRule:
    """An `x-kubernetes-validations` rule and the same check in Python, kept side by side.

    The apiserver enforces `rule` at apply time; `check` makes `model_validate` agree with it.
    Put instances in a model's `cel_rules` (check gets the model) or in a field's `Annotated[...]`
    (check gets the field value).
    """

    rule: str
    message: str
    check: Callable[[Any], bool] = field(compare=False)

    def as_schema(self) -> dict[str, str]:
        return {"rule": self.rule, "message": self.message}

    def _validate(self, value: Any) -> Any:
        if not self.check(value):
            raise ValueError(self.message)
        return value

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_after_validator_function(self._validate, handler(source))

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        json_schema.setdefault(VALIDATIONS_KEY, []).append(self.as_schema())
        return json_schema


def _by_alias(model: BaseModel, alias: str) -> Any:
    """A field's value by its wire name (the camelCase one in CEL rules)."""
    fields = type(model).model_fields
    return next(getattr(model, name) for name, info in fields.items() if info.alias == alias)


def exactly_one_of(what: str, *fields: str) -> CelRule:
    """The rule that `what` sets exactly one of `fields` (their camelCase names), for the apiserver
    and for Python alike."""
    listed = f"{', '.join(fields[:-1])} or {fields[-1]}"
    present = " + ".join(f"(has(self.{name}) ? 1 : 0)" for name in fields)
    return CelRule(
        f"{present} == 1",
        f"{what} needs exactly one of {listed}",
        lambda model: sum(_by_alias(model, name) is not None for name in fields) == 1,
    )


@dataclass(frozen=True)
class TransitionRule:
    """An `x-kubernetes-validations` rule on an update (it reads `oldSelf`) and the same check in Python.

    The apiserver enforces `rule` only when an object is updated, never on create. Python never sees
    the old object in `model_validate`, so `check(old, new)` runs only through `ApiModel.check_update`.
    Put instances in a model's `cel_rules`, next to its CelRules.
    """

    rule: str
    message: str
    check: Callable[[Any, Any], bool] = field(compare=False)

    def as_schema(self) -> dict[str, str]:
        return {"rule": self.rule, "message": self.message}


def one_shot_spec_rules(kind: str) -> tuple[TransitionRule, TransitionRule]:
    """A one-shot object's spec (one without `schedule`) is immutable, like a Job's template.

    A schedule stays editable, but an edit cannot turn one kind of object into the other:
    together the two rules are `has(oldSelf.schedule) && has(self.schedule) || self == oldSelf`.
    """
    return (
        TransitionRule(
            "has(oldSelf.schedule) || self == oldSelf",
            f"spec of a one-shot {kind} is immutable; create a new {kind} to run again",
            lambda old, new: old.schedule is not None or new == old,
        ),
        TransitionRule(
            "!has(oldSelf.schedule) || has(self.schedule)",
            f"schedule cannot be removed from a scheduled {kind}; create a one-shot {kind} instead",
            lambda old, new: old.schedule is None or new.schedule is not None,
        ),
    )


def _add_model_rules(schema: dict[str, Any], cls: type) -> None:
    rules: tuple[CelRule | TransitionRule, ...] = getattr(cls, "cel_rules", ())
    if rules:
        schema[VALIDATIONS_KEY] = [rule.as_schema() for rule in rules]


class ApiModel(BaseModel):
    """Base of every CRD model: snake_case in Python, camelCase on the wire, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        json_schema_extra=_add_model_rules,
    )

    # Cross-field rules; emitted as x-kubernetes-validations on this object's schema.
    cel_rules: ClassVar[tuple[CelRule | TransitionRule, ...]] = ()

    @model_validator(mode="after")
    def _check_cel_rules(self) -> Self:
        for rule in self.cel_rules:
            if isinstance(rule, CelRule):
                rule._validate(self)
        return self

    def check_update(self, old: Self) -> None:
        """Raise ValueError as the apiserver refuses an update from `old` to this (transition rules)."""
        for rule in self.cel_rules:
            if isinstance(rule, TransitionRule) and not rule.check(old, self):
                raise ValueError(rule.message)


def _check_duration(text: str) -> str:
    parse_duration(text)  # the pattern already matched; this rejects values too large for a timedelta
    return text


Duration = Annotated[str, Field(pattern=DURATION_PATTERN, max_length=32), AfterValidator(_check_duration)]
"""A duration such as "90s", "15m", "1h30m", "7d"; turn it into a timedelta with parse_duration()."""

Timestamp = Annotated[datetime, PlainSerializer(rfc3339, return_type=str, when_used="json")]
"""A point in time, RFC 3339 on the wire (UTC, whole seconds, like Kubernetes' own timestamps)."""

DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
SECRET_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"

# Five cron fields or a macro; croniter then checks the values (the apiserver cannot).
CRON_PATTERN = (
    r"^(@(yearly|annually|monthly|weekly|daily|hourly)"
    r"|[0-9*/,A-Za-z?-]+([ \t]+[0-9*/,A-Za-z?-]+){4})$"
)


def _check_cron(expression: str) -> str:
    if not croniter.is_valid(expression):
        raise ValueError(f"invalid cron expression {expression!r}")
    return expression


CronSchedule = Annotated[str, Field(pattern=CRON_PATTERN, max_length=256), AfterValidator(_check_cron)]


SecretName = Annotated[
    str,
    Field(
        pattern=DNS_SUBDOMAIN_PATTERN, max_length=253, description="Name of a Secret in the same namespace."
    ),
]


class SecretKeyRef(ApiModel):
    """A key of a Secret in the resource's namespace."""

    name: SecretName
    key: str = Field(
        "uri",
        pattern=SECRET_KEY_PATTERN,
        max_length=253,
        description="Key within the Secret whose value is a libpq connection URI.",
    )


class EncryptionKeySecretRef(SecretKeyRef):
    """A key of a Secret in the resource's namespace holding an encryption key."""

    key: str = Field(
        "key",
        pattern=SECRET_KEY_PATTERN,
        max_length=253,
        description="Key within the Secret whose value is the encryption key.",
    )


class DatabaseRef(ApiModel):
    """Which PostgreSQL database to work on."""

    secret_ref: SecretKeyRef = Field(
        description="Secret key holding a libpq URI (postgresql://user:password@host:port/dbname)."
    )


class Phase(StrEnum):
    """Coarse lifecycle state shown by `kubectl get`."""

    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SCHEDULED = "Scheduled"
    SUSPENDED = "Suspended"
    # A convergent kind (Migration): at its target, or its plan reported.
    READY = "Ready"
    PLANNED = "Planned"


class RetryPolicy(ApiModel):
    """How often to retry a failed run before giving up."""

    limit: int = Field(3, ge=0, le=20, description="Retries after the first failed attempt.")
    backoff: Duration = Field("30s", description="Wait before the first retry; doubles with each retry.")


class Reason(StrEnum):
    """Condition and Event reasons that every kind may report; each kind adds its own enum."""

    SUCCEEDED = "Succeeded"
    STARTED = "Started"
    INTERRUPTED = "Interrupted"
    UNEXPECTED_ERROR = "UnexpectedError"
    INVALID_SPEC = "InvalidSpec"
    INVALID_REQUEST = "InvalidRequest"
    INVALID_SCHEDULE = "InvalidSchedule"
    SECRET_NOT_FOUND = "SecretNotFound"
    SECRET_KEY_NOT_FOUND = "SecretKeyNotFound"
    SECRET_FORBIDDEN = "SecretForbidden"
    SECRET_NOT_TEXT = "SecretNotText"
    INVALID_CONNECTION_URI = "InvalidConnectionUri"
    DATABASE_UNREACHABLE = "DatabaseUnreachable"
    DATABASE_NOT_FOUND = "DatabaseNotFound"
    AUTHENTICATION_FAILED = "AuthenticationFailed"
    WAITING_FOR_LOCK = "WaitingForLock"
    LOCK_TIMEOUT = "LockTimeout"
    QUEUED = "Queued"
    CANCELLED = "Cancelled"
    TOOL_MISSING = "ToolMissing"
    TIMEOUT = "Timeout"
    DISK_FULL = "DiskFull"
    INVALID_ARTIFACT_PATH = "InvalidArtifactPath"
    ARTIFACT_NOT_FOUND = "ArtifactNotFound"
    CHECKSUM_MISMATCH = "ChecksumMismatch"
    VERIFICATION_FAILED = "VerificationFailed"
    ENCRYPTION_FAILED = "EncryptionFailed"
    ENCRYPTION_UNSUPPORTED = "EncryptionUnsupported"
    DECRYPTION_FAILED = "DecryptionFailed"
    KEY_INVALID = "KeyInvalid"
    KEY_NOT_FOUND = "KeyNotFound"
    STORAGE_AUTH_FAILED = "StorageAuthFailed"
    BUCKET_NOT_FOUND = "BucketNotFound"
    STORAGE_UNREACHABLE = "StorageUnreachable"
    STORAGE_FAILED = "StorageFailed"
    # A schedule's own reasons.
    SCHEDULED = "Scheduled"
    SUSPENDED = "Suspended"
    LAST_RUN_FAILED = "LastRunFailed"
    RUN_CREATED = "RunCreated"
    RUN_SKIPPED = "RunSkipped"


class Condition(ApiModel):
    """One observation of the resource's state, in the shape of metav1.Condition."""

    type: str = Field(max_length=316, description="Type of the condition: Ready, Reconciling or Stalled.")
    status: Literal["True", "False", "Unknown"] = Field(description="Status of the condition.")
    reason: str | None = Field(None, max_length=1024, description="CamelCase reason for the last transition.")
    message: str | None = Field(None, max_length=32768, description="Human-readable detail, one line.")
    last_transition_time: Timestamp | None = Field(
        None, description="When the status last changed (RFC 3339)."
    )
    observed_generation: int | None = Field(
        None, ge=0, description="metadata.generation the condition was computed from."
    )


class ResourceStatus(ApiModel):
    """Status fields every kind has; each kind's status model extends this."""

    phase: Phase | None = Field(None, description="Coarse lifecycle state.")
    observed_generation: int | None = Field(
        None, ge=0, description="metadata.generation the operator last acted on."
    )
    conditions: list[Condition] | None = Field(
        None,
        description="Ready, Reconciling and Stalled conditions (kstatus conventions).",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )


class RunStatus(ResourceStatus):
    """Status of a kind whose objects run once, like a Job (a backup, a restore)."""

    started_at: Timestamp | None = Field(None, description="When the current or last run started.")
    completed_at: Timestamp | None = Field(None, description="When the last run finished.")
    attempts: int | None = Field(None, ge=0, description="Attempts made by the current or last run.")
    message: str | None = Field(None, description="Last failure, one line.")
    duration: str | None = Field(None, description="Wall time of the last run, as kubectl shows durations.")


class ScheduledStatus(RunStatus):
    """Status of a kind that can also run on a schedule, one child object per run (controllers/scheduling)."""

    last_schedule_time: Timestamp | None = Field(None, description="When the schedule last started a run.")
    next_schedule_time: Timestamp | None = Field(None, description="When the schedule starts the next run.")
    last_successful_time: Timestamp | None = Field(None, description="When a run last succeeded.")
    missed_runs: int | None = Field(
        None, ge=0, description="Scheduled runs skipped (operator down, or a run still active)."
    )
    recent_runs: list[str] | None = Field(
        None, max_length=100, description="Names of the schedule's recent runs (child objects), newest first."
    )
    active_run: str | None = Field(None, description="Name of the run now active, if any.")


@dataclass(frozen=True)
class PrinterColumn:
    """A column of `kubectl get`; priority 1 shows only with `-o wide`."""

    name: str
    json_path: str
    type: Literal["string", "integer", "number", "boolean", "date"] = "string"
    priority: int = 0


@dataclass(frozen=True)
class KindInfo:
    """Everything needed to generate a kind's CRD; each kind's module defines one."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    printer_columns: tuple[PrinterColumn, ...]
    spec_model: type[ApiModel]
    status_model: type[ResourceStatus]
    description: str
    categories: tuple[str, ...] = ("habitat",)

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"
