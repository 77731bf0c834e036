"""ScalePolicy end to end: the operator process, real RabbitMQ and Prometheus, real Deployments.

The control plane has no kubelet: pods stay Pending, but spec.replicas and /scale are real. Every
policy polls each second with short windows, so each test takes seconds; none sleeps blindly.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from dev_stack import common, rabbitmq
from tests.e2e.conftest import OPERATOR_NAMESPACE, OperatorProcess, service_account_kubeconfig
from tests.e2e.helpers import condition, deployment, policy, queue_trigger, wait_for
from tests.harness import Kubectl, Stack
from tests.scalepolicy_cases import REFUSED, REFUSED_IDS, window

pytestmark = pytest.mark.e2e

GITOPS_MANAGER = "argocd-controller"


def gitops_apply(kubectl: Kubectl, manifest: dict[str, Any]) -> None:
    """A server-side apply as a GitOps tool does it, under its own field manager."""
    kubectl.run(
        "apply", "--server-side", f"--field-manager={GITOPS_MANAGER}", "-f", "-", stdin=json.dumps(manifest)
    )


def publish(amqp_uri: str, queue: str, count: int) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_uri))
    channel = connection.channel()
    channel.queue_declare(queue, durable=True)
    for _ in range(count):
        channel.basic_publish("", queue, b"job", pika.BasicProperties(delivery_mode=2))  # survives a restart
    connection.close()


def purge(amqp_uri: str, queue: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_uri))
    connection.channel().queue_purge(queue)
    connection.close()


def replicas(kubectl: Kubectl, name: str) -> int:
    return int(kubectl.get("deployment", name)["spec"]["replicas"])


def wait_replicas(
    kubectl: Kubectl, name: str, count: int, operator: OperatorProcess, timeout: float = 30
) -> None:
    wait_for(f"{name} at {count} replicas", lambda: replicas(kubectl, name) == count, timeout, operator)


def holds(kubectl: Kubectl, name: str, count: int, seconds: float) -> None:
    """The Deployment stays at `count` for `seconds` (several polls)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert replicas(kubectl, name) == count
        time.sleep(0.3)


def status_of(kubectl: Kubectl, name: str) -> dict[str, Any]:
    return dict(kubectl.get("scalepolicy", name).get("status") or {})


def wait_condition(
    kubectl: Kubectl, name: str, type_: str, status: str, operator: OperatorProcess, reason: str | None = None
) -> dict[str, Any]:
    def matches() -> dict[str, Any] | None:
        obj = kubectl.get("scalepolicy", name)
        found = next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), None)
        ok = found and found["status"] == status and (reason is None or found["reason"] == reason)
        return obj if ok else None

    return wait_for(f"{name} {type_}={status} {reason or ''}", matches, 30, operator)  # type: ignore[no-any-return]


@pytest.fixture
def rabbitmq_secret(kubectl: Kubectl, stack: Stack) -> str:
    """Secret `rabbitmq`: key `uri` the management API's URL, key `amqp` an AMQP URI."""
    kubectl.run(
        "create", "secret", "generic", "rabbitmq", f"--from-literal=uri={stack.rabbitmq_api}",
        f"--from-literal=amqp={stack.amqp_uri}",
    )  # fmt: skip
    return "rabbitmq"


def make_queue(amqp_uri: str) -> Iterator[str]:
    """A durable queue, deleted after the test; each call opens its own connection, so a test may
    stop RabbitMQ in between."""
    name = f"t-{os.urandom(5).hex()}"
    publish(amqp_uri, name, 0)
    yield name
    connection = pika.BlockingConnection(pika.URLParameters(amqp_uri))
    connection.channel().queue_delete(name)
    connection.close()


queue = pytest.fixture(make_queue, name="queue")
second_queue = pytest.fixture(make_queue, name="second_queue")


