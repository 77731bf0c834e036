import asyncio
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from habitat_operator.ops.artifacts import (
    ArtifactStore,
    AtomicDirectory,
    AtomicFile,
    file_uri,
    remove_partials,
)
from habitat_operator.ops.errors import OperationError


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    return path


@pytest.fixture
def store(root: Path) -> ArtifactStore:
    return ArtifactStore(root)


def leftovers(directory: Path) -> list[str]:
    return sorted(entry.name for entry in directory.iterdir() if ".partial-" in entry.name)


def expect_invalid(call: object) -> None:
    assert callable(call)
    with pytest.raises(OperationError) as caught:
        call()
    assert caught.value.reason == "InvalidArtifactPath"
    assert not caught.value.retryable


# ---------------------------------------------------------------- paths


def test_resolve_inside_root(store: ArtifactStore, root: Path) -> None:
    assert store.resolve("team/db.dump") == root.resolve() / "team" / "db.dump"
    assert store.resolve("./a//b") == root.resolve() / "a" / "b"


@pytest.mark.parametrize("relative", ["", ".", "/etc/passwd", "..", "../x", "a/../../x", "a/../b", "a\x00b"])
def test_resolve_rejects_escapes(store: ArtifactStore, relative: str) -> None:
    expect_invalid(lambda: store.resolve(relative))


def test_resolve_rejects_symlink_out_of_root(store: ArtifactStore, root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "escape").symlink_to(outside)
    (root / "file-link").symlink_to(outside / "secret")
    expect_invalid(lambda: store.resolve("escape/db.dump"))
    expect_invalid(lambda: store.resolve("file-link"))


def test_resolve_follows_symlink_within_root(store: ArtifactStore, root: Path) -> None:
    (root / "real").mkdir()
    (root / "alias").symlink_to(root / "real")
    assert store.resolve("alias/db.dump") == root.resolve() / "real" / "db.dump"


def test_uri_round_trip(store: ArtifactStore) -> None:
    path = store.resolve("team a/db 1.dump")
    uri = file_uri(path)
    assert uri.startswith("file:///")
    assert "%20" in uri
    assert store.path_for(uri) == path


@pytest.mark.parametrize(
    "uri",
    [
        "s3://bucket/db.dump",
        "file://otherhost{root}/db.dump",
        "file:///elsewhere/db.dump",
        "file://{root}/../x",
        "file://{root}",
        "db.dump",
    ],
)
def test_path_for_rejects_foreign_uris(store: ArtifactStore, uri: str) -> None:
    expect_invalid(lambda: store.path_for(uri.format(root=store.root)))


# ---------------------------------------------------------------- atomic writes


def test_atomic_file_appears_only_when_done(root: Path) -> None:
    destination = root / "new" / "nested" / "db.dump"
    with AtomicFile(destination) as out:
        out.write(b"hello ")
        assert not destination.exists()
        assert out.temp_path.parent == destination.parent
        assert out.temp_path.name.startswith(".db.dump.partial-")
        out.write(b"world")
    assert destination.read_bytes() == b"hello world"
    assert destination.stat().st_mode & 0o777 == 0o600
    assert leftovers(destination.parent) == []


def test_atomic_file_replaces_existing(root: Path) -> None:
    destination = root / "db.dump"
    destination.write_bytes(b"old")
    with AtomicFile(destination) as out:
        out.write(b"new")
    assert destination.read_bytes() == b"new"


def test_atomic_file_sync_then_verify_before_rename(root: Path) -> None:
    destination = root / "db.dump"
    with AtomicFile(destination) as out:
        out.write(b"data")
        out.sync()
        assert out.temp_path.read_bytes() == b"data"
        assert not destination.exists()
        with pytest.raises(ValueError, match="not open"):
            out.write(b"more")
    assert destination.read_bytes() == b"data"


def test_atomic_file_error_leaves_nothing(root: Path) -> None:
    destination = root / "db.dump"
    destination.write_bytes(b"previous")
    with pytest.raises(RuntimeError), AtomicFile(destination) as out:
        out.write(b"half")
        raise RuntimeError("dump failed")
    assert destination.read_bytes() == b"previous"
    assert leftovers(root) == []


