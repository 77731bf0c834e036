"""RabbitMQ definitions as a Backup exports them and a Restore imports them: exchanges, queues,
bindings, policies, parameters, vhosts, users and permissions, through the management API."""

from enum import StrEnum
from typing import Annotated

from pydantic import Field

from habitat_operator.api.common import SECRET_KEY_PATTERN, ApiModel, CelRule, SecretKeyRef

MAX_CHANGED_NAMES = 20  # per type, in a dry run's status and Event


class ArtifactKind(StrEnum):
    """What an artifact holds, so that a Restore never feeds one kind to the other's target."""

    DATABASE = "database"
    RABBITMQ_DEFINITIONS = "rabbitmqDefinitions"


class DefinitionsReason(StrEnum):
    """Condition and Event reasons of definitions backups and restores."""

    EXPORTING = "ExportingDefinitions"
    IMPORTING = "ImportingDefinitions"
    DRY_RUN = "DryRun"
    BROKER_UNAVAILABLE = "BrokerUnavailable"
    BROKER_REFUSED = "BrokerRefused"
    DEFINITIONS_TOO_LARGE = "DefinitionsTooLarge"
    VHOST_NOT_EMPTY = "VhostNotEmpty"
    ARTIFACT_KIND_MISMATCH = "ArtifactKindMismatch"
    ENDPOINT_NOT_ALLOWED = "EndpointNotAllowed"


class ManagementSecretRef(SecretKeyRef):
    """A key of a Secret in the resource's namespace holding the management API's URL."""

    key: str = Field(
        "uri",
        pattern=SECRET_KEY_PATTERN,
        max_length=253,
        description=(
            "Key within the Secret whose value is the management API's URL with its credentials, "
            "http://user:password@host:15672/api (the same value ScalePolicy's management source reads)."
        ),
    )


Vhost = Annotated[str, Field(min_length=1, max_length=255)]


class RabbitMQDefinitionsSource(ApiModel):
    """A broker whose definitions a Backup exports (GET /api/definitions, or /api/definitions/<vhost>)."""

    cel_rules = (
        CelRule(
            "!has(self.vhost) || !has(self.includeUsers) || !self.includeUsers",
            "includeUsers needs the whole broker's definitions (no vhost)",
            lambda source: source.vhost is None or not source.include_users,
        ),
    )

    management_secret_ref: ManagementSecretRef = Field(
        description="Secret key holding the management API's URL (http://user:password@host:15672/api)."
    )
    vhost: Vhost | None = Field(
        None,
        description=(
            "Export one virtual host's exchanges, queues, bindings, policies and parameters; without it "
            "the whole broker's, vhosts, users and permissions included."
        ),
    )
    include_users: bool = Field(
        False,
        description=(
            "Keep the users' password hashes in the artifact. Without it users are exported without "
            "their hashes, and a Restore leaves users it has no hash for as they are."
        ),
    )


class RabbitMQTarget(ApiModel):
    """A broker a Restore imports definitions into (POST /api/definitions[/<vhost>])."""

    management_secret_ref: ManagementSecretRef = Field(
        description="Secret key holding the management API's URL (http://user:password@host:15672/api)."
    )


class DefinitionChanges(ApiModel):
    """What an import changes of one type of definition (exchanges, queues, ...)."""

    type: str = Field(max_length=64, description="Type of definition, e.g. exchanges.")
    create: int = Field(0, ge=0, description="Definitions the broker does not have yet.")
    update: int = Field(0, ge=0, description="Definitions the broker has with other properties.")
    unchanged: int = Field(0, ge=0, description="Definitions the broker has as they are.")
    skipped: int = Field(
        0, ge=0, description="Definitions left out: users without a password hash, their permissions."
    )
    names: list[Annotated[str, Field(max_length=600)]] = Field(
        default_factory=list,
        max_length=MAX_CHANGED_NAMES,
        description=f"Names of created and updated definitions, the first {MAX_CHANGED_NAMES}.",
    )


class DefinitionsImport(ApiModel):
    """A definitions restore: the broker, and what the import changed (or, in a dry run, would change)."""

    broker: str | None = Field(None, description="host:port of the management API (no credentials).")
    vhost: str | None = Field(None, description="The virtual host imported into; unset for the whole broker.")
    dry_run: bool = Field(False, description="Whether nothing was changed.")
    changes: list[DefinitionChanges] = Field(
        default_factory=list, max_length=16, description="Per type of definition."
    )
