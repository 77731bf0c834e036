"""Artifacts on a filesystem: paths confined to a root and to a namespace, and all-or-nothing writes.

The store is laid out as `<root>/<storage path>/<namespace>/<name>.dump` (or `<name>.dir`). Every
path the store hands out resolves inside the root (no symlink leads out of it), and an artifact
resolved for a namespace is a direct child of a directory named exactly like that namespace.

An artifact is written under a temporary name `.<name>.partial-<random>` next to its final place,
synced, and renamed into place, so a reader never sees half an artifact and a crash leaves only a
partial that `remove_partials` and `sweep_partials` recognise. Artifacts and the directories the
store creates are readable by the owner only.
"""

import errno
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import BinaryIO, Self
from urllib.parse import unquote, urlsplit

from habitat_operator.api.common import Reason
from habitat_operator.engines.threads import in_pool, in_thread
from habitat_operator.errors import OperationError, PermanentError

# Private folders under the scratch directory: a parallel restore's plaintext, a directory-format
# dump staged for its bucket. Named so that the operator's start can sweep what a crash left.
SCRATCH_FOLDER_PREFIX = "habitat-restore-"
STAGING_FOLDER_PREFIX = "habitat-backup-"
_PARTIAL_MARKER = ".partial-"
_PARTIAL_NAME = re.compile(r"\..+\.partial-[0-9a-f]+")
_DIRECTORY_MODE = 0o700
_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}


def partial_path(destination: Path) -> Path:
    """A fresh temporary name for `destination`, in the same directory (so rename is atomic)."""
    return destination.with_name(f".{destination.name}{_PARTIAL_MARKER}{secrets.token_hex(6)}")


def is_partial(name: str) -> bool:
    """Whether `name` is the temporary name of an unfinished write."""
    return _PARTIAL_NAME.fullmatch(name) is not None


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


def sweep_partials(root: Path) -> list[Path]:
    """Remove every leftover of an interrupted write (`.<name>.partial-<hex>`) anywhere under `root`.

    For the operator's start, when no write can be running: it removes the partials of writes in
    progress too. Symlinks are not followed; a partial that cannot be removed is left and not
    listed. Returns what was removed.
    """
    removed = []
    for directory, subdirectories, files in os.walk(root):
        for name in [*subdirectories, *files]:
            if not is_partial(name):
                continue
            entry = Path(directory, name)
            with suppress(OSError):
                _remove_tree_or_file(entry)
            if not os.path.lexists(entry):
                removed.append(entry)
        subdirectories[:] = [name for name in subdirectories if not is_partial(name)]
    return removed


@asynccontextmanager
async def scratch_folder(scratch_dir: Path | None, prefix: str) -> AsyncIterator[Path]:
    """A fresh private folder (0700) under `scratch_dir` (None: the system's temporary directory),
    removed with its content on leaving, by success, error or cancellation.

    Never in the backup store: a copy left there by a kill would sit readable beside the artifacts.
    """
    folder = Path(await in_thread(tempfile.mkdtemp, prefix=prefix, dir=scratch_dir))
    try:
        yield folder
    finally:
        await in_thread(shutil.rmtree, folder, ignore_errors=True)


def sweep_scratch_folders(scratch_dir: Path | None) -> list[Path]:
    """Removes the scratch folders that a crash cut off; run before any backup or restore starts."""
    base = scratch_dir or Path(tempfile.gettempdir())
    removed = []
    for prefix in (SCRATCH_FOLDER_PREFIX, STAGING_FOLDER_PREFIX):
        for folder in sorted(base.glob(f"{prefix}*")):
            if folder.is_dir() and not folder.is_symlink():
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
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
    """Turn "no space left" into PermanentError(Reason.DISK_FULL)."""
    try:
        yield
    except OSError as error:
        if error.errno in _DISK_FULL_ERRNOS:
            raise PermanentError(
                Reason.DISK_FULL, f"no space left on the device holding {what.parent}"
            ) from None
        raise


