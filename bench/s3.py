"""The stack's S3 server for the benchmarks: its bucket, and the raw pipelines the operator is held
against (`pg_dump -Fc | boto3 upload_fileobj` and its reverse, with boto3's default transfer settings)."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Awaitable, Callable
from typing import Any

import boto3
from botocore.config import Config

from habitat_operator.engines.artifacts.s3 import Bucket, S3Location
from habitat_operator.engines.postgres.uri import ConnectionTarget


def location() -> S3Location | None:
    """The stack's test bucket under a fresh prefix; None without an S3 server in the stack."""
    if "HABITAT_S3_ENDPOINT" not in os.environ:
        return None
    return S3Location(
        bucket=os.environ["HABITAT_S3_BUCKET"],
        prefix=f"bench-{secrets.token_hex(4)}",
        endpoint=os.environ["HABITAT_S3_ENDPOINT"],
        force_path_style=True,
        access_key_id=os.environ["HABITAT_S3_ACCESS_KEY"],
        secret_access_key=os.environ["HABITAT_S3_SECRET_KEY"],
    )


def raw_client(where: S3Location) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=where.endpoint,
        region_name=where.region,
        aws_access_key_id=where.access_key_id,
        aws_secret_access_key=where.secret_access_key,
        config=Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )


def raw_upload(target: ConnectionTarget, where: S3Location, key: str) -> Callable[[], Awaitable[None]]:
    """`pg_dump -Fc | upload_fileobj`."""

    async def run() -> None:
        dump = subprocess.Popen(
            ["pg_dump", "-Fc"], stdout=subprocess.PIPE, env={**os.environ, **target.env()}
        )
        assert dump.stdout is not None
        raw_client(where).upload_fileobj(dump.stdout, where.bucket, key)
        if dump.wait() != 0:
            raise RuntimeError("pg_dump failed")

    return run


def raw_download_into(target: ConnectionTarget, where: S3Location, key: str) -> None:
    """`download_fileobj | pg_restore`."""
    restore = subprocess.Popen(
        ["pg_restore", "--no-owner", "-d", target.dbname],
        stdin=subprocess.PIPE,
        env={**os.environ, **target.env()},
    )
    assert restore.stdin is not None
    raw_client(where).download_fileobj(where.bucket, key, restore.stdin)
    restore.stdin.close()
    if restore.wait() != 0:
        raise RuntimeError("pg_restore failed")


def size_of(where: S3Location, key: str) -> int:
    with Bucket(where) as bucket:
        return int(bucket.client.head_object(Bucket=where.bucket, Key=key)["ContentLength"])
