"""Artifacts on a filesystem: paths confined to a root, and all-or-nothing writes.

An artifact is written under a temporary name `.<name>.partial-<random>` next to its final place,
synced, and renamed into place, so a reader never sees half an artifact and a crash leaves only a
partial that `remove_partials` recognises. Artifacts are created readable by the owner only.
"""

import asyncio
import errno
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import BinaryIO, Self
from urllib.parse import unquote, urlsplit

from habitat_operator.ops.errors import OperationError

_PARTIAL_MARKER = ".partial-"
_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


def partial_path(destination: Path) -> Path:
    """A fresh temporary name for `destination`, in the same directory (so rename is atomic)."""
    return destination.with_name(f".{destination.name}{_PARTIAL_MARKER}{secrets.token_hex(6)}")


def remove_partials(directory: Path, name: str | None = None) -> list[Path]:
    """Remove leftovers of interrupted writes in `directory` (only those for `name` if given).

    Without `name` this also removes the partials of writes still in progress, so call it that way
    only when no write into `directory` can be running (e.g. at operator start).
    """
    prefix = f".{name}{_PARTIAL_MARKER}" if name is not None else "."
    removed = []
    try:
        entries = list(directory.iterdir())
    except FileNotFoundError:
        return []
    for entry in entries:
        if entry.name.startswith(prefix) and _PARTIAL_MARKER in entry.name:
            _remove_tree_or_file(entry)
            removed.append(entry)
    return removed


def file_uri(path: Path) -> str:
    return path.resolve().as_uri()


def fsync_directory(directory: Path) -> None:
    """Make renames and creations inside `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def disk_errors(what: Path) -> Iterator[None]:
    """Turn "no space left" into OperationError("DiskFull")."""
    try:
        yield
    except OSError as error:
        if error.errno in _DISK_FULL_ERRNOS:
            raise OperationError(
                "DiskFull", f"no space left on the device holding {what.parent}", retryable=False
            ) from None
        raise


def ensure_directory(directory: Path) -> None:
    """Create `directory` and its missing parents, durably."""
    missing = [d for d in (directory, *directory.parents) if not d.exists()]
    for created in reversed(missing):
        with disk_errors(created):
            created.mkdir(exist_ok=True)
            fsync_directory(created.parent)


class _AtomicTarget:
    """Shared commit/abort protocol of AtomicFile and AtomicDirectory."""

    def __init__(self, destination: Path) -> None:
        self.destination = destination
        self.temp_path = partial_path(destination)

    def _create(self) -> None:
        raise NotImplementedError

    def _finish_writing(self) -> None:
        """Flush what was written to disk before the rename."""

    def _replace(self) -> None:
        os.replace(self.temp_path, self.destination)

    def __enter__(self) -> Self:
        ensure_directory(self.destination.parent)
        with disk_errors(self.destination):
            self._create()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is not None:
            self._abort()
            return
        try:
            with disk_errors(self.destination):
                self._finish_writing()
                self._replace()
                fsync_directory(self.destination.parent)
        except BaseException:
            self._abort()
            raise

    async def __aenter__(self) -> Self:
        return await asyncio.to_thread(self.__enter__)

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.__exit__, kind, error, tb)

    def _abort(self) -> None:
        _remove_tree_or_file(self.temp_path)


class AtomicFile(_AtomicTarget):
    """Write `destination` all or nothing, as a sync or async context manager.

    Leaving the block normally syncs the file, renames it into place (replacing an existing file)
    and syncs the directory; leaving it by an exception or cancellation removes the temporary file.
    `sync()` may be called earlier, e.g. to verify `temp_path` before it is renamed.
    """

    _file: BinaryIO | None = None

    def _create(self) -> None:
        fd = os.open(self.temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self._file = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> None:
        if self._file is None:
            raise ValueError("AtomicFile is not open for writing")
        with disk_errors(self.destination):
            self._file.write(data)

    def sync(self) -> None:
        """Flush and fsync the temporary file and close it for writing."""
        if self._file is None:
            return
        file, self._file = self._file, None
        with disk_errors(self.destination), file:
            file.flush()
            os.fsync(file.fileno())

    def _finish_writing(self) -> None:
        self.sync()

    def _abort(self) -> None:
        if self._file is not None:
            file, self._file = self._file, None
            # A full disk can fail the final flush; the file is removed anyway.
            with suppress(OSError):
                file.close()
        super()._abort()


class AtomicDirectory(_AtomicTarget):
    """Fill a directory all or nothing; the caller writes into `temp_path` and syncs its files.

    An existing directory at `destination` is replaced: it is moved aside under a partial name,
    the new one is renamed into place, then the old one is removed.
    """

    def _create(self) -> None:
        self.temp_path.mkdir(mode=0o700)

    def _finish_writing(self) -> None:
        fsync_directory(self.temp_path)

    def _replace(self) -> None:
        if not self.destination.is_dir() or self.destination.is_symlink():
            super()._replace()
            return
        old = partial_path(self.destination)
        os.rename(self.destination, old)
        os.rename(self.temp_path, self.destination)
        _remove_tree_or_file(old)


def _remove_tree_or_file(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class ArtifactStore:
    """Artifacts under one root directory; every path handed in is checked to stay inside it."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def resolve(self, relative: str) -> Path:
        """The absolute path of `relative` under the root, symlinks resolved.

        Rejects absolute paths, `..` segments, and paths that symlinks lead out of the root.
        """
        parts = PurePosixPath(relative).parts
        if not relative or "\x00" in relative or PurePosixPath(relative).is_absolute() or ".." in parts:
            raise _invalid_path(relative)
        path = (self.root / relative).resolve()
        if path == self.root or not path.is_relative_to(self.root):
            raise _invalid_path(relative)
        return path

    def path_for(self, uri: str) -> Path:
        """The path a `file://` URI of this store names; anything else is InvalidArtifactPath."""
        parts = urlsplit(uri)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
            raise _invalid_path(uri)
        path = Path(unquote(parts.path))
        if not path.is_absolute() or not path.is_relative_to(self.root):
            raise _invalid_path(uri)
        return self.resolve(str(path.relative_to(self.root)))

    def delete(self, uri: str) -> None:
        """Remove an artifact (file or directory); a missing one is not an error.

        A directory is first renamed to a partial name, so it disappears at once and a crash
        midway leaves a partial rather than half an artifact.
        """
        path = self.path_for(uri)
        if path.is_dir():
            doomed = partial_path(path)
            os.rename(path, doomed)
            _remove_tree_or_file(doomed)
        else:
            path.unlink(missing_ok=True)
        if path.parent.exists():
            fsync_directory(path.parent)


def _invalid_path(path: str) -> OperationError:
    return OperationError(
        "InvalidArtifactPath", f"artifact path {path!r} is not inside the backup root", retryable=False
    )
