"""What `kubectl habitat diagnose` checks (its command line is plugin/diagnose.py, which imports this
only when it runs: the database, broker, S3 and certificate libraries cost a second to import)."""

from __future__ import annotations

import argparse
import base64
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from habitat_operator import timestamps
from habitat_operator.api.scalepolicy import ScalePolicyReason
from habitat_operator.engines.http import display, get_json
from habitat_operator.errors import OperationError
from habitat_operator.plugin import probes
from habitat_operator.plugin.checks import Check, failed, passed, warned
from habitat_operator.plugin.kubectl import Kubectl, KubectlError
from habitat_operator.plugin.operator_health import operator_checks
from habitat_operator.plugin.references import Purpose, References, SecretUse, references

SecretData = Mapping[tuple[str, str], Mapping[str, bytes]]  # (namespace, name) -> key -> value
TLS_TYPE = "kubernetes.io/tls"
PARALLEL_PROBES = 8
_CONNECTED = {
    Purpose.POSTGRES: probes.postgres,
    Purpose.AMQP: probes.amqp,
    Purpose.MANAGEMENT: probes.management,
}


def diagnose(kubectl: Kubectl, args: argparse.Namespace) -> list[Check]:
    checks = operator_checks(kubectl, args.operator_url)
    items = kubectl.list(["habitat"])
    found = references(items)
    checks += [
        warned("spec", f"{namespace}/{resource}", why, "this plugin and the CRDs differ in version?")
        for namespace, resource, why in found.unreadable
    ]
    try:
        secrets = kubectl.list(["secrets"])
    except KubectlError as error:
        checks.append(
            warned("secret", "secrets", f"cannot list Secrets: {error}", "ask for `list` on secrets")
        )
        return checks + alert_checks(args, kubectl)
    data = {
        (s["metadata"].get("namespace", ""), s["metadata"]["name"]): _decoded(s.get("data") or {})
        for s in secrets
    }
    checks += secret_checks(found.secrets, data)
    checks += _parallel(connection_probes(found, data, args.connect_timeout))
    now = timestamps.now()
    for secret in secrets:
        if secret.get("type") == TLS_TYPE:
            meta = secret["metadata"]
            pem = data[(meta.get("namespace", ""), meta["name"])].get("tls.crt", b"")
            checks.append(probes.certificate(f"secret {meta.get('namespace')}/{meta['name']}", pem, now))
    return checks + alert_checks(args, kubectl)


def secret_checks(uses: Iterable[SecretUse], data: SecretData) -> list[Check]:
    """Each Secret named exists and holds every key named (pure); values are never read here."""
    by_secret: dict[tuple[str, str], list[SecretUse]] = defaultdict(list)
    for use in uses:
        by_secret[(use.namespace, use.secret)].append(use)
    checks: list[Check] = []
    for (namespace, name), named in sorted(by_secret.items()):
        target = f"secret {namespace}/{name}"
        users = _some(sorted({use.resource for use in named}))
        if (namespace, name) not in data:
            checks.append(
                failed(
                    "secret",
                    target,
                    f"not found; named by {users}",
                    f"kubectl -n {namespace} create secret generic {name} "
                    + " ".join(
                        f"--from-literal={key}=..." for key in sorted({k for u in named for k in u.keys})
                    ),
                )
            )
            continue
        missing = {
            (key, use.resource, use.path, use.purpose)
            for use in named
            for key in use.keys
            if key not in data[(namespace, name)]
        }
        for key, resource, path, purpose in sorted(missing):
            checks.append(
                failed(
                    "secret",
                    target,
                    f"has no key {key!r} ({purpose}), which {resource} {path} names",
                    f"add the key to the Secret, or name the key it has in {path}",
                )
            )
        if not missing:
            keys = sorted({key for use in named for key in use.keys})
            checks.append(passed("secret", target, f"holds {', '.join(keys)}; named by {users}"))
    return checks


