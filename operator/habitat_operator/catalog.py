"""`habitat-operator catalog list`: what a bucket holds, newest first, from the catalog entries alone.

The runbook's first step after a disaster: no cluster and no Backup object is needed, only the
bucket (given by flags, or by a YAML file holding the same `s3` block as a Backup's storage) and
its credentials from the environment (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, as every S3 tool
reads them), never from the command line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, TextIO

import yaml

from habitat_operator.api.artifacts import S3Storage
from habitat_operator.controllers.base.buckets import location_of
from habitat_operator.engines.artifacts.s3 import Bucket, recency
from habitat_operator.formatting import human_size, text_table

COLUMNS = ("DATABASE", "CREATED", "SIZE", "VERIFIED", "ENCRYPTED", "COMPRESSION", "KEY")


def storage_from(file: Path | None, flags: dict[str, Any]) -> S3Storage:
    """The `s3` block of `file` (a Backup's storage, or the block itself), overridden by `flags`."""
    block: dict[str, Any] = {}
    if file is not None:
        loaded = yaml.safe_load(file.read_text()) or {}
        block = loaded.get("s3", loaded) if isinstance(loaded, dict) else {}
    block |= {key: value for key, value in flags.items() if value is not None}
    # The credentials come from the environment here; the Secret reference only satisfies the model.
    block.setdefault("credentialsSecretRef", {"name": "from-environment"})
    return S3Storage.model_validate(block)


def newest_first(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(entries, key=recency, reverse=True)


def table(entries: list[dict[str, Any]]) -> str:
    rows = [COLUMNS] + [
        (
            str(e.get("database", "?")),
            str(e.get("createdAt", "?")),
            human_size(int(e.get("sizeBytes") or 0)),
            "yes" if e.get("verified") else "no",
            "yes" if e.get("encrypted") else "no",
            str(e.get("compression", "gzip")),
            str(e["key"]),
        )
        for e in entries
    ]
    return text_table(rows)


def list_catalog(storage: S3Storage, output: str, out: TextIO) -> None:
    credentials = os.environ.get("AWS_ACCESS_KEY_ID", ""), os.environ.get("AWS_SECRET_ACCESS_KEY", "")
    with Bucket(location_of(storage, *credentials)) as bucket:
        entries = newest_first(bucket.catalog())
    out.write(json.dumps(entries, indent=2) + "\n" if output == "json" else table(entries))
