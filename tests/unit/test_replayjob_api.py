"""ReplayJob's spec: the Python checks that stand beside the CRD's CEL rules, and what the SQL is made of."""

from typing import Any

import pytest
from pydantic import ValidationError

from habitat_operator.api.replayjob import _IMMUTABLE, EventSelector, ReplayJobSpec
from habitat_operator.engines.postgres.events import EventStore


def spec(**overrides: Any) -> dict[str, Any]:
    return {
        "source": {"database": {"secretRef": {"name": "events-db"}}},
        "selector": {"types": ["invoice.issued"]},
        "target": {"rabbitmq": {"secretRef": {"name": "broker"}}, "exchange": {"name": "habitat"}},
        **overrides,
    }


def test_defaults() -> None:
    parsed = ReplayJobSpec.model_validate(spec())
    assert parsed.source.table == "events" and parsed.source.columns.event_type == "event_type"
    assert (parsed.batch_size, parsed.max_events, parsed.on_error, parsed.checkpoint_interval) == (
        1000,
        100_000,
        "fail",
        "2s",
    )
    assert parsed.target.exchange is not None and parsed.target.exchange.routing_key is None


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ({}, "selector needs at least one of"),
        ({"from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "selector.to must be after"),
        ({"where": [{"column": "secret", "operator": "eq", "value": "1"}]}, "String should match pattern"),
        ({"where": [{"column": "id", "operator": "drop", "value": "1"}]}, "Input should be"),
        ({"where": [{"column": "id", "operator": "in", "value": "1"}]}, "in and notIn take values"),
        ({"where": [{"column": "id", "operator": "isNull", "value": "1"}]}, "in and notIn take values"),
        ({"where": [{"column": "id", "operator": "eq"}]}, "in and notIn take values"),
    ],
)
def test_bad_selectors_are_refused(selector: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ReplayJobSpec.model_validate(spec(selector=selector))


def test_target_needs_exactly_one_of_exchange_and_queue() -> None:
    both = {"rabbitmq": {"secretRef": {"name": "b"}}, "exchange": {"name": "x"}, "queue": {"name": "q"}}
    with pytest.raises(ValidationError, match="exactly one of exchange or queue"):
        ReplayJobSpec.model_validate(spec(target=both))


def test_only_suspend_and_rate_limit_change() -> None:
    old = ReplayJobSpec.model_validate(spec())
    ReplayJobSpec.model_validate(spec(suspend=True, rateLimit=50)).check_update(old)
    with pytest.raises(ValueError, match="only suspend and rateLimit"):
        ReplayJobSpec.model_validate(spec(batchSize=5)).check_update(old)


def test_every_field_but_suspend_and_rate_limit_is_in_the_immutability_rule() -> None:
    # A new spec field is fixed once the job exists unless it is added to the exceptions on purpose.
    aliases = {field.alias or name for name, field in ReplayJobSpec.model_fields.items()}
    assert aliases == {*_IMMUTABLE, "suspend", "rateLimit"}


def test_identifiers_are_quoted_and_values_bound() -> None:
    parsed = ReplayJobSpec.model_validate(
        spec(
            source={
                "database": {"secretRef": {"name": "db"}},
                "table": "ledger.stored_events",
                "columns": {"eventType": "Kind"},
            },
            selector={
                "types": ["a'; DROP TABLE x; --"],
                "where": [
                    {"column": "payload.account", "operator": "in", "values": ["1", "2"]},
                    {"column": "routingKey", "operator": "isNull"},
                ],
            },
        )
    )
    store = EventStore(parsed.source.table, parsed.source.columns)
    condition, params = store.condition(parsed.selector)
    assert condition.as_string(None) == (
        '"Kind" = ANY(%s) AND ("payload" ->> %s) IN (%s, %s) AND "routing_key" IS NULL'
    )
    assert params == [["a'; DROP TABLE x; --"], "account", "1", "2"]
    assert store.select_events().as_string(None).endswith('FROM "ledger"."stored_events"')


def test_an_empty_condition_is_refused_by_the_model_not_turned_into_select_all() -> None:
    with pytest.raises(ValidationError):
        EventSelector.model_validate({})
