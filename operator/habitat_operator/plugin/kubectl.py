"""Every apiserver call of the plugin goes through the `kubectl` binary, with the user's global flags.

kubectl sets KUBECTL_PLUGINS_CALLER to its own path when it runs a plugin: that binary is used, so the
plugin talks to the cluster with the same kubectl (version and auth plugins) the user typed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from collections.abc import Sequence
from typing import Any

DEFAULT_TIMEOUT_SECONDS = 30.0


class KubectlError(Exception):
    """kubectl is missing, failed or timed out; the message is one readable line (exit code 2)."""


class Kubectl:
    def __init__(
        self,
        *,
        context: str | None = None,
        kubeconfig: str | None = None,
        namespace: str | None = None,
        all_namespaces: bool = False,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        binary: str | None = None,
    ) -> None:
        self.context = context
        self.kubeconfig = kubeconfig
        self.all_namespaces = all_namespaces
        self.timeout = timeout
        self.binary = binary or os.environ.get("KUBECTL_PLUGINS_CALLER") or "kubectl"
        self._namespace = namespace

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Kubectl:
        return cls(
            context=args.context,
            kubeconfig=args.kubeconfig,
            namespace=args.namespace,
            all_namespaces=args.all_namespaces,
            timeout=args.request_timeout,
        )

    def command(self, *args: str) -> list[str]:
        """kubectl's argv: the connection flags, the namespace given with -n, then `args`."""
        argv = [self.binary]
        if self.context:
            argv += ["--context", self.context]
        if self.kubeconfig:
            argv += ["--kubeconfig", self.kubeconfig]
        if self._namespace:
            argv += ["--namespace", self._namespace]
        argv += [f"--request-timeout={self.timeout:g}s", *args]
        return argv

    def run(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl; with `check`, a non-zero exit raises KubectlError with kubectl's own last line."""
        argv = self.command(*args)
        try:
            result = subprocess.run(
                argv,
                input=input,
                capture_output=True,
                text=True,
                # kubectl's own timeout covers each request; this one covers a hung exec credential plugin
                timeout=self.timeout + 5,
                check=False,
            )
        except FileNotFoundError:
            raise KubectlError(f"{self.binary} not found on PATH") from None
        except subprocess.TimeoutExpired:
            raise KubectlError(f"kubectl {' '.join(args)} did not answer within {self.timeout:g}s") from None
        if check and result.returncode != 0:
            raise KubectlError(
                _last_line(result.stderr) or f"kubectl {' '.join(args)} exited {result.returncode}"
            )
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "-o", "json").stdout)

    def scope(self) -> list[str]:
        """The flags that list objects in the namespaces the user asked for (-A, or kubectl's default)."""
        return ["--all-namespaces"] if self.all_namespaces else []

    def list(self, resources: Sequence[str]) -> list[dict[str, Any]]:
        """Every object of `resources` (kinds, comma-joined into one call) in the user's scope."""
        if not resources:
            return []
        listing = self.json("get", ",".join(resources), *self.scope())
        items: list[dict[str, Any]] = listing.get("items", []) if listing.get("kind") == "List" else [listing]
        return items

    @property
    def namespace(self) -> str:
        """The namespace commands act in: -n, else the kubeconfig context's namespace, else "default"."""
        if self._namespace:
            return self._namespace
        result = self.run("config", "view", "--minify", "--output", "jsonpath={..namespace}", check=False)
        self._namespace = result.stdout.strip() or "default"
        return self._namespace


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""