def test_queue_depth_scales_to_max_then_back_after_the_window_with_calm_status(
    operator_alive: OperatorProcess, kubectl: Kubectl, rabbitmq_secret: str, queue: str, amqp_uri: str
) -> None:
    gitops_apply(kubectl, deployment("worker"))
    publish(amqp_uri, queue, 100)
    kubectl.apply(policy("workers", "worker", [queue_trigger("jobs", queue)]))
    wait_replicas(kubectl, "worker", 5, operator_alive)
    kubectl.run("wait", "--for=condition=Ready", "scalepolicy/workers", "--timeout=30s")
    status = status_of(kubectl, "workers")
    assert status["lastDecision"]["trigger"] == "jobs" and status["lastDecision"]["value"] == 100
    assert "capped at the maximum 5" in status["lastDecision"]["reason"]
    assert condition({"status": status}, "ScalingLimited")["reason"] == "AtMaximum"
    # Steady state: polls go on, the status is not written again.
    version = kubectl.get("scalepolicy", "workers")["metadata"]["resourceVersion"]
    holds(kubectl, "worker", 5, 3)
    assert kubectl.get("scalepolicy", "workers")["metadata"]["resourceVersion"] == version
    scraped = operator_alive.scrape()
    series = f'namespace="{kubectl.namespace}",scalepolicy="workers",trigger="jobs"'
    assert f"habitat_scalepolicy_trigger_value{{{series}}} 100.0" in scraped
    purge(amqp_uri, queue)
    wait_replicas(kubectl, "worker", 1, operator_alive)
    printed = kubectl.run("get", "scalepolicy", "workers").stdout.split("\n")[0].split()
    assert printed == ["NAME", "TARGET", "MIN", "MAX", "DESIRED", "CURRENT", "ACTIVE", "AGE"]


def test_min_zero_scales_to_zero_after_the_cooldown_and_activates_above_the_threshold(
    operator_alive: OperatorProcess, kubectl: Kubectl, rabbitmq_secret: str, queue: str, amqp_uri: str
) -> None:
    gitops_apply(kubectl, deployment("worker", 2))
    trigger = queue_trigger(
        "jobs", queue, activationThreshold=5, source="amqp", secretRef={"name": "rabbitmq", "key": "amqp"}
    )
    kubectl.apply(policy("workers", "worker", [trigger], minReplicas=0, cooldownPeriod=2))
    wait_replicas(kubectl, "worker", 0, operator_alive)
    assert condition(kubectl.get("scalepolicy", "workers"), "Active")["status"] == "False"
    publish(amqp_uri, queue, 3)  # below the activation threshold: stays at zero
    holds(kubectl, "worker", 0, 3)
    publish(amqp_uri, queue, 10)  # 13 > 5: active, ceil(13 / 10) = 2
    wait_replicas(kubectl, "worker", 2, operator_alive)
    assert condition(kubectl.get("scalepolicy", "workers"), "Active")["status"] == "True"


def test_a_formula_combines_two_queues(
    operator_alive: OperatorProcess,
    kubectl: Kubectl,
    rabbitmq_secret: str,
    queue: str,
    second_queue: str,
    amqp_uri: str,
) -> None:
    gitops_apply(kubectl, deployment("worker"))
    publish(amqp_uri, queue, 30)
    publish(amqp_uri, second_queue, 20)
    triggers = [queue_trigger("queue_a", queue), queue_trigger("queue_b", second_queue)]
    formula = {"expression": "queue_a + queue_b / 2", "target": 10}
    kubectl.apply(policy("workers", "worker", triggers, maxReplicas=10, formula=formula))
    wait_replicas(kubectl, "worker", 4, operator_alive)  # ceil((30 + 20 / 2) / 10)
    assert status_of(kubectl, "workers")["lastDecision"]["trigger"] == "formula"


def test_step_and_percent_policies_limit_each_change(
    operator_alive: OperatorProcess, kubectl: Kubectl, rabbitmq_secret: str, queue: str, amqp_uri: str
) -> None:
    publish(amqp_uri, queue, 200)
    for name, rule in (
        ("step", {"type": "Pods", "value": 1}),
        ("percent", {"type": "Percent", "value": 100}),
    ):
        gitops_apply(kubectl, deployment(name, 2))
        up = {"stabilizationWindowSeconds": 0, "policies": [rule | {"periodSeconds": 600}]}
        kubectl.apply(
            policy(name, name, [queue_trigger("jobs", queue)], maxReplicas=20, behavior={"scaleUp": up})
        )
    wait_replicas(kubectl, "step", 3, operator_alive)  # at most one pod per period
    wait_replicas(kubectl, "percent", 4, operator_alive)  # at most doubled per period
    holds(kubectl, "step", 3, 2)
    assert replicas(kubectl, "percent") == 4
    for name in ("step", "percent"):
        assert condition(kubectl.get("scalepolicy", name), "ScalingLimited")["reason"] == "RateLimited"


