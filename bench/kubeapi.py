"""The benchmarks' own apiserver calls, synchronous, with the credentials the operator's login finds (the
stack's admin kubeconfig, KUBECONFIG): plain requests by path, as the operator's kube.py makes them."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from http.client import HTTPResponse
from typing import Any

import kopf

from habitat_operator.handlers.login import find_connection

GROUP, VERSION = "ops.habitat.dev", "v1alpha1"


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def custom(plural: str, namespace: str = "", name: str = "") -> str:
    """The path of custom objects of `plural`: all namespaces', one namespace's, or one object."""
    where = f"/namespaces/{namespace}" if namespace else ""
    return f"/apis/{GROUP}/{VERSION}{where}/{plural}{'/' + name if name else ''}"


class Api:
    def __init__(self) -> None:
        connection = find_connection(kopf.OperatorSettings())
        if connection is None:
            raise SystemExit("no kubeconfig: source the stack's env (KUBECONFIG)")
        self.server, self.ssl, self.headers = connection.server, connection.ssl, dict(connection.headers)

    def _open(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json", **query: str
    ) -> HTTPResponse:
        url = f"{self.server}{path}{'?' + urllib.parse.urlencode(query) if query else ''}"
        data = None if body is None else json.dumps(body).encode()
        headers = {**self.headers, "Accept": "application/json", "Content-Type": content_type}
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            response: HTTPResponse = urllib.request.urlopen(request, context=self.ssl, timeout=330)
        except urllib.error.HTTPError as error:
            raise ApiError(error.code, error.read().decode(errors="replace")) from None
        return response

    def request(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json", **query: str
    ) -> Any:
        with self._open(method, path, body, content_type, **query) as response:
            return json.loads(response.read())

    def text(self, path: str) -> str:
        with self._open("GET", path) as response:
            return response.read().decode()

    def watch(self, path: str, **query: str) -> Watch:
        return Watch(self._open("GET", path, watch="true", **query))


class Watch:
    """The events of one watch request, until the apiserver ends it or `stop` is called."""

    def __init__(self, response: HTTPResponse) -> None:
        self._response = response
        self._stopped = False

    def __iter__(self) -> Iterator[dict[str, Any]]:
        with self._response:
            for line in self._response:
                if self._stopped:
                    return
                event = json.loads(line)
                if event.get("type") == "ERROR":
                    raise ApiError(int(event["object"].get("code", 0)), str(event["object"].get("message")))
                yield event

    def stop(self) -> None:
        # The reading thread closes the response at its next event (or when the apiserver ends the
        # watch): closing it from another thread would wait for the read to let go of its buffer.
        self._stopped = True
