"""A WalArchive's own records and how far its WAL reaches, in the stack's real S3 server: the
identity and gap entries round trip, a missing one is None, and holes are found from the keys."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from habitat_operator.engines.artifacts.s3 import Bucket
from habitat_operator.engines.wal import catalog, records
from habitat_operator.engines.wal.layout import ArchiveLayout, parse_lsn
from habitat_operator.engines.wal.store import BucketStore
from tests.harness import Stack
from tests.integration.helpers import fresh_location

pytestmark = pytest.mark.integration

SEGMENT = 16 << 20
LAYOUT = ArchiveLayout("orders")


@pytest.fixture
def store(stack: Stack) -> Iterator[BucketStore]:
    """The namespace part of a fresh prefix in the stack's test bucket."""
    location = fresh_location(stack, "it-wal")
    with Bucket(location) as bucket:
        yield BucketStore(bucket, location.key("team-a"))


def test_records_round_trip_and_a_missing_one_is_none(store: BucketStore) -> None:
    assert catalog.read_identity(store, LAYOUT) is None
    identity = {"systemIdentifier": "7300000000000000001", "segmentSize": SEGMENT}
    records.write_json(store, LAYOUT.identity, identity)
    assert catalog.read_identity(store, LAYOUT) == identity


def test_the_reach_and_the_holes_come_from_the_keys(store: BucketStore) -> None:
    assert records.archived_end(store, LAYOUT, SEGMENT) is None
    for name in ("000000010000000000000002", "000000010000000000000005.partial"):
        with store.writer(LAYOUT.wal(name)) as out:
            out.write(b"x")
    assert records.archived_end(store, LAYOUT, SEGMENT) == parse_lsn("0/5000000")
    assert records.unexplained_holes(store, LAYOUT, SEGMENT) == [
        (parse_lsn("0/3000000"), parse_lsn("0/5000000"))
    ]
    gap = {
        "detectedAt": "2026-12-07T17:15:00Z",
        "reason": "SegmentMissing",
        "fromLsn": "0/3000000",
        "toLsn": "0/5000000",
        "timeline": 1,
        "message": "the archive has no WAL from 0/3000000 to 0/5000000",
    }
    records.write_json(store, LAYOUT.gap("20261207T171500Z"), gap)
    assert records.unexplained_holes(store, LAYOUT, SEGMENT) == []
