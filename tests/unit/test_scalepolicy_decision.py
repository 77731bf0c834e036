"""ScalePolicy's pure logic: the formula, schedule windows, the HPA behavior and one poll's decision."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from prometheus_client import generate_latest
from pydantic import ValidationError

from habitat_operator.api.scalepolicy import Fallback, ScalePolicySpec, ScheduleTrigger
from habitat_operator.controllers.base.endpoints import endpoint_allowed
from habitat_operator.controllers.scalepolicy import metrics, windows
from habitat_operator.controllers.scalepolicy.conflicts import Autoscaler, autoscaled_target, standoff
from habitat_operator.controllers.scalepolicy.decision import PolicyState, Reading, decide
from habitat_operator.controllers.scalepolicy.formula import Formula
from habitat_operator.controllers.scalepolicy.run import target_key
from habitat_operator.controllers.scalepolicy.sources import check_endpoints
from tests.scalepolicy_cases import REFUSED, REFUSED_IDS, window

NOON = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.UTC)


def queue(name: str, per_replica: int = 10, activation: int = 0) -> dict[str, Any]:
    return {
        "name": name,
        "type": "rabbitmq",
        "rabbitmq": {
            "queue": name,
            "targetPerReplica": per_replica,
            "activationThreshold": activation,
            "secretRef": {"name": "rmq"},
        },
    }


def spec(*triggers: dict[str, Any], **fields: Any) -> ScalePolicySpec:
    base = {"target": {"kind": "Deployment", "name": "worker"}, "minReplicas": 1, "maxReplicas": 10}
    fast = {"scaleDown": {"stabilizationWindowSeconds": 0}}
    return ScalePolicySpec.model_validate(base | {"behavior": fast, "triggers": list(triggers)} | fields)


def poll(
    policy: ScalePolicySpec,
    values: dict[str, float | None],
    current: int,
    state: PolicyState | None = None,
    now: float = 1000.0,
    wall: dt.datetime = NOON,
) -> int:
    readings = {name: Reading(value, None if value is not None else "down") for name, value in values.items()}
    return decide(policy, readings, current, state or PolicyState(), now, wall).replicas


# ---------------------------------------------------------------- formula


def test_a_formula_evaluates_arithmetic_over_trigger_names() -> None:
    formula = Formula("queue_a + queue_b / 2 - (1 * 0)", {"queue_a", "queue_b"})
    assert formula.names == {"queue_a", "queue_b"}
    assert formula.evaluate({"queue_a": 30, "queue_b": 20}) == 40
    assert Formula("a / b", {"a", "b"}).evaluate({"a": 5, "b": 0}) == 0  # an idle queue's ratio


@pytest.mark.parametrize(
    ("expression", "refusal"),
    [
        ("__import__('os')", "may only use"),
        ("a.real", "may only use"),
        ("a ** 2", "may only use"),
        ("c + 1", "not a rabbitmq or prometheus trigger"),
        ("a +", "not an arithmetic expression"),
        ("a * 1e999", "formula constant 1e999 is not a finite number"),
        ("a * " + "9" * 400, "is not a finite number"),
    ],
)
def test_a_formula_refuses_anything_but_arithmetic(expression: str, refusal: str) -> None:
    with pytest.raises(ValueError, match=refusal):
        Formula(expression, {"a", "b"})


# ---------------------------------------------------------------- the API's checks (CEL's twins)


@pytest.mark.parametrize(("fields", "_", "refusal"), REFUSED, ids=REFUSED_IDS)
def test_the_models_refuse_what_the_apiserver_refuses(fields: dict[str, Any], _: str, refusal: str) -> None:
    with pytest.raises(ValidationError, match=refusal):
        spec(queue("q"), **{"maxReplicas": 5} | fields)


@pytest.mark.parametrize(
    ("fields", "refusal"),
    [
        ({"triggers": [{"name": "q", "type": "prometheus", "rabbitmq": queue("q")["rabbitmq"]}]}, "exactly"),
        ({"triggers": [window(start="99 0 * * *")]}, "invalid cron expression"),
        ({"triggers": [queue("Bad-Name")]}, "should match pattern"),
    ],
)
def test_the_models_refuse_mismatched_types_cron_values_and_bad_names(
    fields: dict[str, Any], refusal: str
) -> None:
    with pytest.raises(ValidationError, match=refusal):
        spec(queue("q"), **fields)


# ---------------------------------------------------------------- schedule windows


def test_a_window_is_open_from_its_cron_start_for_its_duration_in_its_time_zone() -> None:
    close = ScheduleTrigger.model_validate(
        {"start": "0 0 28 * *", "duration": "5d", "timezone": "Europe/Paris", "minReplicas": 6}
    )
    paris = dt.timezone(dt.timedelta(hours=1))
    assert windows.is_open(close, dt.datetime(2026, 11, 28, 0, 0, tzinfo=paris))  # the very start
    assert windows.is_open(close, dt.datetime(2026, 12, 2, 23, 59, tzinfo=paris))
    assert not windows.is_open(close, dt.datetime(2026, 12, 3, 0, 0, tzinfo=paris))
    assert not windows.is_open(close, dt.datetime(2026, 11, 27, 22, 59, tzinfo=dt.UTC))  # 23:59 in Paris


def test_an_open_window_raises_the_floor_and_may_raise_the_ceiling() -> None:
    window = {"start": "0 12 * * *", "duration": "1h", "minReplicas": 6, "maxReplicas": 20}
    policy = spec(queue("q"), {"name": "close", "type": "schedule", "schedule": window})
    assert poll(policy, {"q": 0}, current=1) == 6
    outcome = decide(policy, {"q": Reading(0)}, 6, PolicyState(), 1000.0, NOON)
    assert (outcome.floor, outcome.ceiling, outcome.windows) == (6, 20, ("close",))  # the gauges' bounds
    assert poll(policy, {"q": 150}, current=6, state=PolicyState()) == 12  # ceil(150/10) = 15, 100% per 15s
    assert poll(policy, {"q": 0}, current=6, wall=NOON + dt.timedelta(hours=2)) == 1


# ---------------------------------------------------------------- the decision


def test_the_largest_trigger_wins_and_the_maximum_caps_it() -> None:
    policy = spec(queue("a"), queue("b", per_replica=5))
    assert poll(policy, {"a": 20, "b": 20}, current=4) == 4  # ceil(20/10)=2, ceil(20/5)=4
    state = PolicyState()
    outcome = decide(policy, {"a": Reading(500), "b": Reading(0)}, 8, state, 1000.0, NOON)
    assert outcome.replicas == 10 and outcome.at_maximum and outcome.trigger == "a"


def test_a_missing_metric_never_scales_down_and_the_fallback_holds_after_the_threshold() -> None:
    policy = spec(queue("a"), fallback={"replicas": 5, "failureThreshold": 2})
    state = PolicyState()
    assert poll(policy, {"a": None}, current=3, state=state) == 3  # one failure: hold
    outcome = decide(policy, {"a": Reading(None, "down")}, 3, state, 1001.0, NOON)
    assert outcome.replicas == 5 and outcome.falling_back == ("a",)
    assert poll(policy, {"a": 10}, current=5, state=state, now=1002.0) == 1  # back: the metric decides


def prometheus(name: str, target: float) -> dict[str, Any]:
    query = {"serverAddress": "http://prometheus:9090", "query": "q", "targetValue": target}
    return {"name": name, "type": "prometheus", "prometheus": query}


@pytest.mark.parametrize(
    ("policy", "values", "failure"),
    [
        (
            spec(queue("a"), queue("b"), formula={"expression": "a * b * b", "target": 1}),
            {"a": 1e300, "b": 1e300},
            "formula: inf / 1 per replica is not a finite number of replicas",
        ),
        (
            spec(queue("a"), queue("b"), formula={"expression": "a * b * 0 + a / b", "target": 1}),
            {"a": 1e300, "b": 1e300},  # inf * 0 is NaN
            "formula: nan / 1 per replica is not a finite number of replicas",
        ),
        (
            spec(prometheus("load", 1e-300)),
            {"load": 1e300},
            "load: 1e+300 / 1e-300 per replica is not a finite number of replicas",
        ),
    ],
)
def test_a_value_with_no_finite_replica_count_is_a_failure_within_the_bounds(
    policy: ScalePolicySpec, values: dict[str, float], failure: str
) -> None:
    policy = policy.model_copy(update={"fallback": Fallback(replicas=4, failure_threshold=2)})
    state = PolicyState()
    readings = {name: Reading(value) for name, value in values.items()}
    first = decide(policy, readings, 3, state, 1000.0, NOON)
    assert (first.replicas, first.failures, first.falling_back) == (
        3,
        (failure,),
        (),
    )  # holds, never scales down
    assert first.reason.startswith(f"holding 3: {failure.split(':')[0]} failed: ")
    second = decide(policy, readings, 3, state, 1001.0, NOON)
    assert (second.replicas, second.falling_back) == (4, (failure.split(":")[0],))  # the fallback, within max


def test_scale_to_zero_waits_for_the_cooldown_and_activation_needs_the_threshold() -> None:
    policy = spec(queue("q", activation=5), minReplicas=0, cooldownPeriod=60)
    state = PolicyState()
    assert poll(policy, {"q": 0}, current=2, state=state, now=1000) == 1  # a restart counts as activity
    assert poll(policy, {"q": 0}, current=1, state=state, now=1030) == 1
    assert poll(policy, {"q": 0}, current=1, state=state, now=1061) == 0
    assert poll(policy, {"q": 3}, current=0, state=state, now=1062) == 0  # below the threshold
    assert poll(policy, {"q": 13}, current=0, state=state, now=1063) == 2
    assert poll(policy, {"q": None}, current=0, state=PolicyState(), now=1064) == 1  # unknown is not idle


def test_the_scale_down_window_takes_the_largest_recent_recommendation() -> None:
    policy = spec(queue("q"), behavior={"scaleDown": {"stabilizationWindowSeconds": 30}})
    state = PolicyState()
    assert poll(policy, {"q": 80}, current=8, state=state, now=1000) == 8
    assert poll(policy, {"q": 10}, current=8, state=state, now=1010) == 8  # 8 is still in the window
    assert poll(policy, {"q": 10}, current=8, state=state, now=1031) == 1


@pytest.mark.parametrize(
    ("policy", "expected"),
    [({"type": "Pods", "value": 2}, 4), ({"type": "Percent", "value": 50}, 3)],
)
def test_a_scale_up_policy_limits_each_period(policy: dict[str, Any], expected: int) -> None:
    rules = {"scaleUp": {"policies": [policy | {"periodSeconds": 60}]}}
    state = PolicyState()
    decided = spec(queue("q"), behavior=rules)
    first = poll(decided, {"q": 100}, current=2, state=state, now=1000)
    assert first == expected
    state.memory.changes.append((1000, first - 2))
    assert poll(decided, {"q": 100}, current=first, state=state, now=1010) == first  # same period
    assert poll(decided, {"q": 100}, current=first, state=state, now=1061) > first  # the next one


def test_a_disabled_direction_never_moves() -> None:
    policy = spec(
        queue("q"), behavior={"scaleDown": {"selectPolicy": "Disabled", "stabilizationWindowSeconds": 0}}
    )
    assert poll(policy, {"q": 0}, current=6) == 6


def test_a_deleted_policy_leaves_no_series() -> None:
    metrics.TRIGGER_VALUE.labels("ns", "gone", "jobs").set(1)
    metrics.SCALE_EVENTS.labels("ns", "gone", "up").inc()
    metrics.DESIRED.labels("ns", "gone").set(2)
    metrics.forget_policy("ns", "gone", ["jobs"])
    assert 'scalepolicy="gone"' not in generate_latest().decode()


# ---------------------------------------------------------------- an HPA on the same target


def autoscaler(name: str, kind: str = "Deployment", target: str = "worker", **meta: Any) -> dict[str, Any]:
    ref = {"apiVersion": "apps/v1", "kind": kind, "name": target}
    return {"metadata": {"name": name, **meta}, "spec": {"scaleTargetRef": ref, "minReplicas": 4}}


def test_an_hpa_is_indexed_under_the_key_of_the_target_a_policy_names() -> None:
    assert autoscaled_target("ns", autoscaler("hpa")) == target_key("ns", spec(queue("jobs")).model_dump())
    assert autoscaled_target("ns", autoscaler("sts", kind="StatefulSet")) == ("ns", "StatefulSet", "worker")
    other_group = autoscaler("crd")
    other_group["spec"]["scaleTargetRef"]["apiVersion"] = "example.com/v1"
    assert autoscaled_target("ns", other_group) is None


def test_an_hpa_on_the_same_target_competes_unless_the_policy_owns_it() -> None:
    target = spec(queue("jobs")).target
    assert standoff([], target, "uid-1") is None
    owned = Autoscaler.of(autoscaler("ours", ownerReferences=[{"uid": "uid-1", "kind": "ScalePolicy"}]))
    assert standoff([owned], target, "uid-1") is None
    found = standoff([owned, Autoscaler.of(autoscaler("worker-hpa"))], target, "uid-1")
    assert found is not None and found.reason == "ConflictWithHPA"
    assert found.message.startswith("HorizontalPodAutoscaler worker-hpa already scales Deployment worker")


# ---------------------------------------------------------------- --allowed-metrics-endpoints


def test_allowed_metrics_endpoints_match_the_host_or_host_and_port() -> None:
    patterns = ("*.monitoring.svc", "prometheus.example:9090")
    assert endpoint_allowed("http://anything", ())
    assert endpoint_allowed("http://prom.monitoring.svc:9090/x", patterns)
    assert endpoint_allowed("https://Prometheus.Example:9090", patterns)
    assert not endpoint_allowed("http://prometheus.example:9091", patterns)
    assert not endpoint_allowed("http://user:pw@kube-apiserver:443", patterns)
    assert not endpoint_allowed("http://monitoring.svc.evil", patterns)
    policy = spec(prometheus("load", 1), queue("jobs"))
    check_endpoints(policy, ("prometheus",))
    with pytest.raises(
        ValueError, match=r"spec.triggers\[load\].prometheus.serverAddress: http://prometheus:9090"
    ):
        check_endpoints(policy, patterns)
