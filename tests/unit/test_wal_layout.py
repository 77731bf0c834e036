"""WAL positions, segment names and the folder store of a WalArchive."""

from pathlib import Path

import pytest

from habitat_operator.engines.wal.layout import (
    ArchiveLayout,
    format_lsn,
    parse_lsn,
    segment_name,
    segment_start,
)
from habitat_operator.engines.wal.store import FolderStore
from habitat_operator.errors import PermanentError


def test_lsn_round_trip() -> None:
    assert parse_lsn("16/B374D848") == 0x16B374D848
    assert format_lsn(0x16B374D848) == "16/B374D848"
    with pytest.raises(ValueError):
        parse_lsn("16:B374D848")


def test_segment_names_match_postgresql() -> None:
    # pg_walfile_name('0/3000060') on timeline 1 with 16 MiB segments
    assert segment_name(1, parse_lsn("0/3000060")) == "000000010000000000000003"
    assert segment_name(2, parse_lsn("1/FF000000")) == "0000000200000001000000FF"
    assert segment_start("0000000200000001000000FF") == (2, parse_lsn("1/FF000000"))
    assert segment_name(1, parse_lsn("0/3000000"), 64 << 20) == "000000010000000000000000"
    with pytest.raises(ValueError):
        segment_start("000000010000000000000003.partial")


def test_folder_store_writes_all_or_nothing(tmp_path: Path) -> None:
    store = FolderStore(tmp_path)
    keys = ArchiveLayout("orders")
    with store.writer(keys.wal("000000010000000000000003"), {"sha256": "ab"}) as out:
        out.write(b"segment")
    with pytest.raises(RuntimeError), store.writer(keys.wal("000000010000000000000004")) as out:
        out.write(b"half")
        raise RuntimeError("killed")
    with store.writer(keys.wal("000000010000000000000004.partial")) as out:
        out.write(b"growing")

    listed = [stored.key for stored in store.list(keys.wal_prefix)]
    assert listed == ["orders/wal/000000010000000000000003", "orders/wal/000000010000000000000004.partial"]
    assert store.metadata(keys.wal("000000010000000000000003")) == {"sha256": "ab"}
    assert store.metadata(keys.wal("000000010000000000000005")) is None
    assert store.open(keys.wal("000000010000000000000003")).read() == b"segment"

    store.delete(keys.wal("000000010000000000000003"))
    assert [stored.key for stored in store.list("orders/")] == ["orders/wal/000000010000000000000004.partial"]
    with pytest.raises(PermanentError):
        store.open(keys.wal("000000010000000000000003"))


@pytest.mark.parametrize("key", ["../other/wal/x", "/etc/passwd", "orders/x.meta.json", ""])
def test_folder_store_refuses_keys_outside_its_namespace(tmp_path: Path, key: str) -> None:
    with pytest.raises(PermanentError):
        FolderStore(tmp_path).open(key)
