"""An archive's small records, and how far its WAL reaches: what a WalArchive checks continuity with.

`archive.json` names the server the archive follows (its system identifier); a gap entry
(`gaps/<detected at>.json`) marks WAL that never reached the archive. Both are plain JSON, not
through the codec: they hold no data of the database, and a bucket-only recovery reads them first.
How far the WAL reaches is read from the names of complete segments: a `.partial` object reaches
no further than its segment's start, as pg_receivewal restarts a segment from its beginning. A hole
between archived segments that no gap entry accounts for is a gap nobody saw happen (an object
deleted, an upload lost).
Every function blocks: call it from an ENGINE_POOL thread.
"""

import itertools
import json
import os
from contextlib import suppress
from pathlib import Path
from typing import Any

from habitat_operator.engines.wal.layout import (
    PARTIAL_SUFFIX,
    SEGMENT_NAME,
    ArchiveLayout,
    parse_lsn,
    segment_start,
)
from habitat_operator.engines.wal.store import ObjectStore

# An identity or gap entry is a few hundred bytes; anything much larger is not one of ours.
MAX_RECORD_BYTES = 64 << 10


def read_record(store: ObjectStore, key: str) -> dict[str, Any] | None:
    """A JSON record, or None when there is none (or it is not a JSON object)."""
    if store.metadata(key) is None:
        return None
    stream = store.open(key)
    try:
        raw = stream.read(MAX_RECORD_BYTES + 1)
    finally:
        stream.close()
    try:
        record = json.loads(raw) if len(raw) <= MAX_RECORD_BYTES else None
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def write_record(store: ObjectStore, key: str, record: dict[str, Any]) -> None:
    with store.writer(key) as out:
        out.write(json.dumps(record, sort_keys=True).encode())


def read_identity(store: ObjectStore, layout: ArchiveLayout) -> dict[str, Any] | None:
    return read_record(store, layout.identity)


def write_identity(store: ObjectStore, layout: ArchiveLayout, identity: dict[str, Any]) -> None:
    write_record(store, layout.identity, identity)


def write_gap(store: ObjectStore, layout: ArchiveLayout, detected_at: str, entry: dict[str, Any]) -> None:
    write_record(store, layout.gap(detected_at), entry)


def _reach(names: list[str], segment_size: int) -> int | None:
    """The first WAL position after the newest complete segment among `names`, or the start of
    the newest partial one when it is newer; None when there is neither."""
    reach = None
    for name in names:
        partial = name.endswith(PARTIAL_SUFFIX)
        segment = name.removesuffix(PARTIAL_SUFFIX)
        if not SEGMENT_NAME.match(segment):
            continue
        _, start = segment_start(segment, segment_size)
        end = start if partial else start + segment_size
        reach = end if reach is None else max(reach, end)
    return reach


def archived_end(store: ObjectStore, layout: ArchiveLayout, segment_size: int) -> int | None:
    """How far the archived WAL reaches (any timeline), or None for an archive without WAL."""
    names = [stored.key.removeprefix(layout.wal_prefix) for stored in store.list(layout.wal_prefix)]
    return _reach(names, segment_size)


def holes(names: list[str], segment_size: int) -> list[tuple[int, int]]:
    """The WAL ranges [start, end) between the first and the last segment among `names` that no
    segment (complete or partial, of any timeline) covers."""
    starts = sorted(
        {
            segment_start(segment, segment_size)[1]
            for segment in (name.removesuffix(PARTIAL_SUFFIX) for name in names)
            if SEGMENT_NAME.match(segment)
        }
    )
    return [(a + segment_size, b) for a, b in itertools.pairwise(starts) if b - a > segment_size]


def unexplained_holes(store: ObjectStore, layout: ArchiveLayout, segment_size: int) -> list[tuple[int, int]]:
    """Holes in the archived WAL that no gap entry accounts for: a gap's first missing position
    lies in the hole (or in the segment before it, which a partial upload covered only in part)."""
    names = [stored.key.removeprefix(layout.wal_prefix) for stored in store.list(layout.wal_prefix)]
    found = holes(names, segment_size)
    if not found:
        return []
    starts = []
    for stored in store.list(layout.gap_prefix):
        entry = read_record(store, stored.key) or {}
        with suppress(ValueError, TypeError):
            starts.append(parse_lsn(str(entry.get("fromLsn"))))
    return [
        (start, end) for start, end in found if not any(start - segment_size <= lsn <= end for lsn in starts)
    ]


def spooled_end(spool: Path, segment_size: int) -> int | None:
    """How far the WAL waiting in the spool folder reaches, or None for an empty or missing one."""
    try:
        names = os.listdir(spool)
    except FileNotFoundError:
        return None
    return _reach(names, segment_size)
