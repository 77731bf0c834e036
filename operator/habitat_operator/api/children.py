"""Objects derived from others: owner references, and a schedule's runs (their names and bodies).

Pure (no API call), so the operator's ticks and the kubectl plugin's manual runs make the same
children: a manual run differs from a scheduled one only by its trigger label.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping
from enum import StrEnum
from typing import Any

from habitat_operator import names, timestamps
from habitat_operator.api.common import SCHEDULE_LABEL, SCHEDULED_AT_ANNOTATION, qualified

SCHEDULE_NAME_ANNOTATION = qualified("schedule")
TRIGGER_LABEL = qualified("trigger")
MAX_NAME = 253
TIMESTAMP_CHARS = len("-20240101000000")


def owner_reference(body: Mapping[str, Any]) -> dict[str, Any]:
    """Makes the child garbage-collected with its parent (a schedule and its runs)."""
    return {
        "apiVersion": body["apiVersion"],
        "kind": body["kind"],
        "name": body["metadata"]["name"],
        "uid": body["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


class Trigger(StrEnum):
    """Who started a run; only manual runs carry the label (`kubectl get -l ...trigger=manual`)."""

    SCHEDULE = "schedule"
    MANUAL = "manual"


def child_name(parent: str, scheduled: dt.datetime) -> str:
    """<parent>-<UTC time>, the parent's part shortened with a hash when the whole would not fit."""
    return f"{names.fit(parent, MAX_NAME - TIMESTAMP_CHARS)}-{scheduled.astimezone(dt.UTC):%Y%m%d%H%M%S}"


def child_body(
    parent: Mapping[str, Any],
    schedule_fields: Collection[str],
    scheduled: dt.datetime,
    trigger: Trigger = Trigger.SCHEDULE,
) -> dict[str, Any]:
    """A one-shot object with the parent's spec, minus `schedule_fields` (what only a schedule has)."""
    spec = {k: v for k, v in parent["spec"].items() if k not in schedule_fields}
    name = parent["metadata"]["name"]
    labels = {SCHEDULE_LABEL: names.fit(name, 63)}  # for `kubectl get -l`; label values fit 63
    if trigger is not Trigger.SCHEDULE:
        labels[TRIGGER_LABEL] = trigger.value
    return {
        "apiVersion": parent["apiVersion"],
        "kind": parent["kind"],
        "metadata": {
            "name": child_name(name, scheduled),
            "namespace": parent["metadata"]["namespace"],
            "labels": labels,
            "annotations": {
                SCHEDULED_AT_ANNOTATION: timestamps.rfc3339(scheduled),
                SCHEDULE_NAME_ANNOTATION: name,
            },
            "ownerReferences": [owner_reference(parent)],
        },
        "spec": spec,
    }
