"""The HABITAT_WAL_* environment of restore_command: what the recovery side writes, the fetch side reads."""

from pathlib import Path

import pytest

from habitat_operator.engines.artifacts.s3 import S3Location
from habitat_operator.engines.wal import fetch_env
from habitat_operator.engines.wal.fetch_env import ArchiveAccess, access_from_environment, fetch_environment
from habitat_operator.errors import PermanentError

LOCATION = S3Location(
    bucket="dr",
    prefix="habitat/prod",
    region="eu-west-1",
    endpoint="https://s3.example",
    force_path_style=True,
    access_key_id="AKIA-ID",
    secret_access_key="the-secret",
    ca_bundle=b"-----BEGIN CERTIFICATE-----\n...\n",
)


def test_a_bucket_archive_comes_back_rooted_at_its_namespace() -> None:
    env = fetch_environment(ArchiveAccess("db", "finance", location=LOCATION, encryption_key=b"\x00k\xff"))
    assert set(env) <= set(fetch_env.NAMES) and all(name.startswith("HABITAT_WAL_") for name in env)
    back = access_from_environment(env)
    assert back.archive == "db" and back.encryption_key == b"\x00k\xff"
    assert back.location is not None and back.location.key() == "habitat/prod/finance"
    assert back.location.access_key_id == "AKIA-ID" and back.location.secret_access_key == "the-secret"
    assert back.location.ca_bundle == LOCATION.ca_bundle and back.location.force_path_style
    assert (back.location.endpoint, back.location.region) == ("https://s3.example", "eu-west-1")


def test_a_folder_archive_without_a_key() -> None:
    env = fetch_environment(ArchiveAccess("db", folder=Path("/backups/wal/finance")))
    assert fetch_env.ENCRYPTION_KEY not in env
    back = access_from_environment(env)
    assert back.folder == Path("/backups/wal/finance") and back.encryption_key is None


def test_a_missing_or_wrong_variable_is_named_never_its_value() -> None:
    with pytest.raises(PermanentError, match="HABITAT_WAL_ARCHIVE is not set"):
        access_from_environment({})
    with pytest.raises(PermanentError, match="HABITAT_WAL_ENCRYPTION_KEY is not base64") as failure:
        access_from_environment({fetch_env.ARCHIVE: "db", fetch_env.ENCRYPTION_KEY: "not*base64!"})
    assert "not*base64!" not in failure.value.message
    with pytest.raises(PermanentError, match="HABITAT_WAL_S3_BUCKET is not set"):
        access_from_environment({fetch_env.ARCHIVE: "db"})
