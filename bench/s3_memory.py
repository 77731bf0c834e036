"""The operator's peak RSS while it backs up the 1 GiB pgbench database to the stack's S3 server.

Starts `habitat-operator run` on one namespace of the local stack, applies one Backup per codec
(uncompressed first: every byte of the dump goes up), and reads the process's VmHWM after each.
Run on the local stack: `make bench` (or `python -m bench.s3_memory` with .stack/env sourced).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import tempfile
from pathlib import Path

from bench.backup import ensure_database
from bench.operator_process import REPO, Operator


def kubectl(*args: str, stdin: str | None = None) -> str:
    argv = [os.environ["HABITAT_KUBECTL"], *args]
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, check=True).stdout


def wait_ready(namespace: str, name: str) -> dict[str, object]:
    kubectl("-n", namespace, "wait", "--for=condition=Ready", f"backup/{name}", "--timeout=600s")
    return dict(json.loads(kubectl("-n", namespace, "get", "backup", name, "-o", "json"))["status"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=int, default=70, help="pgbench scale (70 is about 1.05 GB)")
    args = parser.parse_args()
    uri = ensure_database(os.environ["HABITAT_PG_URI"], args.scale)
    namespace = f"bench-{secrets.token_hex(3)}"
    kubectl("apply", "--server-side", "-k", str(REPO / "crds"))
    kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    kubectl("create", "namespace", namespace)
    kubectl("-n", namespace, "create", "secret", "generic", "db", f"--from-literal=uri={uri}")
    kubectl(
        "-n", namespace, "create", "secret", "generic", "s3",
        f"--from-literal=accessKeyId={os.environ['HABITAT_S3_ACCESS_KEY']}",
        f"--from-literal=secretAccessKey={os.environ['HABITAT_S3_SECRET_KEY']}",
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        operator = Operator(Path(tmp), namespaces=[namespace])
        try:
            print(f"operator ready: peak RSS {operator.peak_rss_mib():.0f} MiB")
            for compression in ("none", "gzip", "zstd"):
                name = f"bench-{compression}"
                backup = {
                    "apiVersion": "ops.habitat.dev/v1alpha1",
                    "kind": "Backup",
                    "metadata": {"name": name, "namespace": namespace},
                    "spec": {
                        "database": {"secretRef": {"name": "db"}},
                        "compression": compression,
                        "storage": {
                            "s3": {
                                "bucket": os.environ["HABITAT_S3_BUCKET"],
                                "prefix": namespace,
                                "endpoint": os.environ["HABITAT_S3_ENDPOINT"],
                                "forcePathStyle": True,
                                "credentialsSecretRef": {"name": "s3"},
                            }
                        },
                    },
                }
                kubectl("apply", "-f", "-", stdin=json.dumps(backup))
                status = wait_ready(namespace, name)
                size = status["artifact"]["size"]  # type: ignore[index]
                print(
                    f"{compression:5} {size:>10} in {status['duration']}: "
                    f"peak RSS {operator.peak_rss_mib():.0f} MiB"
                )
        finally:
            operator.stop()
            kubectl("delete", "namespace", namespace, "--wait=false")


if __name__ == "__main__":
    main()