def test_a_schedule_window_raises_the_floor_and_lowers_it_when_it_ends(
    operator_alive: OperatorProcess, kubectl: Kubectl
) -> None:
    gitops_apply(kubectl, deployment("api"))
    now = dt.datetime.now(dt.UTC)
    # A daily window that opened at the start of this minute and closes 8 s from now.
    open_for = now.second + 8
    window = {
        "start": f"{now.minute} {now.hour} * * *",
        "duration": f"{open_for}s",
        "timezone": "UTC",
        "minReplicas": 3,
    }
    closes = now.replace(second=0, microsecond=0) + dt.timedelta(seconds=open_for)
    kubectl.apply(policy("api", "api", [{"name": "period_close", "type": "schedule", "schedule": window}]))
    wait_replicas(kubectl, "api", 3, operator_alive)
    assert condition(kubectl.get("scalepolicy", "api"), "Active")["reason"] == "WindowOpen"
    wait_replicas(kubectl, "api", 1, operator_alive, timeout=30)
    assert dt.datetime.now(dt.UTC) >= closes


def test_rabbitmq_stopped_holds_the_fallback_and_recovers(
    operator_alive: OperatorProcess, kubectl: Kubectl, rabbitmq_secret: str, queue: str, amqp_uri: str
) -> None:
    gitops_apply(kubectl, deployment("worker"))
    publish(amqp_uri, queue, 20)
    fallback = {"replicas": 3, "failureThreshold": 2}
    kubectl.apply(policy("workers", "worker", [queue_trigger("jobs", queue)], fallback=fallback))
    wait_replicas(kubectl, "worker", 2, operator_alive)
    with rabbitmq_stopped():
        obj = wait_condition(kubectl, "workers", "Fallback", "True", operator_alive)
        assert "jobs failed 2 or more polls in a row" in condition(obj, "Fallback")["message"]
        assert condition(obj, "Ready")["status"] == "True"  # Ready follows configuration, not metrics
        wait_replicas(kubectl, "worker", 3, operator_alive)
        holds(kubectl, "worker", 3, 2)
    wait_condition(kubectl, "workers", "Fallback", "False", operator_alive)
    wait_replicas(kubectl, "worker", 2, operator_alive)
    assert "habitat_scalepolicy_trigger_errors_total" in operator_alive.scrape()


class rabbitmq_stopped:  # lower case: it reads as a context, like contextlib's
    """Stops the stack's RabbitMQ application (the node stays, so it comes back in seconds)."""

    def _ctl(self, command: str) -> None:
        state = common.State.load()
        env = rabbitmq.rabbitmq_env(state)
        argv = common.as_user("rabbitmq", ["/usr/sbin/rabbitmqctl", "-n", env["RABBITMQ_NODENAME"], command])
        subprocess.run(argv, env={**os.environ, **env}, check=True, capture_output=True, timeout=60)

    def __enter__(self) -> None:
        self._ctl("stop_app")

    def __exit__(self, *_: object) -> None:
        self._ctl("start_app")
        state = common.State.load()
        common.wait_until("rabbitmq", lambda: rabbitmq.amqp_ready(state), 60)
        common.wait_until("rabbitmq management", lambda: rabbitmq.management_ready(state), 60)


def test_a_prometheus_trigger_queries_the_stacks_prometheus(
    operator_alive: OperatorProcess, kubectl: Kubectl, stack: Stack
) -> None:
    gitops_apply(kubectl, deployment("api"))
    query = {"serverAddress": stack.prometheus_url, "query": "vector(35)", "targetValue": 10}
    kubectl.apply(policy("api", "api", [{"name": "load", "type": "prometheus", "prometheus": query}]))
    wait_replicas(kubectl, "api", 4, operator_alive)
    assert status_of(kubectl, "api")["lastDecision"]["trigger"] == "load"


