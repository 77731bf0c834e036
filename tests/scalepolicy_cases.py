"""ScalePolicy specs that both the models (unit tests) and the apiserver (e2e tests) must refuse."""

from __future__ import annotations

from typing import Any


def window(**fields: Any) -> dict[str, Any]:
    """A schedule trigger, valid unless `fields` make it otherwise."""
    schedule = {"start": "0 0 * * *", "duration": "1h", "minReplicas": 1} | fields
    return {"name": "w", "type": "schedule", "schedule": schedule}


# (change to a valid spec, the words of the apiserver's refusal, the words of the models' refusal)
REFUSED: list[tuple[dict[str, Any], str, str]] = [
    (
        {"minReplicas": 6},
        "minReplicas must not exceed maxReplicas",
        "minReplicas must not exceed maxReplicas",
    ),
    ({"triggers": [{"name": "q", "type": "kafka"}]}, 'Unsupported value: "kafka"', "Input should be"),
    ({"triggers": [window(timezone="Mars/Olympus")]}, "IANA time zone", "IANA time zone"),
    ({"triggers": [window(start="0 0 * *")]}, "schedule.start", "should match pattern"),
    (
        {
            "triggers": [
                {
                    "name": "p",
                    "type": "prometheus",
                    "prometheus": {"serverAddress": "prometheus:9090", "query": "up", "targetValue": 1},
                }
            ]
        },
        "serverAddress",
        "should match pattern",
    ),
]
REFUSED_IDS = ["min-above-max", "unknown-trigger", "bad-timezone", "bad-cron", "address-not-a-url"]
