import asyncio
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from habitat_operator.engines.artifacts.store import (
    ArtifactStore,
    AtomicDirectory,
    AtomicFile,
    file_uri,
    remove_partials,
    sweep_partials,
)
from habitat_operator.errors import OperationError


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


# ---------------------------------------------------------------- namespaces


def artifact(store: ArtifactStore, relative: str) -> str:
    """The URI of a file written at `relative` under the store's root."""
    path = store.root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return file_uri(path)


def test_path_for_namespace_accepts_its_own_artifacts(store: ArtifactStore) -> None:
    uri = artifact(store, "nightly/team-a/db.dump")
    assert store.path_for(uri, namespace="team-a") == store.root / "nightly" / "team-a" / "db.dump"
    directory = store.root / "team-a" / "db.dir"
    directory.mkdir(parents=True)
    assert store.path_for(file_uri(directory), namespace="team-a") == directory


@pytest.mark.parametrize(
    "relative",
    [
        "nightly/team-b/db.dump",  # another namespace's artifact
        "nightly/team-a/sub/db.dump",  # not a direct child of the namespace's directory
        "team-a/db.dump/inner",  # inside an artifact, not an artifact
        "team-ab/db.dump",  # a prefix of the name is not the name
        "db.dump",  # at the root, in no namespace
    ],
)
def test_path_for_namespace_refuses_other_places(store: ArtifactStore, relative: str) -> None:
    uri = file_uri(store.root / relative)
    with pytest.raises(OperationError) as caught:
        store.path_for(uri, namespace="team-a")
    assert caught.value.reason == "InvalidArtifactPath"
    assert not caught.value.retryable
    assert "not in namespace team-a's part of the backup store" in caught.value.message


def test_path_for_without_namespace_is_unrestricted(store: ArtifactStore) -> None:
    uri = artifact(store, "nightly/team-b/db.dump")
    assert store.path_for(uri) == store.path_for(uri, namespace=None) == store.root / "nightly/team-b/db.dump"


def test_path_for_namespace_root_named_like_the_namespace(tmp_path: Path) -> None:
    """The namespace's directory must be below the root, not the root itself."""
    store = ArtifactStore(tmp_path / "team-a")
    store.root.mkdir()
    expect_invalid(lambda: store.path_for(artifact(store, "db.dump"), namespace="team-a"))


def test_path_for_namespace_judges_where_a_symlink_leads(store: ArtifactStore, root: Path) -> None:
    theirs = artifact(store, "nightly/team-b/db.dump")
    (root / "nightly" / "team-a").mkdir()
    # A link in team-a's directory to team-b's artifact is still team-b's artifact.
    (root / "nightly" / "team-a" / "stolen.dump").symlink_to(root / "nightly" / "team-b" / "db.dump")
    expect_invalid(lambda: store.path_for(file_uri(root / "nightly/team-a/stolen.dump"), namespace="team-a"))
    expect_invalid(lambda: store.path_for(theirs, namespace="team-a"))
    # A link that stays within the namespace's own artifacts is fine.
    (root / "alias").symlink_to(root / "nightly")
    uri = (root / "alias" / "team-b" / "db.dump").as_uri()
    assert store.path_for(uri, namespace="team-b") == root.resolve() / "nightly" / "team-b" / "db.dump"