def test_a_value_with_no_finite_replica_count_is_a_trigger_failure_with_status_and_an_event(
    operator_alive: OperatorProcess, kubectl: Kubectl, stack: Stack
) -> None:
    """1e300 / 1e-300 overflows: the policy holds the target, and says which trigger and value."""
    gitops_apply(kubectl, deployment("api", 2))
    query = {"serverAddress": stack.prometheus_url, "query": "vector(1e300)", "targetValue": 1e-300}
    kubectl.apply(policy("api", "api", [{"name": "load", "type": "prometheus", "prometheus": query}]))
    obj = wait_condition(kubectl, "api", "Fallback", "False", operator_alive, reason="TriggerFailing")
    message = (
        "load: 1e+300 / 1e-300 per replica is not a finite number of replicas;"
        " never scaling down while it fails"
    )
    assert condition(obj, "Fallback")["message"] == message
    assert condition(obj, "Ready")["status"] == "True"
    holds(kubectl, "api", 2, 3)
    warnings = [
        e["message"]
        for e in json.loads(kubectl.run("get", "events", "-o", "json").stdout)["items"]
        if e["reason"] == "TriggerFailing"
    ]
    assert warnings == [message]
    assert "OverflowError" not in operator_alive.log_text()


def test_allowed_metrics_endpoints_refuse_another_host_and_failures_read_coarse(
    operator: OperatorProcess,
    stack: Stack,
    kubectl: Kubectl,
    namespace: str,
    tmp_path: Path,
    rabbitmq_secret: str,
    queue: str,
) -> None:
    """An operator started with --allowed-metrics-endpoints refuses a serverAddress elsewhere as
    InvalidSpec and a RabbitMQ URL elsewhere as a failing trigger, and an allowed address that
    fails says only PrometheusUnreachable; the log has why."""
    if operator.process is not None and operator.process.poll() is None:
        operator.kill()  # the shared operator watches every namespace and allows any host
    kubeconfig = service_account_kubeconfig(
        stack, Kubectl(stack, OPERATOR_NAMESPACE), tmp_path / "kubeconfig"
    )
    own = OperatorProcess(
        kubeconfig,
        tmp_path / "backups",
        tmp_path / "operator.log",
        namespaces=(namespace,),
        extra_args=("--allowed-metrics-endpoints=*.monitoring.svc,127.0.0.2",),
    )
    own.start()
    try:
        gitops_apply(kubectl, deployment("api", 2))
        gitops_apply(kubectl, deployment("probe", 2))
        query = {"serverAddress": stack.prometheus_url, "query": "vector(35)", "targetValue": 10}
        kubectl.apply(policy("api", "api", [{"name": "load", "type": "prometheus", "prometheus": query}]))
        obj = wait_condition(kubectl, "api", "Stalled", "True", own, reason="InvalidSpec")
        assert condition(obj, "Stalled")["message"] == (
            f"invalid spec: spec.triggers[load].prometheus.serverAddress: {stack.prometheus_url} is not"
            " among the operator's --allowed-metrics-endpoints"
        )

        closed = f"http://127.0.0.2:{common.free_port()}"
        probe = query | {"serverAddress": closed}
        kubectl.apply(policy("probe", "probe", [{"name": "load", "type": "prometheus", "prometheus": probe}]))
        obj = wait_condition(kubectl, "probe", "Fallback", "False", own, reason="TriggerFailing")
        assert condition(obj, "Fallback")["message"] == (
            f"load: Prometheus at {closed} gave no answer (PrometheusUnreachable);"
            " never scaling down while it fails"
        )
        gitops_apply(kubectl, deployment("worker", 2))
        kubectl.apply(policy("workers", "worker", [queue_trigger("jobs", queue)]))
        obj = wait_condition(kubectl, "workers", "Fallback", "False", own, reason="TriggerFailing")
        refused = "(Secret rabbitmq) is not among the operator's --allowed-metrics-endpoints"
        assert refused in condition(obj, "Fallback")["message"]
        holds(kubectl, "api", 2, 2)
        assert replicas(kubectl, "probe") == replicas(kubectl, "worker") == 2
        assert "prometheus trigger failed" in own.log_text() and "refused" in own.log_text().lower()
    finally:
        own.stop()


