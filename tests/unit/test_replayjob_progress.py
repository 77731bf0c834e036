"""A replay's progress figures and the publisher's checkpoint, without a broker."""

from types import SimpleNamespace
from typing import Any

import pika.spec

from habitat_operator.controllers.replayjob.progress import Progress
from habitat_operator.engines.rabbitmq.publisher import ConfirmingPublisher, _InFlight
from habitat_operator.engines.rabbitmq.uri import AmqpTarget


def test_progress_percent_rate_and_eta() -> None:
    progress = Progress(total=1000)
    progress.observe(10.0, 0)
    progress.observe(12.0, 200)
    assert (progress.percent, progress.rate, progress.eta, progress.display(190)) == (
        "20%",
        100.0,
        "8s",
        "190/1000",
    )
    progress.observe(14.0, 1000)
    assert (progress.percent, progress.ratio, progress.eta) == ("100%", 1.0, None)
    assert Progress(total=0).percent == "100%"


def ack(tag: int, multiple: bool = False, nack: bool = False) -> Any:
    method = (pika.spec.Basic.Nack if nack else pika.spec.Basic.Ack)(delivery_tag=tag, multiple=multiple)
    return SimpleNamespace(method=method)


def publisher_with(keys: list[int]) -> ConfirmingPublisher:
    publisher = ConfirmingPublisher(
        AmqpTarget("amqp://guest:secret@broker:5672/%2F"), window=10, window_bytes=2**20
    )
    for tag, key in enumerate(keys, start=1):
        entry = _InFlight(tag, key)
        publisher._in_flight.append(entry)
        publisher._by_tag[tag] = entry
    return publisher


def test_the_checkpoint_covers_only_an_unbroken_run_of_settled_messages() -> None:
    publisher = publisher_with([10, 20, 30, 40])
    publisher._on_confirm(ack(2))
    assert publisher.confirmed_through is None and publisher.tally.confirmed == 0  # 10 is still open
    publisher._on_confirm(ack(1))
    assert publisher.confirmed_through == 20 and publisher.tally.confirmed == 2
    publisher._returned[30] = "312 NO_ROUTE"
    publisher._on_confirm(ack(4, multiple=True))
    assert publisher.confirmed_through == 40 and publisher.sent_through == 40
    assert (publisher.tally.confirmed, publisher.tally.failed) == (3, 1)
    assert publisher.tally.first_failure is not None and publisher.tally.first_failure.key == 30


def test_a_nack_is_a_failure() -> None:
    publisher = publisher_with([7])
    publisher._on_confirm(ack(1, nack=True))
    assert (
        publisher.tally.first_failure is not None and publisher.tally.first_failure.reason == "MessageNacked"
    )


def test_the_broker_is_shown_without_credentials() -> None:
    target = AmqpTarget("amqp://guest:secret@broker.example:5672/habitat")
    assert target.display == "broker.example:5672/habitat" and "secret" not in repr(target)
    assert AmqpTarget("amqps://u:secret@broker/%2F").display == "broker:5671"
