"""The operator drops `managedFields` from watch events before Kopf keeps their bodies (kopf_hooks.py)."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest
from kopf._core.reactor import processing, running

from habitat_operator import kopf_hooks


def test_kopf_still_looks_the_processing_function_up_when_it_starts_the_watches() -> None:
    # The wrapper works only while Kopf reads the module attribute at start, not at import.
    assert "processing.process_resource_event" in inspect.getsource(running.spawn_tasks)
    assert "raw_event" in inspect.signature(processing.process_resource_event).parameters


def test_events_reach_kopf_without_managed_fields_otherwise_unchanged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    async def kopf_processing(*args: Any, **kwargs: Any) -> str | None:
        seen.append((args, kwargs))
        return "42"

    monkeypatch.setattr(processing, "process_resource_event", kopf_processing)
    kopf_hooks.keep_bodies_lean()
    kopf_hooks.keep_bodies_lean()  # a second start wraps nothing twice
    event: Any = {
        "type": "MODIFIED",
        "object": {
            "metadata": {"name": "nightly", "uid": "u1", "managedFields": [{"manager": "kubectl"}]},
            "status": {"phase": "Succeeded"},
        },
    }

    process: Any = processing.process_resource_event
    result = asyncio.run(process(raw_event=event, stream_pressure=None))

    assert result == "42"
    assert seen == [((), {"raw_event": event, "stream_pressure": None})]
    assert event["object"] == {"metadata": {"name": "nightly", "uid": "u1"}, "status": {"phase": "Succeeded"}}


def test_an_event_without_metadata_passes_through() -> None:
    event: Any = {"type": "ERROR", "object": {"code": 410}}
    kopf_hooks.drop_managed_fields(event)
    assert event == {"type": "ERROR", "object": {"code": 410}}
