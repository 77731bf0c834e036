"""The smallest convergent kind, written on the core as docs/architecture.md's "Adding a kind" says,
and run against the fake apiserver. docs/architecture.md counts the lines between the markers:
what a new convergent kind needs besides its handler (six lines, shown there) and its docs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pydantic import Field

from habitat_operator import timestamps
from habitat_operator.api.common import ApiModel, KindInfo, Phase, PrinterColumn, ResourceStatus, Timestamp
from habitat_operator.config import OperatorConfig
from habitat_operator.controllers.base.convergent import ConvergentRun
from habitat_operator.controllers.base.core import Recheck, RetryLater
from habitat_operator.controllers.base.slots import OperationSlots
from tests.unit import fake_kube
from tests.unit.bodies import NS, conditions
from tests.unit.fake_kube import FakeKube


# --- example kind: begin
class HeartbeatSpec(ApiModel):
    """Beats every `interval` seconds."""

    interval: int = Field(60, ge=1, description="Seconds between beats.")


class HeartbeatStatus(ResourceStatus):
    last_beat: Timestamp | None = Field(None, description="When it last beat.")


HEARTBEAT = KindInfo(
    kind="Heartbeat",
    plural="heartbeats",
    singular="heartbeat",
    short_names=(),
    printer_columns=(PrinterColumn("Age", ".metadata.creationTimestamp", type="date"),),
    spec_model=HeartbeatSpec,
    status_model=HeartbeatStatus,
    description="Heartbeat beats.",
)


class HeartbeatRun(ConvergentRun[HeartbeatSpec, HeartbeatStatus]):
    info = HEARTBEAT
    spec_model = HeartbeatSpec
    status_model = HeartbeatStatus

    async def execute(self, spec: HeartbeatSpec) -> RetryLater:
        now = timestamps.now()

        def beat(status: HeartbeatStatus) -> None:
            status.last_beat = now

        await self.reporter.write("ready", Phase.READY, Phase.READY, "beating", beat)
        return Recheck(spec.interval)


# --- example kind: end


def example_lines() -> int:
    """Lines of the example kind, imports and blank lines aside: the figure docs/architecture.md quotes."""
    text = (
        Path(__file__).read_text().split("# --- example kind: begin\n")[1].split("# --- example kind: end")[0]
    )
    return sum(1 for line in text.splitlines() if line.strip())


@pytest.fixture
def with_heartbeats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(fake_kube.KINDS, HEARTBEAT.plural, HEARTBEAT)


def body(interval: int) -> fake_kube.JsonDict:
    return {
        "apiVersion": "ops.habitat.dev/v1alpha1",
        "kind": "Heartbeat",
        "metadata": {"name": "pulse", "namespace": NS},
        "spec": {"interval": interval},
    }


def step(kube: FakeKube, config: OperatorConfig) -> RetryLater | None:
    run = HeartbeatRun(kube.object(HEARTBEAT.plural, NS, "pulse"), config, OperationSlots())
    return asyncio.run(run.reconcile())


def test_the_example_kind_converges_and_an_invalid_spec_stalls(
    fake_kube: FakeKube, config: OperatorConfig, with_heartbeats: None
) -> None:
    fake_kube.add(HEARTBEAT.plural, body(5))
    assert step(fake_kube, config) == Recheck(5)
    status = fake_kube.status(HEARTBEAT.plural, NS, "pulse")
    assert status["phase"] == "Ready" and "lastBeat" in status
    assert conditions(status)["Ready"] == ("True", "Ready")

    fake_kube.edit_spec(HEARTBEAT.plural, NS, "pulse", interval=0)
    step(fake_kube, config)
    status = fake_kube.status(HEARTBEAT.plural, NS, "pulse")
    assert conditions(status)["Stalled"] == ("True", "InvalidSpec")
    assert fake_kube.reasons("pulse") == ["InvalidSpec"]


def test_the_example_is_as_small_as_docs_say() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "architecture.md").read_text()
    assert f"{example_lines()} lines" in docs, example_lines()
