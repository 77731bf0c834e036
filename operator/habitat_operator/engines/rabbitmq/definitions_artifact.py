"""A definitions document as an artifact, through the same codec as database dumps (zstd, encryption,
SHA-256 of the stored bytes): written all or nothing to a file or a bucket, and read back within a bound.

A document is a few megabytes at most (MAX_DEFINITIONS_BYTES), so it is sealed in memory and written
in one piece; reading stops past the bound, however the stored bytes decompress. Blocking: call the
functions with engines.threads.in_thread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from habitat_operator.api.common import Reason
from habitat_operator.engines.artifacts.codec import ArtifactSink, PlaintextReader, Readable
from habitat_operator.engines.artifacts.s3 import Bucket
from habitat_operator.engines.artifacts.store import AtomicFile, file_uri
from habitat_operator.engines.rabbitmq.definitions import MAX_DEFINITIONS_BYTES, too_large
from habitat_operator.errors import PermanentError, RetryableError

SUFFIX = ".definitions"
# The stored document carries a little more than the export (the export record, JSON's escaping).
MAX_PLAINTEXT_BYTES = MAX_DEFINITIONS_BYTES + (1 << 20)


Check = Callable[[Callable[[], Readable]], None]
"""Reads an artifact back through the opener it is given, and raises if it is not what was written."""


@dataclass(frozen=True)
class Sealed:
    """The stored bytes of a document, and their SHA-256."""

    data: bytes
    sha256: str


class _Memory:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data

    def sync(self) -> None:
        pass


def seal(plaintext: bytes, encryption_key: bytes | None, zstd: bool) -> Sealed:
    memory = _Memory()
    sink = ArtifactSink(memory, encryption_key, zstd=zstd)
    sink.write(plaintext)
    sink.finish()
    return Sealed(bytes(memory.data), sink.sha256.hexdigest())


def read_plaintext(raw: Readable, encryption_key: bytes | None, what: str) -> tuple[bytes, str]:
    """The plaintext of stored bytes (every chunk authenticated), and the SHA-256 of the stored bytes."""
    reader = PlaintextReader(raw, encryption_key)
    try:
        plaintext = bytearray()
        while chunk := reader.read():
            plaintext += chunk
            if len(plaintext) > MAX_PLAINTEXT_BYTES:
                raise too_large(what)
    finally:
        reader.close()
    return bytes(plaintext), reader.sha256.hexdigest()


def write_file(destination: Path, sealed: Sealed, check: Check | None = None) -> str:
    """The sealed bytes at `destination`, all or nothing, once `check` (if given) accepts what was
    written under the temporary name; their URI."""
    with AtomicFile(destination) as out:
        out.write(sealed.data)
        if check is not None:
            out.sync()
            temp_path = out.temp_path
            check(lambda: temp_path.open("rb"))
    return file_uri(destination)


def upload(bucket: Bucket, key: str, sealed: Sealed, check: Check | None = None) -> str:
    """The sealed bytes as object `key` (an interrupted upload aborted first), deleted again when
    `check` (if given) does not accept what the bucket holds; its URI."""
    bucket.abort_uploads(key)
    with bucket.upload(key) as out:
        out.write(sealed.data)
        out.complete()
    if check is not None:
        try:
            check(lambda: bucket.open(key))
        except BaseException:
            bucket.delete_artifact(key)
            raise
    return bucket.uri(key)


def check_stored(
    sealed: Sealed, encryption_key: bytes | None, what: str, open_stored: Callable[[], Readable]
) -> None:
    """Reads back what was just written: the same SHA-256, and a plaintext once decrypted (with
    functools.partial, a Check)."""
    plaintext, sha256 = read_plaintext(open_stored(), encryption_key, what)
    if sha256 != sealed.sha256:
        raise RetryableError(
            Reason.VERIFICATION_FAILED, f"{what}: the stored bytes do not match what was written"
        )
    if not plaintext:
        raise PermanentError(Reason.VERIFICATION_FAILED, f"{what}: the stored artifact is empty")