def test_conflict_paused_dry_run_and_a_missing_target(
    operator_alive: OperatorProcess, kubectl: Kubectl, rabbitmq_secret: str, queue: str, amqp_uri: str
) -> None:
    publish(amqp_uri, queue, 100)
    trigger = [queue_trigger("jobs", queue)]
    kubectl.apply(policy("first", "worker", trigger))
    obj = wait_condition(kubectl, "first", "Ready", "False", operator_alive, reason="TargetNotFound")
    assert "Deployment worker not found" in condition(obj, "Ready")["message"]
    kubectl.apply(policy("second", "worker", trigger))
    obj = wait_condition(kubectl, "second", "Stalled", "True", operator_alive, reason="Conflict")
    assert condition(obj, "Stalled")["message"] == "ScalePolicy first already scales Deployment worker"
    gitops_apply(kubectl, deployment("worker"))  # the target appears: the first policy recovers
    wait_condition(kubectl, "first", "Ready", "True", operator_alive)
    wait_replicas(kubectl, "worker", 5, operator_alive)

    gitops_apply(kubectl, deployment("paused"))
    gitops_apply(kubectl, deployment("dry"))
    kubectl.apply(policy("paused", "paused", trigger, paused=True))
    kubectl.apply(policy("dry", "dry", trigger, dryRun=True))
    wait_condition(kubectl, "paused", "Paused", "True", operator_alive)
    wait_for(
        "the dry run's decision",
        lambda: status_of(kubectl, "dry").get("desiredReplicas") == 5,
        30,
        operator_alive,
    )
    holds(kubectl, "paused", 1, 2)
    assert replicas(kubectl, "dry") == 1
    assert condition(kubectl.get("scalepolicy", "dry"), "Ready")["reason"] == "DryRun"


@pytest.fixture
def scale_patch_revoked(stack: Stack) -> Iterator[Callable[[], None]]:
    """The operator's ClusterRole without `patch` on deployments/scale, as a cluster whose RBAC was
    cut down would have it; the fixture gives back what restores it, and restores it in the end."""
    admin = Kubectl(stack, OPERATOR_NAMESPACE)
    role = admin.get("clusterrole", "habitat-operator")
    original = {k: role[k] for k in ("apiVersion", "kind", "rules")} | {
        "metadata": {"name": "habitat-operator"}
    }
    narrowed = copy.deepcopy(original)
    for rule in narrowed["rules"]:
        if "deployments/scale" in rule.get("resources", []):
            rule["verbs"] = [verb for verb in rule["verbs"] if verb != "patch"]
    admin.run("replace", "-f", "-", stdin=json.dumps(narrowed))

    def restore() -> None:
        admin.run("replace", "-f", "-", stdin=json.dumps(original))

    try:
        yield restore
    finally:
        restore()


def test_rbac_without_deployments_scale_patch_stalls_the_policy_naming_the_permission(
    operator_alive: OperatorProcess,
    kubectl: Kubectl,
    rabbitmq_secret: str,
    queue: str,
    amqp_uri: str,
    scale_patch_revoked: Callable[[], None],
) -> None:
    gitops_apply(kubectl, deployment("worker"))
    publish(amqp_uri, queue, 30)
    kubectl.apply(policy("workers", "worker", [queue_trigger("jobs", queue)]))

    obj = wait_condition(kubectl, "workers", "Ready", "False", operator_alive, reason="TargetForbidden")
    message = condition(obj, "Ready")["message"]
    assert "patch" in message and "deployments/scale" in message, message
    assert obj["status"]["phase"] == "Stalled"
    assert condition(obj, "Stalled")["status"] == "True"
    assert replicas(kubectl, "worker") == 1

    scale_patch_revoked()  # the Role is fixed: the policy recovers on a later poll
    wait_replicas(kubectl, "worker", 3, operator_alive)
    wait_condition(kubectl, "workers", "Ready", "True", operator_alive)


def hpa(name: str, target: str, min_replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
            "minReplicas": min_replicas,
            "maxReplicas": 10,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}},
                }
            ],
        },
    }