def ensure_directory(directory: Path, mode: int = 0o777) -> None:
    """Create `directory` and its missing parents (with `mode`, less the umask), durably."""
    missing = [d for d in (directory, *directory.parents) if not d.exists()]
    for created in reversed(missing):
        with disk_errors(created):
            created.mkdir(mode=mode, exist_ok=True)
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
        return await in_pool(self.__enter__)

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        await in_pool(self.__exit__, kind, error, tb)

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
    """Artifacts under one root directory; every path handed in is checked to stay inside it.

    Paths the store returns are resolved (symlinks followed, and checked to end inside the root),
    so reading or writing them later follows no symlink out of the root.
    """

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

    def namespace_directory(self, path: str, namespace: str) -> Path:
        """The directory `<root>/<path>/<namespace>` that a Backup in `namespace` writes into.

        Created if missing (mode 0700, parents too), and returned resolved. Both before and after
        creating it, the directory must resolve inside the root and still be named `namespace`:
        a symlink at `<path>/<namespace>` that leads out of the root, or into another namespace's
        directory, is PermanentError(INVALID_ARTIFACT_PATH), and nothing is written through it.
        """
        _check_namespace(namespace)
        directory = self.resolve(path) / namespace
        # Created where it resolves to, so that a dangling symlink inside the root is no obstacle.
        ensure_directory(self._check_namespace_directory(directory, path, namespace), mode=_DIRECTORY_MODE)
        return self._check_namespace_directory(directory, path, namespace)

    def path_for(self, uri: str, namespace: str | None = None) -> Path:
        """The path, resolved, of the artifact a `file://` URI of this store names.

        With `namespace`, the URI must name an artifact of that namespace: once resolved, a direct
        child of a directory named exactly `namespace`, below the root. Pass the namespace of the
        object that names the URI (a Restore's source, a Backup's own artifact). `namespace=None`
        lifts that rule and allows any artifact of the store: only for cross-namespace restores
        that the operator's administrator has enabled, and for the store's own bookkeeping.

        A URI of another scheme or host, outside the root, or (with `namespace`) outside that
        namespace's directory is PermanentError(INVALID_ARTIFACT_PATH).
        """
        parts = urlsplit(uri)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
            raise _invalid_path(uri)
        path = Path(unquote(parts.path))
        if not path.is_absolute() or not path.is_relative_to(self.root):
            raise _invalid_path(uri)
        resolved = self.resolve(str(path.relative_to(self.root)))
        if namespace is not None and not self._in_namespace(resolved, namespace):
            raise _outside_namespace(uri, namespace)
        return resolved

    def delete(self, uri: str, namespace: str | None = None) -> None:
        """Remove an artifact (file or directory); a missing one is not an error.

        `namespace` confines the URI as in `path_for`. A directory is first renamed to a partial
        name, so it disappears at once and a crash midway leaves a partial rather than half an
        artifact.
        """
        path = self.path_for(uri, namespace)
        if path.is_dir():
            doomed = partial_path(path)
            os.rename(path, doomed)
            _remove_tree_or_file(doomed)
        else:
            path.unlink(missing_ok=True)
        if path.parent.exists():
            fsync_directory(path.parent)

    def _in_namespace(self, resolved: Path, namespace: str) -> bool:
        return resolved.parent.name == namespace and resolved.parent != self.root

    def _check_namespace_directory(self, directory: Path, path: str, namespace: str) -> Path:
        resolved = directory.resolve()
        if resolved.name != namespace or resolved == self.root or not resolved.is_relative_to(self.root):
            raise PermanentError(
                Reason.INVALID_ARTIFACT_PATH,
                f"the directory of namespace {namespace} under storage path {path!r} is not inside"
                " the backup root (a symlink leads out of it or into another namespace's directory)",
            )
        return resolved


def _check_namespace(namespace: str) -> None:
    """A namespace is one path component: never empty, `.`, `..`, or holding `/` or NUL."""
    if namespace in ("", ".", "..") or "/" in namespace or "\x00" in namespace:
        raise PermanentError(
            Reason.INVALID_ARTIFACT_PATH, f"{namespace!r} cannot name a namespace's directory"
        )


def _invalid_path(path: str) -> OperationError:
    return PermanentError(
        Reason.INVALID_ARTIFACT_PATH, f"artifact path {path!r} is not inside the backup root"
    )


def _outside_namespace(uri: str, namespace: str) -> OperationError:
    return PermanentError(
        Reason.INVALID_ARTIFACT_PATH,
        f"artifact {uri!r} is not in namespace {namespace}'s part of the backup store"
        f" (<storage path>/{namespace}/<name>)",
    )
