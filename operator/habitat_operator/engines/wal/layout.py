"""Where a WalArchive keeps its objects, and the arithmetic of WAL positions and file names.

An archive's objects live under `<archive>/` in its namespace's part of the storage (see store.py):

    <archive>/archive.json                the server it archives: system identifier, version
    <archive>/wal/<segment>               a completed segment (24 hex digits), through the codec
    <archive>/wal/<segment>.partial       the segment being written, replaced as it grows
    <archive>/wal/<timeline>.history      a timeline's history file (8 hex digits + .history)
    <archive>/base/<backup id>.tar        a base backup: pg_basebackup -Ft -X none, through the codec
    <archive>/base/<backup id>.json       its entry, written once the tar is verified
    <archive>/gaps/<detected at>.json     a gap: WAL that never reached the archive

Base backup entries end in `.json`, not the Backups' `.catalog.json`, so a Restore's `latestOf`
never mistakes a base backup for a pg_dump artifact.
"""

import re
from dataclasses import dataclass

DEFAULT_SEGMENT_SIZE = 16 << 20
SEGMENT_NAME = re.compile(r"^[0-9A-F]{24}$")
HISTORY_NAME = re.compile(r"^[0-9A-F]{8}\.history$")
PARTIAL_SUFFIX = ".partial"
_LSN = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")


def parse_lsn(text: str) -> int:
    """`16/B374D848` as an integer; ValueError for anything else."""
    match = _LSN.match(text.strip())
    if match is None:
        raise ValueError(f"not a WAL position: {text!r}")
    return int(match[1], 16) << 32 | int(match[2], 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def segment_name(timeline: int, lsn: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> str:
    """The name of the segment file that holds `lsn` on `timeline` (PostgreSQL's XLogFileName)."""
    number = lsn // segment_size
    per_id = 0x100000000 // segment_size
    return f"{timeline:08X}{number // per_id:08X}{number % per_id:08X}"


def segment_start(name: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> tuple[int, int]:
    """(timeline, first LSN) of a segment file name; ValueError for a name that is not one."""
    if not SEGMENT_NAME.match(name):
        raise ValueError(f"not a WAL segment name: {name!r}")
    per_id = 0x100000000 // segment_size
    number = int(name[8:16], 16) * per_id + int(name[16:24], 16)
    return int(name[:8], 16), number * segment_size


def history_name(timeline: int) -> str:
    return f"{timeline:08X}.history"


@dataclass(frozen=True)
class ArchiveLayout:
    """The keys of one archive, relative to its namespace's part of the storage."""

    archive: str

    @property
    def identity(self) -> str:
        return f"{self.archive}/archive.json"

    @property
    def wal_prefix(self) -> str:
        return f"{self.archive}/wal/"

    @property
    def base_prefix(self) -> str:
        return f"{self.archive}/base/"

    @property
    def gap_prefix(self) -> str:
        return f"{self.archive}/gaps/"

    def wal(self, file_name: str) -> str:
        """A segment, a partial segment or a history file, by the name PostgreSQL gives it."""
        return f"{self.wal_prefix}{file_name}"

    def base_backup(self, backup_id: str) -> str:
        return f"{self.base_prefix}{backup_id}.tar"

    def base_backup_entry(self, backup_id: str) -> str:
        return f"{self.base_prefix}{backup_id}.json"

    def gap(self, detected_at: str) -> str:
        return f"{self.gap_prefix}{detected_at}.json"