def test_an_hpa_on_the_same_target_stalls_the_policy_until_it_is_gone(
    operator_alive: OperatorProcess, kubectl: Kubectl, rabbitmq_secret: str, queue: str, amqp_uri: str
) -> None:
    """A ScalePolicy (min 0, an idle queue: it would scale to zero) and an HPA on one Deployment:
    the policy changes nothing and says which HPA, until the HPA is deleted."""
    gitops_apply(kubectl, deployment("worker", 2))
    kubectl.apply(hpa("worker-hpa", "worker", 2))
    kubectl.apply(
        policy("workers", "worker", [queue_trigger("jobs", queue)], minReplicas=0, cooldownPeriod=0)
    )
    obj = wait_condition(kubectl, "workers", "Stalled", "True", operator_alive, reason="ConflictWithHPA")
    assert condition(obj, "Stalled")["message"] == (
        "HorizontalPodAutoscaler worker-hpa already scales Deployment worker; "
        "this policy changes nothing until it is gone"
    )
    assert obj["status"]["phase"] == "Stalled"
    holds(kubectl, "worker", 2, 3)
    assert "lastScaleTime" not in status_of(kubectl, "workers")
    reasons = [e["reason"] for e in json.loads(kubectl.run("get", "events", "-o", "json").stdout)["items"]]
    assert "ConflictWithHPA" in reasons and "Scaled" not in reasons

    kubectl.run("delete", "horizontalpodautoscaler", "worker-hpa")
    wait_condition(kubectl, "workers", "Ready", "True", operator_alive)
    wait_replicas(kubectl, "worker", 0, operator_alive)


def test_another_managers_server_side_apply_keeps_the_operators_replicas(
    operator_alive: OperatorProcess, kubectl: Kubectl, stack: Stack
) -> None:
    gitops_apply(kubectl, deployment("api", 1))
    query = {"serverAddress": stack.prometheus_url, "query": "vector(30)", "targetValue": 10}
    kubectl.apply(policy("api", "api", [{"name": "load", "type": "prometheus", "prometheus": query}]))
    wait_replicas(kubectl, "api", 3, operator_alive)
    # Git no longer carries replicas (docs/scaling.md); the next sync changes the template only.
    gitops_apply(kubectl, deployment("api", None, label="v2"))
    applied = kubectl.get("deployment", "api")
    assert applied["spec"]["template"]["metadata"]["labels"]["release"] == "v2"
    assert applied["spec"]["replicas"] == 3
    shown = kubectl.run("get", "deployment", "api", "-o", "json", "--show-managed-fields").stdout
    managers = {
        entry["manager"]
        for entry in json.loads(shown)["metadata"]["managedFields"]
        if "f:replicas" in entry.get("fieldsV1", {}).get("f:spec", {})
    }
    assert managers == {"habitat-operator"}
    holds(kubectl, "api", 3, 2)


def test_a_killed_operator_resumes_and_the_target_ends_right(
    operator_alive: OperatorProcess, kubectl: Kubectl, rabbitmq_secret: str, queue: str, amqp_uri: str
) -> None:
    gitops_apply(kubectl, deployment("worker"))
    publish(amqp_uri, queue, 100)
    slow = {"stabilizationWindowSeconds": 0, "policies": [{"type": "Pods", "value": 1, "periodSeconds": 1}]}
    kubectl.apply(
        policy(
            "workers",
            "worker",
            [queue_trigger("jobs", queue)],
            behavior={"scaleUp": slow, "scaleDown": {"stabilizationWindowSeconds": 2}},
        )
    )
    wait_for("the first step up", lambda: replicas(kubectl, "worker") >= 2, 30, operator_alive)
    operator_alive.kill()  # mid-way: one pod per second towards 5
    stopped_at = replicas(kubectl, "worker")
    assert stopped_at < 5
    operator_alive.start()
    wait_replicas(kubectl, "worker", 5, operator_alive)
    wait_for(
        "status to catch up",
        lambda: status_of(kubectl, "workers").get("currentReplicas") == 5,
        30,
        operator_alive,
    )
    purge(amqp_uri, queue)
    wait_replicas(kubectl, "worker", 1, operator_alive)
    scaled = [
        e
        for e in json.loads(kubectl.run("get", "events", "-o", "json").stdout)["items"]
        if e["reason"] == "Scaled"
    ]
    assert scaled, "each change posts a Scaled event"


@pytest.mark.parametrize(("change", "refusal", "_"), REFUSED, ids=REFUSED_IDS)
def test_a_bad_spec_is_refused_at_apply_time(
    installed: None, kubectl: Kubectl, change: dict[str, Any], refusal: str, _: str
) -> None:
    manifest = policy("bad", "worker", [window()])
    manifest["spec"] |= change
    result = kubectl.apply(manifest, check=False)
    assert result.returncode != 0 and refusal in result.stderr, result.stderr