def test_path_for_namespace_refuses_symlink_out_of_root(
    store: ArtifactStore, root: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside" / "team-a"
    outside.mkdir(parents=True)
    (outside / "db.dump").write_bytes(b"secret")
    (root / "escape").symlink_to(tmp_path / "outside")
    expect_invalid(lambda: store.path_for((root / "escape/team-a/db.dump").as_uri(), namespace="team-a"))


def test_delete_is_confined_to_a_namespace(store: ArtifactStore) -> None:
    uri = artifact(store, "team-b/db.dump")
    expect_invalid(lambda: store.delete(uri, namespace="team-a"))
    assert store.path_for(uri).exists()
    store.delete(uri, namespace="team-b")
    assert not store.path_for(uri).exists()


def test_namespace_directory_is_created_owner_only(store: ArtifactStore) -> None:
    directory = store.namespace_directory("nightly/full", "team-a")
    assert directory == store.root / "nightly" / "full" / "team-a"
    for created in (directory, directory.parent, directory.parent.parent):
        assert created.is_dir()
        assert created.stat().st_mode & 0o777 == 0o700
    # Again: the same directory, no error.
    assert store.namespace_directory("nightly/full", "team-a") == directory
    # An artifact written there belongs to the namespace.
    (directory / "db.dump").write_bytes(b"x")
    assert store.path_for(file_uri(directory / "db.dump"), namespace="team-a") == directory / "db.dump"


def test_namespace_directory_refuses_symlink_out_of_root_at_namespace_level(
    store: ArtifactStore, root: Path, tmp_path: Path
) -> None:
    """Finding 12: `<root>/sym/<ns>` linked out of the root, with `path: sym`."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "sym").mkdir()
    (root / "sym" / "team-a").symlink_to(outside)
    with pytest.raises(OperationError) as caught:
        store.namespace_directory("sym", "team-a")
    assert caught.value.reason == "InvalidArtifactPath"
    assert not caught.value.retryable
    assert list(outside.iterdir()) == []


def test_namespace_directory_refuses_dangling_symlink_out_of_root(
    store: ArtifactStore, root: Path, tmp_path: Path
) -> None:
    (root / "sym").mkdir()
    (root / "sym" / "team-a").symlink_to(tmp_path / "outside" / "not-yet")
    expect_invalid(lambda: store.namespace_directory("sym", "team-a"))
    assert not (tmp_path / "outside").exists()


def test_namespace_directory_refuses_symlink_at_the_storage_path(
    store: ArtifactStore, root: Path, tmp_path: Path
) -> None:
    (tmp_path / "outside").mkdir()
    (root / "sym").symlink_to(tmp_path / "outside")
    expect_invalid(lambda: store.namespace_directory("sym", "team-a"))
    assert list((tmp_path / "outside").iterdir()) == []


def test_namespace_directory_refuses_symlink_into_another_namespace(store: ArtifactStore, root: Path) -> None:
    (root / "b" / "team-b").mkdir(parents=True)
    (root / "a").mkdir()
    (root / "a" / "team-a").symlink_to(root / "b" / "team-b")
    expect_invalid(lambda: store.namespace_directory("a", "team-a"))


def test_namespace_directory_follows_symlinks_that_stay_inside(store: ArtifactStore, root: Path) -> None:
    (root / "real").mkdir()
    (root / "alias").symlink_to(root / "real")
    assert store.namespace_directory("alias", "team-a") == root.resolve() / "real" / "team-a"
    (root / "moved" / "team-b").mkdir(parents=True)
    (root / "real" / "team-b").symlink_to(root / "moved" / "team-b")
    assert store.namespace_directory("alias", "team-b") == root.resolve() / "moved" / "team-b"
    # A dangling link inside the root: the directory is created where it leads.
    (root / "real" / "team-c").symlink_to(root / "later" / "team-c")
    assert store.namespace_directory("real", "team-c") == root.resolve() / "later" / "team-c"
    assert (root / "later" / "team-c").is_dir()


@pytest.mark.parametrize(
    ("path", "namespace"),
    [("../x", "team-a"), ("/etc", "team-a"), ("", "team-a")]
    + [("nightly", bad) for bad in ("", ".", "..", "a/b", "a\x00b")],
)
def test_namespace_directory_rejects_bad_names(store: ArtifactStore, path: str, namespace: str) -> None:
    expect_invalid(lambda: store.namespace_directory(path, namespace))
    assert list(store.root.iterdir()) == []


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


def test_sweep_partials_walks_the_whole_root(root: Path, tmp_path: Path) -> None:
    deep = root / "nightly" / "team-a"
    deep.mkdir(parents=True)
    (root / ".top.dump.partial-0a1b2c3d4e5f").write_bytes(b"x")
    (deep / ".db.dump.partial-0123456789ab").write_bytes(b"x")
    (deep / ".db.dir.partial-ba9876543210").mkdir()
    (deep / ".db.dir.partial-ba9876543210" / "toc.dat").write_bytes(b"x")
    (deep / "db.dir").mkdir()
    (deep / "db.dir" / "toc.dat").write_bytes(b"keep")
    (deep / "db.dump").write_bytes(b"keep")
    (deep / ".hidden").write_bytes(b"keep")
    (deep / "notes.partial-0123").write_bytes(b"keep")  # not hidden: not ours
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / ".x.dump.partial-0123456789ab").write_bytes(b"not under the root")
    (root / "link").symlink_to(outside)

    removed = sweep_partials(root)
    assert sorted(p.relative_to(root).as_posix() for p in removed) == [
        ".top.dump.partial-0a1b2c3d4e5f",
        "nightly/team-a/.db.dir.partial-ba9876543210",
        "nightly/team-a/.db.dump.partial-0123456789ab",
    ]
    assert sorted(p.name for p in deep.iterdir()) == [".hidden", "db.dir", "db.dump", "notes.partial-0123"]
    assert (outside / ".x.dump.partial-0123456789ab").exists()
    assert sweep_partials(root) == []


def test_sweep_partials_of_missing_root(tmp_path: Path) -> None:
    assert sweep_partials(tmp_path / "missing") == []


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


def test_scratch_folders_left_by_a_crash_are_swept(tmp_path: Path) -> None:
    from habitat_operator.engines.artifacts.store import (
        SCRATCH_FOLDER_PREFIX,
        STAGING_FOLDER_PREFIX,
        sweep_scratch_folders,
    )

    left = tmp_path / f"{SCRATCH_FOLDER_PREFIX}abc"
    left.mkdir(mode=0o700)
    (left / "plaintext.dump").write_bytes(b"PGDMP")
    staged = tmp_path / f"{STAGING_FOLDER_PREFIX}def"
    (staged / "artifact").mkdir(parents=True)
    (staged / "artifact" / "toc.dat").write_bytes(b"PGDMP")
    other = tmp_path / "someone-elses"
    other.mkdir()
    assert sweep_scratch_folders(tmp_path) == [left, staged]
    assert not left.exists() and not staged.exists()
    assert other.exists()