def connection_probes(
    found: References, data: SecretData, timeout: float
) -> list[Callable[[], Check | list[Check]]]:
    """The tries to make, one per distinct (Secret, key) and bucket; a missing value is already a FAIL."""
    tries: dict[Any, Callable[[], Check | list[Check]]] = {}
    for use in found.secrets:
        probe = _CONNECTED.get(use.purpose)
        value = _text(data, use.namespace, use.secret, use.keys[0])
        if probe is not None and value is not None:
            target = f"secret {use.namespace}/{use.secret}[{use.keys[0]}]"
            tries.setdefault(
                ("connect", use.namespace, use.secret, use.keys[0]), _bind(probe, target, value, timeout)
            )
    for queue in found.queues:
        ref = queue.trigger.secret_ref
        value = _text(data, queue.namespace, ref.name, ref.key)
        if value is not None:
            target = f"{queue.namespace}/{queue.resource}"
            tries[("queue", queue.namespace, queue.resource, queue.path)] = _bind(
                probes.queue, target, queue.trigger, value, timeout
            )
    for storage in found.storages:
        s3 = storage.storage
        credentials = s3.credentials_secret_ref
        key_id = _text(data, storage.namespace, credentials.name, credentials.access_key_id_key)
        secret_key = _text(data, storage.namespace, credentials.name, credentials.secret_access_key_key)
        ca = (
            (data.get((storage.namespace, s3.ca_secret_ref.name)) or {}).get(s3.ca_secret_ref.key)
            if s3.ca_secret_ref
            else None
        )
        if key_id is not None and secret_key is not None:
            identity = (
                "bucket",
                storage.namespace,
                credentials.name,
                s3.endpoint,
                s3.bucket,
                str(getattr(s3, "object_lock", None)),
            )
            target = f"{storage.namespace}/{storage.resource} {storage.path}"
            tries.setdefault(identity, _bind(probes.bucket, target, s3, (key_id, secret_key), ca, timeout))
    return list(tries.values())


def alert_checks(args: argparse.Namespace, kubectl: Kubectl) -> list[Check]:
    if not args.prometheus_url:
        return []
    where = f"prometheus {display(args.prometheus_url)}"
    try:
        body = get_json(
            args.prometheus_url.rstrip("/") + "/api/v1/alerts",
            args.connect_timeout,
            ScalePolicyReason.PROMETHEUS_UNREACHABLE,
        )
    except OperationError as error:
        return [
            warned(
                "alerts", where, error.message, "check --prometheus-url (e.g. through kubectl port-forward)"
            )
        ]
    namespace = None if args.all_namespaces else kubectl.namespace
    return firing(body.get("data", {}).get("alerts", []), namespace, where)


def firing(alerts: Iterable[Mapping[str, Any]], namespace: str | None, where: str) -> list[Check]:
    """Habitat's alerts firing (in `namespace`, or cluster-wide ones): critical FAILs, others WARN (pure)."""
    checks: list[Check] = []
    for alert in alerts:
        labels = alert.get("labels") or {}
        name = str(labels.get("alertname", ""))
        if alert.get("state") != "firing" or not name.startswith("Habitat"):
            continue
        if namespace is not None and labels.get("namespace") not in (None, namespace):
            continue
        summary = str((alert.get("annotations") or {}).get("summary") or name)
        hint = f"docs/runbooks/{name}.md"
        subject = f"{where} {name}"
        checks.append(
            failed("alerts", subject, summary, hint)
            if labels.get("severity") == "critical"
            else warned("alerts", subject, summary, hint)
        )
    return checks or [passed("alerts", where, "no Habitat alert firing")]


def _some(names: list[str], shown: int = 3) -> str:
    """A few names, and how many more: a schedule's runs all name its Secrets."""
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


def _parallel(tries: list[Callable[[], Check | list[Check]]]) -> list[Check]:
    with ThreadPoolExecutor(max_workers=PARALLEL_PROBES) as pool:
        results = list(pool.map(lambda attempt: attempt(), tries))
    return [check for result in results for check in (result if isinstance(result, list) else [result])]


def _bind(function: Callable[..., Check | list[Check]], *arguments: Any) -> Callable[[], Check | list[Check]]:
    return lambda: function(*arguments)


def _decoded(data: Mapping[str, str]) -> dict[str, bytes]:
    return {key: base64.b64decode(value) for key, value in data.items()}


def _text(data: SecretData, namespace: str, name: str, key: str) -> str | None:
    value = (data.get((namespace, name)) or {}).get(key)
    if value is None:
        return None
    return value.decode(errors="replace").strip()