def test_atomic_file_async_commit(root: Path) -> None:
    destination = root / "db.dump"

    async def write() -> None:
        async with AtomicFile(destination) as out:
            out.write(b"async")

    asyncio.run(write())
    assert destination.read_bytes() == b"async"


def test_atomic_file_cancellation_leaves_nothing(root: Path) -> None:
    destination = root / "db.dump"
    started = asyncio.Event()

    async def write_forever() -> None:
        async with AtomicFile(destination) as out:
            out.write(b"partial")
            started.set()
            await asyncio.sleep(3600)

    async def main() -> None:
        task = asyncio.create_task(write_forever())
        await started.wait()
        assert leftovers(root) != []
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert not destination.exists()
    assert leftovers(root) == []


def test_atomic_directory(root: Path) -> None:
    destination = root / "db.dir"
    with AtomicDirectory(destination) as out:
        (out.temp_path / "toc.dat").write_bytes(b"toc")
        assert not destination.exists()
    assert (destination / "toc.dat").read_bytes() == b"toc"
    assert leftovers(root) == []


def test_atomic_directory_replaces_existing(root: Path) -> None:
    destination = root / "db.dir"
    destination.mkdir()
    (destination / "stale.dat").write_bytes(b"old")
    with AtomicDirectory(destination) as out:
        (out.temp_path / "toc.dat").write_bytes(b"new")
    assert sorted(p.name for p in destination.iterdir()) == ["toc.dat"]
    assert leftovers(root) == []


def test_atomic_directory_error_leaves_nothing(root: Path) -> None:
    with pytest.raises(RuntimeError), AtomicDirectory(root / "db.dir") as out:
        (out.temp_path / "toc.dat").write_bytes(b"toc")
        raise RuntimeError("pg_dump failed")
    assert list(root.iterdir()) == []


def test_remove_partials(root: Path) -> None:
    (root / ".a.dump.partial-0123").write_bytes(b"x")
    (root / ".b.dump.partial-4567").write_bytes(b"x")
    (root / ".a.dir.partial-89ab").mkdir()
    (root / ".a.dir.partial-89ab" / "toc.dat").write_bytes(b"x")
    (root / "a.dump").write_bytes(b"keep")
    (root / ".hidden").write_bytes(b"keep")

    removed = remove_partials(root, "a.dump")
    assert [p.name for p in removed] == [".a.dump.partial-0123"]
    assert sorted(p.name for p in remove_partials(root)) == [".a.dir.partial-89ab", ".b.dump.partial-4567"]
    assert sorted(p.name for p in root.iterdir()) == [".hidden", "a.dump"]


def test_remove_partials_of_missing_directory(tmp_path: Path) -> None:
    assert remove_partials(tmp_path / "missing") == []


# ---------------------------------------------------------------- delete


def test_delete_file_and_directory(store: ArtifactStore) -> None:
    file = store.resolve("ns/db.dump")
    file.parent.mkdir()
    file.write_bytes(b"x")
    directory = store.resolve("ns/db.dir")
    directory.mkdir()
    (directory / "toc.dat").write_bytes(b"x")

    store.delete(file_uri(file))
    store.delete(file_uri(directory))
    assert list(file.parent.iterdir()) == []


def test_delete_missing_is_fine(store: ArtifactStore) -> None:
    store.delete(file_uri(store.resolve("gone.dump")))
    store.delete(file_uri(store.resolve("no/such/dir/gone.dump")))


def test_delete_outside_root_is_refused(store: ArtifactStore, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    expect_invalid(lambda: store.delete(victim.as_uri()))
    assert victim.exists()


# ---------------------------------------------------------------- full disk


@pytest.fixture
def tiny_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (needs root and permission to mount)."""
    mountpoint = tmp_path / "tiny"
    mountpoint.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mountpoint)], capture_output=True, check=False
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True)


def test_disk_full_leaves_no_partial(tiny_filesystem: Path) -> None:
    destination = tiny_filesystem / "db.dump"
    with pytest.raises(OperationError) as caught, AtomicFile(destination) as out:
        for _ in range(4):
            out.write(os.urandom(512 * 1024))
    assert caught.value.reason == "DiskFull"
    assert not caught.value.retryable
    assert list(tiny_filesystem.iterdir()) == []
