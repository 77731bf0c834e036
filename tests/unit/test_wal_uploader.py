"""The uploader's bookkeeping on a folder store: what is archived, when the spool's files go, and
what a pass killed at any point repeats (nothing but its last step). The WAL here is random bytes
(no pg_waldump summary); tests/integration/test_wal_stream.py streams real WAL."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest

from habitat_operator.api.common import Reason
from habitat_operator.api.wal import WalReason
from habitat_operator.engines.artifacts.codec import PlaintextReader, Writable
from habitat_operator.engines.wal.layout import ArchiveLayout
from habitat_operator.engines.wal.store import FolderStore, ObjectStore
from habitat_operator.engines.wal.uploader import (
    PLAINTEXT_SHA256,
    SHA256,
    STAGING,
    UploadResult,
    metadata_value,
    upload_partial,
    upload_ready,
)
from habitat_operator.errors import OperationError

KEY = os.urandom(32)
LAYOUT = ArchiveLayout("ledger")
SEGMENT = 1 << 20  # the smallest segment size PostgreSQL allows: 1 MiB
FIRST, SECOND, THIRD = "000000010000000000000004", "000000010000000000000005", "000000010000000000000006"


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    folder = tmp_path / "spool"
    folder.mkdir()
    return folder


@pytest.fixture
def store(tmp_path: Path) -> FolderStore:
    return FolderStore(tmp_path / "store")


def wal_file(path: Path, size: int = SEGMENT) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def stored_plaintext(store: ObjectStore, name: str, key: bytes | None = KEY) -> bytes:
    reader = PlaintextReader(store.open(LAYOUT.wal(name)), key)
    data = b"".join(iter(reader.read, b""))
    reader.close()
    return data


def keys(store: ObjectStore) -> list[str]:
    return [stored.key.removeprefix(LAYOUT.wal_prefix) for stored in store.list(LAYOUT.wal_prefix)]


def ready(spool: Path, store: ObjectStore, key: bytes | None = KEY) -> UploadResult:
    return asyncio.run(upload_ready(spool, store, LAYOUT, key, zstd=True))


def test_completed_files_are_archived_then_removed(spool: Path, store: FolderStore) -> None:
    history = b"1\t0/4000000\tno recovery target specified\n"
    (spool / "00000002.history").write_bytes(history)
    first, second = wal_file(spool / FIRST), wal_file(spool / SECOND)
    wal_file(spool / f"{THIRD}.partial")

    result = ready(spool, store)

    assert (result.segments, result.newest_segment) == (3, SECOND)
    assert result.archived_lsn == 6 * SEGMENT  # the end of segment 5
    assert keys(store) == [FIRST, SECOND, "00000002.history"]
    assert sorted(p.name for p in spool.iterdir()) == [f"{THIRD}.partial"]  # the one still written
    assert stored_plaintext(store, FIRST) == first and stored_plaintext(store, SECOND) == second
    assert stored_plaintext(store, "00000002.history") == history
    metadata = store.metadata(LAYOUT.wal(FIRST)) or {}
    raw = (store._root / LAYOUT.wal(FIRST)).read_bytes()
    assert metadata_value(metadata, SHA256) == hashlib.sha256(raw).hexdigest()
    assert metadata_value(metadata, PLAINTEXT_SHA256) == hashlib.sha256(first).hexdigest()
    assert result.bytes == sum(stored.size for stored in store.list(LAYOUT.wal_prefix))


def test_a_pass_killed_before_removing_the_file_repeats_nothing(spool: Path, store: FolderStore) -> None:
    data = wal_file(spool / FIRST)
    ready(spool, store)
    (spool / FIRST).write_bytes(data)  # as a pass killed between the upload and the removal left it
    before = (store._root / LAYOUT.wal(FIRST)).read_bytes()

    again = ready(spool, store)

    assert (again.segments, again.bytes, again.newest_segment) == (0, 0, FIRST)
    assert (store._root / LAYOUT.wal(FIRST)).read_bytes() == before  # not uploaded again
    assert not (spool / FIRST).exists()


class _DiesMidUpload:
    """A store whose process dies (here: raises) halfway through writing an object."""

    def __init__(self, inner: FolderStore) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    @contextmanager
    def _dying(self, key: str, metadata: Mapping[str, str]) -> Iterator[Writable]:
        with self.inner.writer(key, metadata) as out:
            yield _Dying(out)

    def writer(self, key: str, metadata: Mapping[str, str] = {}) -> AbstractContextManager[Writable]:
        return self._dying(key, metadata)


class _Dying:
    def __init__(self, out: Writable) -> None:
        self.out = out

    def write(self, data: bytes) -> None:
        self.out.write(data[: len(data) // 2])
        raise KeyboardInterrupt  # nothing the uploader catches

    def sync(self) -> None:
        self.out.sync()


def test_an_upload_cut_midway_leaves_no_object_and_keeps_the_file(spool: Path, store: FolderStore) -> None:
    data = wal_file(spool / FIRST)
    with pytest.raises(KeyboardInterrupt):
        ready(spool, _DiesMidUpload(store))  # type: ignore[arg-type]

    assert keys(store) == [] and store.metadata(LAYOUT.wal(FIRST)) is None
    assert (spool / FIRST).read_bytes() == data

    assert ready(spool, store).segments == 1
    assert stored_plaintext(store, FIRST) == data


def test_other_content_under_the_same_name_is_a_conflict(spool: Path, store: FolderStore) -> None:
    wal_file(spool / FIRST)
    ready(spool, store)
    other = wal_file(spool / FIRST)

    with pytest.raises(OperationError) as caught:
        ready(spool, store)

    assert caught.value.reason == WalReason.ARCHIVE_CONFLICT
    assert FIRST in caught.value.message and "kept" in caught.value.message
    assert (spool / FIRST).read_bytes() == other


def test_the_partial_object_goes_once_its_segment_is_archived(spool: Path, store: FolderStore) -> None:
    data = wal_file(spool / f"{FIRST}.partial")
    assert asyncio.run(upload_partial(spool, store, LAYOUT, KEY, zstd=True)) is not None
    assert keys(store) == [f"{FIRST}.partial"]
    (spool / f"{FIRST}.partial").rename(spool / FIRST)  # what pg_receivewal does once it is complete

    ready(spool, store)

    assert keys(store) == [FIRST]
    assert stored_plaintext(store, FIRST) == data


def test_the_partial_is_uploaded_again_only_when_it_changed(spool: Path, store: FolderStore) -> None:
    partial = spool / f"{SECOND}.partial"
    wal_file(partial)
    os.utime(partial, ns=(0, partial.stat().st_mtime_ns - 5 * 10**9))  # written a while ago
    first = asyncio.run(upload_partial(spool, store, LAYOUT, KEY, zstd=False))
    assert first is not None and first.segment == SECOND and first.uploaded_bytes > SEGMENT
    assert first.fingerprint is not None

    unchanged = asyncio.run(upload_partial(spool, store, LAYOUT, KEY, zstd=False, previous=first))
    assert unchanged is not None and unchanged.uploaded_bytes == 0
    restarted = asyncio.run(upload_partial(spool, store, LAYOUT, KEY, zstd=False))  # no memory of it
    assert restarted is not None and restarted.uploaded_bytes == 0

    with partial.open("r+b") as file:
        file.seek(1000)
        file.write(b"more WAL")
    changed = asyncio.run(upload_partial(spool, store, LAYOUT, KEY, zstd=False, previous=unchanged))
    assert changed is not None and changed.uploaded_bytes > 0
    assert stored_plaintext(store, f"{SECOND}.partial") == partial.read_bytes()


def test_a_fresh_partial_is_hashed_again_even_when_its_mtime_did_not_move(
    spool: Path, store: FolderStore
) -> None:
    partial = spool / f"{SECOND}.partial"
    wal_file(partial)
    first = asyncio.run(upload_partial(spool, store, LAYOUT, KEY, zstd=False))
    assert first is not None and first.fingerprint is None  # written within the last second

    stamp = partial.stat().st_mtime_ns
    with partial.open("r+b") as file:
        file.write(b"written in the same clock tick")
    os.utime(partial, ns=(stamp, stamp))
    again = asyncio.run(upload_partial(spool, store, LAYOUT, KEY, zstd=False, previous=first))

    assert again is not None and again.uploaded_bytes > 0


def test_an_abandoned_timeline_partial_is_archived_and_removed(spool: Path, store: FolderStore) -> None:
    old = wal_file(spool / f"{FIRST}.partial")
    wal_file(spool / "000000020000000000000004.partial")

    result = ready(spool, store)

    assert result.segments == 1 and result.newest_segment is None
    assert keys(store) == [f"{FIRST}.partial"]
    assert stored_plaintext(store, f"{FIRST}.partial") == old
    assert [p.name for p in spool.iterdir() if p.is_file()] == ["000000020000000000000004.partial"]


def test_a_spool_not_made_yet_has_nothing_to_archive(tmp_path: Path, store: FolderStore) -> None:
    missing = tmp_path / "not-yet"

    assert ready(missing, store) == UploadResult(0, 0, None, None)
    assert asyncio.run(upload_partial(missing, store, LAYOUT, KEY, zstd=True)) is None


def test_an_abandoned_partial_replaces_its_earlier_upload(spool: Path, store: FolderStore) -> None:
    partial = spool / f"{FIRST}.partial"
    wal_file(partial)
    asyncio.run(upload_partial(spool, store, LAYOUT, KEY, zstd=True))
    final = wal_file(partial)  # streamed further, then the server switched to timeline 2
    wal_file(spool / "000000020000000000000004.partial")

    assert ready(spool, store).segments == 1

    assert stored_plaintext(store, f"{FIRST}.partial") == final
    assert not partial.exists()


def test_a_snapshot_a_killed_call_left_is_removed(spool: Path, store: FolderStore) -> None:
    (spool / STAGING).mkdir()
    wal_file(spool / STAGING / FIRST)  # the snapshot of a call killed before it removed it
    wal_file(spool / f"{SECOND}.partial")

    assert asyncio.run(upload_partial(spool, store, LAYOUT, KEY, zstd=True)) is not None

    assert list((spool / STAGING).iterdir()) == []


def test_a_full_spool_volume_says_so(
    spool: Path, store: FolderStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = wal_file(spool / FIRST)

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "TemporaryFile", full)
    with pytest.raises(OperationError) as caught:
        ready(spool, store)

    assert caught.value.reason == Reason.DISK_FULL
    assert str(spool) in caught.value.message
    assert (spool / FIRST).read_bytes() == data and keys(store) == []
