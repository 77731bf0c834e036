"""An S3 server (versitygw, built from the Go module proxy) over a folder of the stack, with generated
keys and the test bucket."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from dev_stack.common import REPO, STACK_DIR, State, go_build, pid_alive, spawn, wait_until

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


S3_BUILD = REPO / "tests" / "s3" / "build.sh"


S3_TEST_BUCKET = "habitat-test"


def s3_binary() -> Path:
    """versitygw, built from the Go module proxy once and cached in .bin/ like the control plane."""
    return go_build(S3_BUILD, "versitygw") / "versitygw"


def start_s3(state: State) -> None:
    """versitygw serving S3 over a folder of the stack, on a private port, with generated keys
    (given in its environment, not its command line), and the test bucket."""
    if pid_alive(state.pids.get("s3")) and s3_ready(state):
        return
    state.s3_access_key = state.s3_access_key or secrets.token_hex(10)
    state.s3_secret_key = state.s3_secret_key or secrets.token_hex(20)
    data = STACK_DIR / "s3"
    data.mkdir(parents=True, exist_ok=True)
    # Buckets created with Object Lock keep versions, as on AWS; the others keep none, as before.
    versions = STACK_DIR / "s3-versions"
    versions.mkdir(exist_ok=True)
    state.pids["s3"] = spawn(
        "s3",
        [
            state.s3_bin,
            "--port",
            f"127.0.0.1:{state.port('s3')}",
            "posix",
            "--versioning-dir",
            str(versions),
            str(data),
        ],
        {"ROOT_ACCESS_KEY": state.s3_access_key, "ROOT_SECRET_KEY": state.s3_secret_key},
    )
    wait_until("s3", lambda: s3_ready(state), 30, STACK_DIR / "logs" / "s3.log")
    client = s3_client(state)
    if S3_TEST_BUCKET not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
        client.create_bucket(Bucket=S3_TEST_BUCKET)


def s3_endpoint(state: State) -> str:
    return f"http://127.0.0.1:{state.ports['s3']}"


def s3_client(state: State) -> S3Client:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=s3_endpoint(state),
        region_name="us-east-1",
        aws_access_key_id=state.s3_access_key,
        aws_secret_access_key=state.s3_secret_key,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}, connect_timeout=2),
    )


def s3_ready(state: State) -> bool:
    s3_client(state).list_buckets()
    return True


def s3_env(state: State) -> dict[str, str]:
    return {
        "HABITAT_S3_ENDPOINT": s3_endpoint(state),
        "HABITAT_S3_ACCESS_KEY": state.s3_access_key,
        "HABITAT_S3_SECRET_KEY": state.s3_secret_key,
        "HABITAT_S3_BUCKET": S3_TEST_BUCKET,
    }
