"""Reading credentials from Secrets: the only place they come from. Values are never logged.

A Secret that is missing, unreadable or lacks the key is waited for (GitOps may apply it a moment
later); its messages name the Secret and the key, never a value nor the Secret's other keys.
"""

from __future__ import annotations

from habitat_operator.api.common import Reason, SecretKeyRef
from habitat_operator.controllers.base import kube
from habitat_operator.engines.postgres.uri import ConnectionTarget
from habitat_operator.errors import PermanentError, WaitingError


async def read_secret_value(namespace: str, name: str, key: str) -> bytes:
    try:
        data = await kube.read_secret(namespace, name)
    except kube.Forbidden:
        raise WaitingError(
            Reason.SECRET_FORBIDDEN,
            f"the operator is not allowed to read Secret {namespace}/{name} (check its RBAC)",
        ) from None
    if data is None:
        raise WaitingError(Reason.SECRET_NOT_FOUND, f"Secret {namespace}/{name} not found")
    if key not in data:
        raise WaitingError(Reason.SECRET_KEY_NOT_FOUND, f"Secret {namespace}/{name} has no key {key!r}")
    return data[key]


async def read_secret_text(namespace: str, name: str, key: str) -> str:
    value = await read_secret_value(namespace, name, key)
    try:
        return value.decode().strip()
    except UnicodeDecodeError:
        raise PermanentError(
            Reason.SECRET_NOT_TEXT, f"Secret {namespace}/{name} key {key!r} is not UTF-8 text"
        ) from None


async def read_connection(namespace: str, ref: SecretKeyRef) -> ConnectionTarget:
    """The database a `secretRef` names, parsed (and refused when ambiguous) by libpq's rules."""
    return ConnectionTarget(await read_secret_text(namespace, ref.name, ref.key))
