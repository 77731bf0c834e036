"""Reading credentials from Secrets: the only place they come from. Values are never logged."""

from __future__ import annotations

import asyncio
import base64

from kubernetes.client import ApiException

from habitat_operator import kube


class SecretError(Exception):
    """A Secret or key that cannot be read. `reason` is a condition reason; the message names both."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


async def read_secret_value(namespace: str, name: str, key: str) -> bytes:
    try:
        secret = await asyncio.to_thread(kube.core().read_namespaced_secret, name, namespace)
    except ApiException as error:
        if error.status == 404:
            raise SecretError("SecretNotFound", f"Secret {namespace}/{name} not found") from None
        if error.status == 403:
            raise SecretError(
                "SecretForbidden",
                f"the operator is not allowed to read Secret {namespace}/{name} (check its RBAC)",
            ) from None
        raise
    data = secret.data or {}
    if key not in data:
        known = ", ".join(sorted(data)) or "none"
        raise SecretError(
            "SecretKeyNotFound", f"Secret {namespace}/{name} has no key {key!r} (keys: {known})"
        )
    return base64.b64decode(data[key])


async def read_secret_text(namespace: str, name: str, key: str) -> str:
    return (await read_secret_value(namespace, name, key)).decode().strip()
