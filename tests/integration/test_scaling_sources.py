"""The ScalePolicy engines against the stack's real RabbitMQ and Prometheus."""

from __future__ import annotations

import http.server
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pika
import pytest

from dev_stack.common import free_port
from habitat_operator.api.scalepolicy import ScalePolicyReason
from habitat_operator.engines.http import MAX_BODY_BYTES, display
from habitat_operator.engines.prometheus.query import PrometheusFailure, instant_value
from habitat_operator.engines.rabbitmq.queue_depth import AmqpDepth, management_depth
from habitat_operator.errors import RetryableError
from tests.harness import Stack

pytestmark = pytest.mark.integration


def test_the_management_api_counts_messages_workers_hold_and_amqp_counts_ready_ones(
    stack: Stack, fresh_queue: str
) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(stack.amqp_uri))
    channel = connection.channel()
    for _ in range(10):
        channel.basic_publish("", fresh_queue, b"job")
    worker = connection.channel()
    worker.basic_qos(prefetch_count=4)
    worker.basic_consume(fresh_queue, lambda *_: None)  # takes 4, acknowledges none
    connection.process_data_events(time_limit=0.5)
    reader = AmqpDepth(stack.amqp_uri)
    try:
        assert reader.read(fresh_queue, timeout=2) == 6
        assert reader.read(fresh_queue, timeout=2) == 6  # the same connection, again
    finally:
        reader.close()
    deadline = time.monotonic() + 10  # the broker samples its statistics every second here
    while managed_depth(stack, fresh_queue) != 10:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    connection.close()


def managed_depth(stack: Stack, queue: str) -> int | None:
    """None until the broker has sampled a new queue's statistics."""
    try:
        return management_depth(stack.rabbitmq_api, "/", queue, timeout=2)
    except RetryableError:
        return None


def test_a_missing_queue_or_broker_is_an_error_without_credentials(stack: Stack) -> None:
    reader = AmqpDepth(stack.amqp_uri)
    with pytest.raises(RetryableError, match="NOT_FOUND") as missing:
        reader.read("no-such-queue", timeout=2)
    assert "guest" not in str(missing.value)
    with pytest.raises(RetryableError, match="HTTP 404") as absent:
        management_depth(stack.rabbitmq_api, "/", "no-such-queue", timeout=2)
    assert "guest" not in str(absent.value)
    closed_port = free_port()
    with pytest.raises(RetryableError, match="unreachable") as down:
        AmqpDepth(f"amqp://guest:secret@127.0.0.1:{closed_port}/%2F").read("q", timeout=1)
    assert "secret" not in str(down.value)


def test_a_prometheus_query_must_return_one_sample(stack: Stack) -> None:
    with urllib.request.urlopen(stack.prometheus_url + "/-/ready", timeout=5) as response:
        assert response.status == 200
    assert instant_value(stack.prometheus_url, "vector(35)", timeout=2) == 35
    assert instant_value(stack.prometheus_url, "scalar(vector(2))", timeout=2) == 2
    with pytest.raises(RetryableError, match="did not return one sample"):
        instant_value(
            stack.prometheus_url, "vector(1) or label_replace(vector(2), 'x', 'y', '', '')", timeout=2
        )
    with pytest.raises(RetryableError, match="did not return one sample"):
        instant_value(stack.prometheus_url, "absent(vector(1))", timeout=2)


def test_a_failed_prometheus_query_says_only_unreachable_or_bad_response(stack: Stack) -> None:
    """A ScalePolicy's serverAddress is anyone's choice: refused, TLS to a plain port, an HTTP 404 and
    another service's JSON read alike in status (two reasons); the exact failure is the log's."""
    cases = [
        (
            f"http://127.0.0.1:{free_port()}",
            ScalePolicyReason.PROMETHEUS_UNREACHABLE,
            "gave no answer",
        ),
        (
            stack.prometheus_url.replace("http://", "https://"),
            ScalePolicyReason.PROMETHEUS_UNREACHABLE,
            "gave no answer",
        ),
        (
            stack.prometheus_url + "/nothing-here",
            ScalePolicyReason.PROMETHEUS_BAD_RESPONSE,
            "gave no Prometheus query result",
        ),
        (stack.s3_endpoint, ScalePolicyReason.PROMETHEUS_BAD_RESPONSE, "gave no Prometheus query result"),
    ]
    details = set()
    for server, reason, coarse in cases:
        with pytest.raises(PrometheusFailure) as caught:
            instant_value(server, "vector(1)", timeout=2)
        assert caught.value.reason is reason
        assert caught.value.message == f"Prometheus at {display(server)} {coarse} ({reason})"
        details.add(caught.value.detail)
    assert len(details) == len(cases)  # the log tells them apart


@contextmanager
def answering(respond: Callable[[http.server.BaseHTTPRequestHandler], None]) -> Iterator[str]:
    """A local HTTP server whose every GET `respond` answers; yields its URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            respond(self)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()


def test_a_redirect_is_a_bad_response_never_followed_past_the_allowed_endpoints(stack: Stack) -> None:
    """--allowed-metrics-endpoints checks the serverAddress; a redirect from it to another host (a
    real Prometheus here) must not be followed, or the check, and the credentials, go with it."""

    def redirect(request: http.server.BaseHTTPRequestHandler) -> None:
        request.send_response(302)
        request.send_header("Location", stack.prometheus_url + request.path)
        request.end_headers()

    with answering(redirect) as address, pytest.raises(PrometheusFailure) as caught:
        instant_value(f"http://user:secret@{address}", "vector(1)", timeout=2)
    assert caught.value.reason is ScalePolicyReason.PROMETHEUS_BAD_RESPONSE
    assert "HTTP 302" in caught.value.detail and "secret" not in caught.value.detail


def test_an_answer_larger_than_a_query_result_can_be_is_a_bad_response_not_read_whole() -> None:
    """Whoever writes serverAddress chooses the server: a body of hundreds of MB must not be read into
    the shared operator's memory (300 MB took it from 111 to 629 MB)."""

    def huge(request: http.server.BaseHTTPRequestHandler) -> None:
        head = b'{"status":"success","data":{"resultType":"scalar","result":[0,"1"]},"pad":"'
        request.send_response(200)
        request.send_header("Content-Type", "application/json")
        request.end_headers()
        request.wfile.write(head + b"x" * (MAX_BODY_BYTES + 1) + b'"}')

    with answering(huge) as address, pytest.raises(PrometheusFailure) as caught:
        instant_value(f"http://{address}", "vector(1)", timeout=5)
    assert caught.value.reason is ScalePolicyReason.PROMETHEUS_BAD_RESPONSE
    assert f"more than {MAX_BODY_BYTES} bytes" in caught.value.detail
