"""URLs that an object's author chooses and the operator then reaches from its own network position:
the operator's `--allowed-metrics-endpoints` limits them, for every kind alike, and nothing is sent
to a host outside it."""

from __future__ import annotations

import fnmatch
import urllib.parse

from habitat_operator.api.rabbitmq_definitions import DefinitionsReason, ManagementSecretRef
from habitat_operator.controllers.base.credentials import read_secret_text
from habitat_operator.engines.http import display
from habitat_operator.engines.rabbitmq.management import ManagementApi
from habitat_operator.errors import PermanentError


def endpoint_allowed(url: str, patterns: tuple[str, ...]) -> bool:
    """Whether `url`'s host (or host:port) matches one of the glob `patterns`; any, without patterns."""
    if not patterns:
        return True
    parts = urllib.parse.urlsplit(url)
    host = (parts.hostname or "").lower()
    names = (host, f"{host}:{parts.port}" if parts.port else host)
    return any(fnmatch.fnmatchcase(name, pattern.lower()) for pattern in patterns for name in names)


async def management_api(namespace: str, ref: ManagementSecretRef, allowed: tuple[str, ...]) -> ManagementApi:
    """The RabbitMQ management API whose URL the Secret holds, refused on a host `allowed` excludes."""
    url = await read_secret_text(namespace, ref.name, ref.key)
    api = ManagementApi(url)
    if not endpoint_allowed(url, allowed):
        raise PermanentError(
            DefinitionsReason.ENDPOINT_NOT_ALLOWED,
            f"{display(url)} (Secret {ref.name}) is not among the operator's --allowed-metrics-endpoints",
        )
    return api
