"""What the operator was started with, handed to every handler through Kopf's memo."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class OperatorConfig:
    backup_root: Path
    # Off by default: a Restore may name only artifacts in its own namespace's part of the store.
    allow_cross_namespace_restores: bool = False
    # The namespaces this operator watches; empty means all of them.
    namespaces: tuple[str, ...] = ()
    # Where a parallel restore of an encrypted artifact decrypts it (None: the system's temp folder).
    scratch_dir: Path | None = None
    # Host patterns (globs of host or host:port) a ScalePolicy's Prometheus serverAddress and RabbitMQ
    # URLs must match; empty: any.
    allowed_metrics_endpoints: tuple[str, ...] = ()
    # A replay's page of events is cut at this many bytes (as well as at spec.batchSize), and its
    # messages awaiting confirms are bounded by as many: a replay's memory is bounded in bytes.
    replay_batch_bytes: int = 8 * 2**20
