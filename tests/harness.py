"""What the tests use to reach the local stack: its addresses, and kubectl in one namespace."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Stack:
    kubeconfig: str
    kubectl_path: str
    pg_uri: str
    amqp_uri: str
    rabbitmq_api: str
    prometheus_url: str
    s3_endpoint: str = ""
    s3_access_key: str = ""
    s3_secret_key: str = ""
    s3_bucket: str = ""

    @property
    def env(self) -> dict[str, str]:
        """The environment for a child process (kubectl, the operator) that should use this stack."""
        path = f"{Path(self.kubectl_path).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        return {**os.environ, "KUBECONFIG": self.kubeconfig, "PATH": path}


class Kubectl:
    """kubectl against the test cluster, in one namespace; output parsed from JSON."""

    def __init__(self, stack: Stack, namespace: str) -> None:
        self.stack = stack
        self.namespace = namespace

    def run(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        argv = [self.stack.kubectl_path, "--kubeconfig", self.stack.kubeconfig, "-n", self.namespace, *args]
        result = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def apply(self, manifest: str | dict[str, Any], check: bool = True) -> subprocess.CompletedProcess[str]:
        text = manifest if isinstance(manifest, str) else json.dumps(manifest)
        return self.run("apply", "-f", "-", stdin=text, check=check)

    def get(self, kind: str, name: str) -> dict[str, Any]:
        return dict(json.loads(self.run("get", kind, name, "-o", "json").stdout))
