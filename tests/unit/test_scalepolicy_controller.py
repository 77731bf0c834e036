"""ScalePolicyRun against the fake apiserver (its Deployments' /scale included) and fake trigger
sources: scaling, an RBAC refusal, a missing target, a conflict, an invalid spec, an unexpected
error, and a deletion mid-poll. The run is given its sources; nothing is patched."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import pytest
from kopf._cogs.aiokits.aioenums import FlagSetter

from habitat_operator.api.common import API_VERSION
from habitat_operator.api.scalepolicy import ScalePolicySpec
from habitat_operator.config import OperatorConfig
from habitat_operator.controllers.base.core import Recheck, RetryLater
from habitat_operator.controllers.base.slots import OperationSlots
from habitat_operator.controllers.scalepolicy.conflicts import Autoscaler
from habitat_operator.controllers.scalepolicy.decision import Reading
from habitat_operator.controllers.scalepolicy.run import Claim, ScalePolicyRun
from habitat_operator.handlers.driver import drive
from tests.unit.bodies import NS, conditions
from tests.unit.fake_kube import FakeKube, JsonDict

POLICIES = "scalepolicies"
WORKER = ("Deployment", NS, "worker")


def policy_body(name: str = "workers", **spec: Any) -> JsonDict:
    return {
        "apiVersion": API_VERSION,
        "kind": "ScalePolicy",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "target": {"kind": "Deployment", "name": "worker"},
            "minReplicas": 1,
            "maxReplicas": 10,
            "pollingInterval": 5,
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 0}},
            "triggers": [
                {
                    "name": "jobs",
                    "type": "rabbitmq",
                    "rabbitmq": {"queue": "jobs", "targetPerReplica": 10, "secretRef": {"name": "rmq"}},
                }
            ],
            **spec,
        },
    }


class FakeSources:
    """The triggers' values, set by the test; `error` makes the next read raise it."""

    def __init__(self) -> None:
        self.values: dict[str, float | None] = {"jobs": 0.0}
        self.error: BaseException | None = None
        self.gate: asyncio.Event | None = None
        self.reading = asyncio.Event()
        self.closed = False

    async def read_all(self, spec: ScalePolicySpec) -> dict[str, Reading]:
        self.reading.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        return {
            name: Reading(value, None if value is not None else "down") for name, value in self.values.items()
        }

    def forget_secrets(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class Policy:
    """One policy's daemon state, polled on the body as stored now."""

    def __init__(self, kube: FakeKube, config: OperatorConfig, name: str = "workers") -> None:
        self.kube, self.name = kube, name
        self.sources = FakeSources()
        self.claims: list[Claim] = []
        self.autoscalers: list[Autoscaler] = []
        self.run = ScalePolicyRun(
            kube.object(POLICIES, NS, name),
            config,
            OperationSlots(),
            lambda: self.claims,
            lambda: self.autoscalers,
            sources=self.sources,
        )

    def poll(self) -> RetryLater | None:
        self.run.observe(self.kube.object(POLICIES, NS, self.name))
        return asyncio.run(self.run.reconcile())

    def status(self) -> JsonDict:
        return self.kube.status(POLICIES, NS, self.name)

    def message(self, type_: str) -> str:
        return str(next(c["message"] for c in self.status()["conditions"] if c["type"] == type_))


@pytest.fixture
def policy(fake_kube: FakeKube, config: OperatorConfig) -> Policy:
    fake_kube.scales[WORKER] = 1
    fake_kube.add(POLICIES, policy_body())
    return Policy(fake_kube, config)


def test_a_queue_scales_its_target_and_the_policy_is_ready(policy: Policy, fake_kube: FakeKube) -> None:
    policy.sources.values = {"jobs": 50.0}

    assert policy.poll() == Recheck(5.0)

    assert fake_kube.scales[WORKER] == 5
    status = policy.status()
    assert (status["phase"], status["desiredReplicas"], status["currentReplicas"]) == ("Ready", 5, 5)
    assert status["lastDecision"]["trigger"] == "jobs"
    assert conditions(status)["Ready"] == ("True", "TargetFound")
    assert conditions(status)["Active"] == ("True", "TriggerActive")
    assert fake_kube.reasons("workers") == ["Scaled"]

    patches = len(fake_kube.patches)
    assert policy.poll() == Recheck(5.0)  # the same decision: no write
    assert len(fake_kube.patches) == patches


def test_rbac_that_refuses_to_scale_stalls_the_policy_naming_the_permission(
    policy: Policy, fake_kube: FakeKube
) -> None:
    fake_kube.forbidden_scale_verbs.add("patch")
    policy.sources.values = {"jobs": 50.0}

    assert policy.poll() == RetryLater(10.0)

    status = policy.status()
    assert status["phase"] == "Stalled"
    assert conditions(status)["Ready"] == ("False", "TargetForbidden")
    assert conditions(status)["Stalled"] == ("True", "TargetForbidden")
    message = policy.message("Ready")
    assert "patch" in message and "deployments/scale" in message
    assert fake_kube.scales[WORKER] == 1
    assert policy.poll() == RetryLater(10.0)
    assert fake_kube.reasons("workers") == ["TargetForbidden"]  # one Event, not one per poll

    fake_kube.forbidden_scale_verbs.clear()  # the Role is fixed: the next poll scales
    assert policy.poll() == Recheck(5.0)
    assert fake_kube.scales[WORKER] == 5
    assert conditions(policy.status())["Ready"] == ("True", "TargetFound")


def test_rbac_that_refuses_to_read_the_target_stalls_the_policy(policy: Policy, fake_kube: FakeKube) -> None:
    fake_kube.forbidden_scale_verbs.add("get")
    assert policy.poll() == RetryLater(10.0)
    assert conditions(policy.status())["Stalled"] == ("True", "TargetForbidden")
    assert "not allowed to read Deployment worker/scale" in policy.message("Stalled")


def test_a_missing_target_is_waited_for(policy: Policy, fake_kube: FakeKube) -> None:
    del fake_kube.scales[WORKER]

    assert policy.poll() == RetryLater(10.0)
    assert policy.poll() == RetryLater(10.0)

    status = policy.status()
    assert status["phase"] == "Pending"
    assert conditions(status)["Stalled"] == ("True", "TargetNotFound")
    assert fake_kube.reasons("workers") == ["TargetNotFound"]

    fake_kube.scales[WORKER] = 1
    assert policy.poll() == Recheck(5.0)
    assert policy.status()["phase"] == "Ready"


def test_an_unexpected_error_stalls_the_policy_and_the_next_poll_tries_again(policy: Policy) -> None:
    policy.sources.error = RuntimeError("socket closed")

    assert policy.poll() == RetryLater(10.0)

    status = policy.status()
    assert status["phase"] == "Stalled"
    assert conditions(status)["Stalled"] == ("True", "UnexpectedError")
    assert policy.message("Stalled") == "unexpected RuntimeError: socket closed"
    assert policy.poll() == Recheck(5.0)
    assert policy.status()["phase"] == "Ready"


def test_an_older_claim_on_the_target_is_a_conflict(policy: Policy) -> None:
    policy.claims = [Claim("first", "2020-01-01T00:00:00Z"), Claim("workers", "2024-06-01T10:00:00Z")]

    assert policy.poll() == RetryLater(10.0)

    assert conditions(policy.status())["Stalled"] == ("True", "Conflict")
    assert policy.message("Stalled") == "ScalePolicy first already scales Deployment worker"


def test_an_hpa_on_the_target_stalls_the_policy_until_it_is_gone(policy: Policy, fake_kube: FakeKube) -> None:
    policy.autoscalers = [Autoscaler("worker-hpa", owners=())]
    replicas = fake_kube.scales[WORKER]

    assert policy.poll() == RetryLater(10.0)

    assert conditions(policy.status())["Stalled"] == ("True", "ConflictWithHPA")
    assert policy.message("Stalled").startswith("HorizontalPodAutoscaler worker-hpa already scales")
    assert fake_kube.scales[WORKER] == replicas

    policy.autoscalers = []
    policy.poll()
    assert conditions(policy.status())["Ready"][0] == "True"


def test_an_invalid_spec_stalls_naming_the_field(fake_kube: FakeKube, config: OperatorConfig) -> None:
    fake_kube.scales[WORKER] = 1
    fake_kube.add(POLICIES, policy_body(minReplicas=-1), validate=False)
    policy = Policy(fake_kube, config)

    assert policy.poll() == RetryLater(10.0)

    status = policy.status()
    assert status["phase"] == "Stalled"
    assert conditions(status)["Stalled"] == ("True", "InvalidSpec")
    assert policy.message("Stalled").startswith("spec.minReplicas")
    assert fake_kube.scales[WORKER] == 1


def test_paused_leaves_the_target_alone(fake_kube: FakeKube, config: OperatorConfig) -> None:
    fake_kube.scales[WORKER] = 3
    fake_kube.add(POLICIES, policy_body(paused=True))
    policy = Policy(fake_kube, config)

    assert policy.poll() == Recheck(5.0)

    assert fake_kube.scales[WORKER] == 3
    assert (policy.status()["phase"], policy.status()["currentReplicas"]) == ("Paused", 3)
    assert conditions(policy.status())["Paused"] == ("True", "Paused")


def test_deleting_the_policy_mid_poll_stops_it_without_scaling(policy: Policy, fake_kube: FakeKube) -> None:
    policy.sources.values = {"jobs": 50.0}
    policy.sources.gate = asyncio.Event()  # the sources never answer
    stopper: FlagSetter[Any] = FlagSetter()
    raw = fake_kube.object(POLICIES, NS, "workers")

    def run_for(body: JsonDict) -> ScalePolicyRun:
        policy.run.observe(body)
        return policy.run

    async def scenario() -> None:
        daemon = asyncio.create_task(
            drive("ScalePolicy", kopf.Body(raw), stopper.async_waiter, run_for)  # type: ignore[arg-type]
        )
        await policy.sources.reading.wait()
        stopper.set(reason=kopf.DaemonStoppingReason.RESOURCE_DELETED)
        async with asyncio.timeout(2):
            await daemon

    asyncio.run(scenario())
    policy.run.forget()
    assert fake_kube.scales[WORKER] == 1
    assert policy.sources.closed
