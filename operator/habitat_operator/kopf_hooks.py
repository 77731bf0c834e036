"""Every hook of the operator into Kopf's private modules (`kopf._core`, `kopf._cogs`), and nothing else.

Kopf keeps no promise about its private modules between releases, so they are used here only: an
import-linter contract in pyproject.toml forbids them everywhere else, and pyproject.toml pins Kopf to
the minor releases its guard test has run against (raise the pin only once it passes on a new one).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import kopf
from kopf._core.reactor import processing


def drop_managed_fields(raw_event: kopf.RawEvent) -> None:
    """Removes `metadata.managedFields` from a watch event's object, in place."""
    metadata: dict[str, Any] | None = raw_event["object"].get("metadata")  # type: ignore[assignment]
    if isinstance(metadata, dict):
        metadata.pop("managedFields", None)


# Guard test (in tests/unit/test_kopf_hooks.py):
# test_kopf_still_looks_the_processing_function_up_when_it_starts_the_watches
def keep_bodies_lean() -> None:
    """Kopf keeps the latest body of every object of a kind with daemons (all five kinds have one)
    for as long as the object exists. More than half of such a body is `metadata.managedFields`,
    which neither Kopf nor a handler reads: 12 of 21 MB with 1,000 objects (docs/benchmarks.md).
    Kopf has no public hook between the watch and its processing, so this wraps the processing
    function, which Kopf looks up when it starts the watches. Should a Kopf release stop looking it
    up there, the operator still works and only the saving is lost (the guard test says so first)."""
    process: Callable[..., Awaitable[str | None]] = processing.process_resource_event
    if getattr(process, "drops_managed_fields", False):
        return

    async def process_lean_event(*args: Any, raw_event: kopf.RawEvent, **kwargs: Any) -> str | None:
        drop_managed_fields(raw_event)
        return await process(*args, raw_event=raw_event, **kwargs)

    process_lean_event.drops_managed_fields = True  # type: ignore[attr-defined]
    processing.process_resource_event = process_lean_event  # type: ignore[assignment]
