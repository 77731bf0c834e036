"""Artifact types that Backup writes and Restore reads: where they live and in which format."""

from enum import StrEnum
from typing import Annotated

from pydantic import Field

from habitat_operator.api.common import ApiModel, CelRule

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


class BackupStorage(ApiModel):
    """Where artifacts go."""

    filesystem: FilesystemStorage = Field(description="Filesystem storage under the operator's backup root.")
