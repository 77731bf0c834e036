"""diagnose's tries from where the plugin runs: a database, a broker, a queue, a bucket, a certificate.

Each returns a Check and never raises; messages name hosts, never credentials (the engines' own
display forms: ConnectionTarget.display, AmqpTarget.display, http.display).
"""

from __future__ import annotations

import datetime as dt
import urllib.parse
from collections.abc import Mapping
from typing import Any

import psycopg
from cryptography import x509

from habitat_operator.api.artifacts import S3Storage
from habitat_operator.api.scalepolicy import QueueSource, RabbitMQTrigger, ScalePolicyReason
from habitat_operator.durations import parse_duration
from habitat_operator.engines.artifacts.s3 import Bucket, S3Location, storage_error
from habitat_operator.engines.http import display, get_json
from habitat_operator.engines.postgres.uri import ConnectionTarget
from habitat_operator.engines.rabbitmq.uri import AmqpTarget
from habitat_operator.errors import OperationError, one_line
from habitat_operator.plugin.checks import Check, failed, passed, warned

FROM_HERE = "from this machine"
TLS_WARN_DAYS = 30
TLS_FAIL_DAYS = 7
_IN_CLUSTER_SUFFIXES = (".svc", ".svc.cluster.local", ".cluster.local")


def unreachable_hint(host: str, what: str) -> str:
    """Where the plugin runs, in-cluster names do not resolve: say so rather than blame the server."""
    if host.endswith(_IN_CLUSTER_SUFFIXES) or "." not in host:
        return (
            f"{host} is a cluster-internal name: run diagnose where it resolves (a Pod, or with "
            f"`kubectl port-forward` and a local URI), or trust the operator's status"
        )
    return f"check that {what} runs and accepts connections from here, and the Secret's host and port"


def postgres(target_name: str, uri: str, timeout: float) -> Check:
    check = "database"
    try:
        target = ConnectionTarget(uri)
    except OperationError as error:
        return failed(check, target_name, error.message, "fix the URI in the Secret (libpq's URI syntax)")
    where = f"{target_name} -> {target.display}"
    try:
        with psycopg.connect(target.conninfo(), connect_timeout=max(1, round(timeout))) as connection:
            connection.execute("SELECT 1")
    except psycopg.Error as error:
        message = target.redact(one_line(str(error)))
        if "authentication failed" in message:
            return failed(check, where, message, "the user or password in the Secret is wrong")
        return failed(
            check, where, f"{FROM_HERE}: {message}", unreachable_hint(target.host, "the database server")
        )
    return passed(check, where, f"accepts connections {FROM_HERE}")


def amqp(target_name: str, uri: str, timeout: float) -> Check:
    import pika
    import pika.exceptions

    check = "broker"
    try:
        target = AmqpTarget(uri)
    except OperationError as error:
        return failed(check, target_name, error.message, "fix the amqp:// URI in the Secret")
    where = f"{target_name} -> {target.display}"
    params = _one_attempt(target, timeout)
    try:
        pika.BlockingConnection(params).close()
    except pika.exceptions.ProbableAuthenticationError:
        return failed(
            check, where, "the broker refused the credentials", "the user or password in the Secret is wrong"
        )
    except (pika.exceptions.AMQPError, OSError) as error:
        detail = one_line(str(error)) or type(error).__name__
        return failed(check, where, f"{FROM_HERE}: {detail}", unreachable_hint(str(params.host), "RabbitMQ"))
    return passed(check, where, f"accepts connections {FROM_HERE}")


def queue(target_name: str, trigger: RabbitMQTrigger, uri: str, timeout: float) -> Check:
    """Depth and consumers of a queue a ScalePolicy watches: a queue nobody consumes is a WARN."""
    check = "queue"
    where = f"{target_name} queue {trigger.queue!r}"
    try:
        if trigger.source is QueueSource.MANAGEMENT:
            depth, consumers = _management_queue(uri, trigger.vhost, trigger.queue, timeout)
        else:
            depth, consumers = _amqp_queue(uri, trigger.queue, timeout)
    except OperationError as error:
        return failed(
            check, where, f"{FROM_HERE}: {error.message}", "check the queue name, vhost and the Secret's URL"
        )
    message = f"depth {depth}, {consumers} consumer(s)"
    if consumers == 0 and depth > 0:
        return warned(
            check,
            where,
            message,
            "messages wait and nothing consumes them: are the workers scaled to zero or down?",
        )
    return passed(check, where, message)


def _management_queue(api_url: str, vhost: str, name: str, timeout: float) -> tuple[int, int]:
    path = f"/queues/{urllib.parse.quote(vhost, safe='')}/{urllib.parse.quote(name, safe='')}"
    body = get_json(api_url.rstrip("/") + path, timeout, ScalePolicyReason.SOURCE_UNAVAILABLE)
    return int(body.get("messages_ready", 0)) + int(body.get("messages_unacknowledged", 0)), int(
        body.get("consumers", 0)
    )


def _amqp_queue(uri: str, name: str, timeout: float) -> tuple[int, int]:
    import pika
    import pika.exceptions

    target = AmqpTarget(uri)
    try:
        connection = pika.BlockingConnection(_one_attempt(target, timeout))
        try:
            method = connection.channel().queue_declare(name, passive=True).method
        finally:
            if connection.is_open:
                connection.close()
    except pika.exceptions.ChannelClosedByBroker as error:
        raise OperationError(
            ScalePolicyReason.SOURCE_UNAVAILABLE, f"{target.display}: {error.reply_text}"
        ) from None
    except (pika.exceptions.AMQPError, OSError) as error:
        raise OperationError(
            ScalePolicyReason.SOURCE_UNAVAILABLE, f"{target.display} unreachable: {type(error).__name__}"
        ) from None
    return int(method.message_count), int(method.consumer_count)


