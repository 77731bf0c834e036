"""A directory-format artifact as one tar stream, for a bucket: one object, one SHA-256, one upload.

`write_tar` packs a dumped folder's files (pg_dump writes no subfolders) into a stream handed to an
ArtifactSink, so compression, encryption and the checksum compose exactly as for a custom-format
artifact. `extract_tar` unpacks a PlaintextReader's stream into an empty folder, refusing anything
but plain files at the top level. Both block and stop at the next block once `stop` is set: run
them with `threads.in_stoppable_thread`.
"""

from __future__ import annotations

import tarfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, cast

from habitat_operator.api.common import Reason
from habitat_operator.engines.artifacts.codec import READ_SIZE, PlaintextReader
from habitat_operator.errors import OperationError, PermanentError, RetryableError


def write_tar(directory: Path, write: Callable[[bytes], None], stop: threading.Event) -> None:
    """Every file of `directory`, sorted by name, as an uncompressed tar stream into `write`."""
    out = cast("IO[bytes]", _StreamOut(write, stop))  # stream mode only writes: no seek, no tell
    with tarfile.open(fileobj=out, mode="w|", bufsize=READ_SIZE) as tar:
        for path in sorted(directory.iterdir()):
            if not path.is_file() or path.is_symlink():
                raise PermanentError(Reason.INVALID_REQUEST, f"{path.name} in a dumped folder is not a file")
            tar.add(path, arcname=path.name, recursive=False, filter=_anonymous)


def stream_members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """The members of a stream-mode tar, one at a time and none kept: tarfile keeps every member it
    read in an undocumented list, memory per file (14 MiB for 20,000 files).
    Guard: tests/unit/test_wal_basebackup_check.py::test_memory_does_not_grow_with_the_number_of_files"""
    while (member := tar.next()) is not None:
        yield member
        tar.members.clear()  # type: ignore[attr-defined]


def extract_tar(reader: PlaintextReader, directory: Path, stop: threading.Event) -> None:
    """Unpack the tar stream `reader` yields into `directory` (created, empty), then read the
    reader to its end, so that its SHA-256 is complete and every encrypted chunk authenticated."""
    directory.mkdir(mode=0o700)
    try:
        source = cast("IO[bytes]", PlaintextStream(reader, stop))  # stream mode only reads: no seek, no tell
        with tarfile.open(fileobj=source, mode="r|", bufsize=READ_SIZE) as tar:
            for member in stream_members(tar):
                if not member.isfile() or "/" in member.name or member.name in ("", ".", ".."):
                    raise _not_an_artifact(f"unexpected entry {member.name!r}")
                tar.extract(member, directory, filter="data")
    except (tarfile.TarError, EOFError) as error:
        raise _not_an_artifact(str(error) or type(error).__name__) from None
    reader.drain()


def _anonymous(member: tarfile.TarInfo) -> tarfile.TarInfo:
    """No owner names or ids in the artifact: they are the operator's, and mean nothing on restore."""
    member.uid = member.gid = 0
    member.uname = member.gname = ""
    return member


def _not_an_artifact(detail: str) -> OperationError:
    return PermanentError(Reason.VERIFICATION_FAILED, f"artifact is not a directory-format tar: {detail}")


def _stopped() -> OperationError:
    return RetryableError(Reason.CANCELLED, "stopped")


class _StreamOut:
    def __init__(self, write: Callable[[bytes], None], stop: threading.Event) -> None:
        self._write = write
        self._stop = stop

    def write(self, data: bytes) -> int:
        if self._stop.is_set():
            raise _stopped()
        self._write(data)
        return len(data)


class PlaintextStream:
    """A PlaintextReader as tarfile's stream mode reads it: chunks of any length, b"" at the end."""

    def __init__(self, reader: PlaintextReader, stop: threading.Event) -> None:
        self._reader = reader
        self._stop = stop

    def read(self, size: int = -1, /) -> bytes:
        if self._stop.is_set():
            raise _stopped()
        return self._reader.read()
