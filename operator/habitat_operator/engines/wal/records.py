"""An archive's small records and how far its WAL reaches: what a WalArchive checks continuity with.

`archive.json` names the server the archive follows (its system identifier); a gap entry
(`gaps/<detected at>.json`) marks WAL that never reached the archive. Both are plain JSON, not
through the codec: they hold no data of the database, and a bucket-only recovery reads them first.
The catalog (catalog.py) reads them back; this module writes them. How far the WAL reaches is read
from the catalog's segments: a `.partial` object reaches no further than its segment's start, as
pg_receivewal restarts a segment from its beginning. A hole between archived segments that no gap
entry accounts for is a gap nobody saw happen (an object deleted, an upload lost).
Every function blocks: call it from an ENGINE_POOL thread.
"""

import hashlib
import itertools
import json
import os
from collections.abc import Iterable
from pathlib import Path

from habitat_operator.engines.wal import catalog
from habitat_operator.engines.wal.layout import PARTIAL_SUFFIX, SEGMENT_NAME, ArchiveLayout, segment_start
from habitat_operator.engines.wal.store import ObjectStore


def write_json(store: ObjectStore, key: str, record: dict[str, object]) -> None:
    """A small JSON record, with the sha256 of its bytes as every object of the archive has."""
    body = json.dumps(record, indent=2, sort_keys=True).encode()
    with store.writer(key, {"sha256": hashlib.sha256(body).hexdigest()}) as out:
        out.write(body)


def _starts(names: Iterable[str], segment_size: int) -> list[tuple[int, bool]]:
    """(start, partial) of every segment among `names`; history and other files are left out."""
    found = []
    for name in names:
        segment = name.removesuffix(PARTIAL_SUFFIX)
        if SEGMENT_NAME.match(segment):
            found.append((segment_start(segment, segment_size)[1], name.endswith(PARTIAL_SUFFIX)))
    return found


def _reach(names: Iterable[str], segment_size: int) -> int | None:
    """The first WAL position after the newest complete segment among `names`, or the start of
    the newest partial one when it is newer; None when there is neither."""
    ends = [start if partial else start + segment_size for start, partial in _starts(names, segment_size)]
    return max(ends, default=None)


def _archived_names(store: ObjectStore, layout: ArchiveLayout, segment_size: int) -> list[str]:
    return [wal.name for wal in catalog.segments(store, layout, segment_size) if not wal.history]


def archived_end(store: ObjectStore, layout: ArchiveLayout, segment_size: int) -> int | None:
    """How far the archived WAL reaches (any timeline), or None for an archive without WAL."""
    return _reach(_archived_names(store, layout, segment_size), segment_size)


def holes(names: Iterable[str], segment_size: int) -> list[tuple[int, int]]:
    """The WAL ranges [start, end) between the first and the last segment among `names` that no
    segment (complete or partial, of any timeline) covers."""
    starts = sorted({start for start, _ in _starts(names, segment_size)})
    return [(a + segment_size, b) for a, b in itertools.pairwise(starts) if b - a > segment_size]


def unexplained_holes(store: ObjectStore, layout: ArchiveLayout, segment_size: int) -> list[tuple[int, int]]:
    """Holes in the archived WAL that no gap entry accounts for: a gap's first missing position
    lies in the hole (or in the segment before it, which a partial upload covered only in part)."""
    found = holes(_archived_names(store, layout, segment_size), segment_size)
    if not found:
        return []
    starts = [gap.from_lsn for gap in catalog.gaps(store, layout)]
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