def _one_attempt(target: AmqpTarget, timeout: float) -> Any:
    """The target's pika parameters for one try bounded by `timeout` (pika retries and waits otherwise)."""
    params = target.parameters
    params.connection_attempts = 1
    params.socket_timeout = params.stack_timeout = params.blocked_connection_timeout = timeout
    return params


def management(target_name: str, api_url: str, timeout: float) -> Check:
    check = "broker"
    where = f"{target_name} -> {display(api_url)}"
    try:
        get_json(api_url.rstrip("/") + "/overview", timeout, ScalePolicyReason.SOURCE_UNAVAILABLE)
    except OperationError as error:
        host = urllib.parse.urlsplit(api_url).hostname or ""
        return failed(
            check, where, f"{FROM_HERE}: {error.message}", unreachable_hint(host, "the management API")
        )
    return passed(check, where, f"management API answers {FROM_HERE}")


def bucket(
    target_name: str, storage: S3Storage, keys: tuple[str, str], ca: bytes | None, timeout: float
) -> list[Check]:
    """The bucket answers with these keys; with `objectLock` set, the bucket's Object Lock agrees."""
    check = "storage"
    where = f"{target_name} -> s3://{storage.bucket}"
    location = S3Location(
        bucket=storage.bucket,
        prefix=storage.prefix,
        region=storage.region,
        endpoint=storage.endpoint,
        force_path_style=storage.force_path_style,
        access_key_id=keys[0],
        secret_access_key=keys[1],
        ca_bundle=ca,
    )
    try:
        with Bucket(location) as opened:
            opened.client.head_bucket(Bucket=storage.bucket)
            lock = getattr(storage, "object_lock", None)  # storage.s3.objectLock, where the API has it
            if lock is None:
                return [passed(check, where, f"bucket reachable {FROM_HERE}")]
            configuration = opened.client.get_object_lock_configuration(Bucket=storage.bucket)
    except Exception as error:  # boto3 raises many types; storage_error names bucket and cause, no keys
        translated = storage_error(error, f"checking s3://{storage.bucket}")
        return [
            failed(
                check,
                where,
                f"{FROM_HERE}: {translated.message}",
                "check the bucket's name, endpoint, region and the access keys in the Secret",
            )
        ]
    return [
        passed(check, where, f"bucket reachable {FROM_HERE}"),
        object_lock(where, _lock_fields(lock), configuration.get("ObjectLockConfiguration") or {}),
    ]


def _lock_fields(lock: Any) -> dict[str, str]:
    mode = getattr(lock, "mode", None)
    retain_for = getattr(lock, "retain_for", None)
    return {"mode": str(getattr(mode, "value", mode) or ""), "retainFor": str(retain_for or "")}


def object_lock(where: str, wanted: dict[str, str], configuration: Mapping[str, Any]) -> Check:
    """storage.s3.objectLock against the bucket's own configuration (pure)."""
    check = "objectLock"
    if configuration.get("ObjectLockEnabled") != "Enabled":
        return failed(
            check,
            where,
            "objectLock is set but the bucket has no Object Lock: locked writes will be refused",
            "Object Lock is chosen at a bucket's creation: create one with it, name it in storage.s3.bucket",
        )
    retention = (configuration.get("Rule") or {}).get("DefaultRetention") or {}
    if not retention:
        return passed(check, where, f"Object Lock enabled; objects locked {wanted['mode']} by the operator")
    default_mode = str(retention.get("Mode", ""))
    default_days = int(retention.get("Days") or 0) + 365 * int(retention.get("Years") or 0)
    if default_mode and wanted["mode"] and default_mode != wanted["mode"]:
        return warned(
            check,
            where,
            f"the bucket's default retention is {default_mode}, objectLock asks for {wanted['mode']}",
            "make them agree: the stricter mode wins on every object the operator writes",
        )
    if wanted["retainFor"] not in ("", "retention"):
        retain_days = parse_duration(wanted["retainFor"]).total_seconds() / 86400
        if default_days > retain_days:
            return warned(
                check,
                where,
                f"the bucket locks objects {default_days}d by default, longer than retainFor"
                f" {wanted['retainFor']}: pruning will be refused until then",
                "lower the bucket's default retention, or raise retainFor to match it",
            )
    return passed(
        check, where, f"Object Lock enabled, default retention {default_mode} {default_days}d agrees"
    )


def certificate(target_name: str, pem: bytes, now: dt.datetime) -> Check:
    """Days until the leaf certificate of a kubernetes.io/tls Secret expires (pure)."""
    check = "tls"
    try:
        leaf = x509.load_pem_x509_certificates(pem)[0]
    except ValueError:
        return failed(
            check,
            target_name,
            "tls.crt holds no PEM certificate",
            "put the certificate chain (PEM) in tls.crt",
        )
    expires = leaf.not_valid_after_utc
    days = (expires - now).total_seconds() / 86400
    subject = leaf.subject.rfc4514_string() or "(no subject)"
    message = f"{subject} expires {expires:%Y-%m-%d} ({days:.0f} days)"
    if days < TLS_FAIL_DAYS:
        verb = "expired" if days < 0 else "expires in under a week"
        return failed(
            check,
            target_name,
            f"{message}: {verb}",
            "renew it (cert-manager: `cmctl renew`), then restart what uses it",
        )
    if days < TLS_WARN_DAYS:
        return warned(check, target_name, message, "renew it within the month; is its renewal automated?")
    return passed(check, target_name, message)
