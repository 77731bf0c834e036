"""Artifact types that Backup writes and Restore reads: where they live and in which format."""

from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, Field

from habitat_operator.api.common import SECRET_KEY_PATTERN, ApiModel, CelRule, SecretName, exactly_one_of
from habitat_operator.durations import DURATION_PATTERN, parse_duration

RelativePath = Annotated[
    str,
    Field(min_length=1, max_length=1024),
    CelRule(
        "!self.startsWith('/')",
        "path must be relative to the operator's backup root",
        lambda path: not path.startswith("/"),
    ),
    CelRule(
        "!self.matches('(^|/)[.][.](/|$)')",
        "path must not contain '..' segments",
        lambda path: ".." not in path.split("/"),
    ),
]


class BackupFormat(StrEnum):
    """pg_dump output format."""

    CUSTOM = "custom"
    DIRECTORY = "directory"


class FilesystemStorage(ApiModel):
    """Store the artifact on the filesystem the operator mounts as its backup root."""

    path: RelativePath = Field(
        description="Directory for this backup's artifacts, relative to the operator's backup root."
    )


class Compression(StrEnum):
    """How a custom-format artifact is compressed: by pg_dump (gzip), by the operator (zstd), or not."""

    GZIP = "gzip"
    ZSTD = "zstd"
    NONE = "none"


# S3's own rules for a bucket name (3-63 lower-case letters, digits, dots and hyphens).
BUCKET_PATTERN = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"

S3Prefix = Annotated[
    str,
    Field(max_length=512),
    CelRule(
        "!self.startsWith('/')",
        "prefix must be relative (no leading '/')",
        lambda prefix: not prefix.startswith("/"),
    ),
    CelRule(
        "!self.matches('(^|/)[.][.](/|$)')",
        "prefix must not contain '..' segments",
        lambda prefix: ".." not in prefix.split("/"),
    ),
]


def _secret_key(default: str, what: str) -> Any:
    return Field(default, pattern=SECRET_KEY_PATTERN, max_length=253, description=f"Key holding {what}.")


class S3CredentialsSecretRef(ApiModel):
    """A Secret in the resource's namespace holding an access key pair of the bucket."""

    name: SecretName
    access_key_id_key: str = _secret_key("accessKeyId", "the access key id")
    secret_access_key_key: str = _secret_key("secretAccessKey", "the secret access key")


class CaSecretRef(ApiModel):
    """A Secret in the resource's namespace holding a PEM CA bundle the endpoint's certificate chains to."""

    name: SecretName
    key: str = _secret_key("ca.crt", "the PEM CA bundle")


class ObjectLockMode(StrEnum):
    """S3 Object Lock's retention modes: GOVERNANCE can be lifted by an identity allowed to bypass it,
    COMPLIANCE by nobody until the date passes."""

    GOVERNANCE = "GOVERNANCE"
    COMPLIANCE = "COMPLIANCE"


RETAIN_FOR_RETENTION = "retention"


def _retain_for(text: str) -> str:
    if text != RETAIN_FOR_RETENTION:
        parse_duration(text)  # rejects values too large for a timedelta
    return text


RetainFor = Annotated[
    str,
    Field(pattern=f"^{RETAIN_FOR_RETENTION}$|{DURATION_PATTERN}", max_length=32),
    AfterValidator(_retain_for),
]


class ObjectLock(ApiModel):
    """Write every artifact and catalog entry under S3 Object Lock, and restore only locked versions."""

    mode: ObjectLockMode = Field(description="GOVERNANCE or COMPLIANCE (nobody can shorten it).")
    retain_for: RetainFor = Field(
        description=(
            'How long each object stays locked from its upload, e.g. 30d; "retention": as long as'
            " the Backup's retention policy keeps a run."
        )
    )


class S3Storage(ApiModel):
    """An S3-compatible bucket: artifacts go to `<prefix>/<namespace>/<name>.dump` (`.tar` for format
    directory), a catalog beside each."""

    bucket: str = Field(pattern=BUCKET_PATTERN, description="Name of an existing bucket.")
    prefix: S3Prefix = Field("", description="Key prefix inside the bucket, e.g. habitat/prod.")
    endpoint: str | None = Field(
        None,
        pattern=r"^https?://[^/?#]+/?$",
        max_length=512,
        description="URL of an S3-compatible server; AWS's regional endpoint when unset.",
    )
    region: str = Field("us-east-1", pattern=r"^[a-z0-9-]{1,64}$", description="Region of the bucket.")
    force_path_style: bool = Field(
        False, description="Address the bucket in the path (most S3-compatible servers need it)."
    )
    credentials_secret_ref: S3CredentialsSecretRef = Field(description="Secret holding the access keys.")
    ca_secret_ref: CaSecretRef | None = Field(
        None, description="Secret holding a private CA for the endpoint."
    )
    object_lock: ObjectLock | None = Field(
        None,
        description=(
            "Write under S3 Object Lock (the bucket must have it enabled); a Restore then reads only"
            " locked object versions that match their catalog entry."
        ),
    )


class BackupStorage(ApiModel):
    """Where artifacts go: exactly one of filesystem or s3."""

    cel_rules = (exactly_one_of("storage", "filesystem", "s3"),)

    filesystem: FilesystemStorage | None = Field(
        None, description="Filesystem storage under the operator's backup root."
    )
    s3: S3Storage | None = Field(None, description="An S3-compatible bucket, for off-site copies.")
