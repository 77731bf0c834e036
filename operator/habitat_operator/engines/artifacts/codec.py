"""An artifact's bytes, both ways: pg_dump's output -> zstd (optional) -> encryption (optional) -> stored.

The SHA-256 is always of the stored bytes, so a checksum proves what is on disk or in the bucket.
On the way back, a zstd stream is recognised by its frame magic after decryption, so a reader needs
no flag to know how an artifact was compressed, and pg_restore always gets a plain archive.
Both classes block: use them from an ENGINE_POOL thread.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import IO, Protocol, cast

import zstandard

from habitat_operator.api.common import Reason
from habitat_operator.engines.artifacts.crypto import MAGIC, Decryptor, Encryptor, is_encrypted
from habitat_operator.errors import PermanentError

READ_SIZE = 1 << 20
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ZSTD_LEVEL = 3
# No worker threads: zstd compresses on the thread that copies pg_dump's output. pg_dump, its server
# backend and this thread already fill two cores, and worker threads only added hand-offs and job
# buffers (docs/benchmarks.md: slower, and 67 MiB more RSS).
ZSTD_THREADS = 0


class Writable(Protocol):
    def write(self, data: bytes) -> None: ...

    def sync(self) -> None: ...


class Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...

    def close(self) -> None: ...


class ArtifactSink:
    """Compresses (zstd, optionally), encrypts (optionally), hashes and writes pg_dump's output."""

    def __init__(self, out: Writable, encryption_key: bytes | None, *, zstd: bool = False) -> None:
        self._out = out
        self._encryptor = Encryptor(encryption_key) if encryption_key is not None else None
        self._compressor = (
            zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=ZSTD_THREADS).compressobj() if zstd else None
        )
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        if self._compressor:
            chunk = self._compressor.compress(chunk)
        self._seal(chunk)

    def finish(self) -> None:
        if self._compressor:
            self._seal(self._compressor.flush())
        if self._encryptor:
            self._emit(self._encryptor.finalize())
        self._out.sync()

    def _seal(self, data: bytes) -> None:
        if data:
            self._emit(self._encryptor.update(data) if self._encryptor else data)

    def _emit(self, data: bytes) -> None:
        if data:
            self.sha256.update(data)
            self.size += len(data)
            self._out.write(data)


class PlaintextReader:
    """Reads a stored artifact chunk by chunk: hashes it, decrypts it if a key is given, and
    decompresses it if it is zstd. `sha256` is complete once `read` has returned b""."""

    def __init__(self, raw: Readable, encryption_key: bytes | None) -> None:
        self._raw = raw
        self._decryptor = Decryptor(encryption_key) if encryption_key is not None else None
        self._zstd: zstandard.ZstdDecompressionReader | None = None
        self._sniffed = False
        self._done = False
        self.sha256 = hashlib.sha256()
        self.size = 0

    def read(self) -> bytes:
        """The next non-empty plaintext chunk; b"" at the end, once the whole stream is authenticated.

        A decompressed chunk is at most READ_SIZE, however well the data compressed: 1 MiB of zstd
        can hold gigabytes of a blank column."""
        if not self._sniffed:
            self._sniffed = True
            first = self._next_stored_plain()
            if not first.startswith(ZSTD_MAGIC):
                return first
            source = cast("IO[bytes]", _Prepended(first, self._next_stored_plain))  # it only reads
            self._zstd = zstandard.ZstdDecompressor().stream_reader(
                source, read_across_frames=True, closefd=False
            )
        if self._zstd is None:
            return self._next_stored_plain()
        try:
            return self._zstd.read(READ_SIZE)
        except zstandard.ZstdError as error:
            raise PermanentError(Reason.VERIFICATION_FAILED, f"artifact is corrupt: {error}") from None

    @property
    def finished(self) -> bool:
        """Whether the whole stored artifact has been read (and `sha256` is complete)."""
        return self._done

    def drain(self) -> None:
        """Read to the end without decompressing, once the consumer stopped reading: the SHA-256
        completes and every encrypted chunk is still authenticated, at a fraction of the cost."""
        while self._next_stored_plain():
            pass

    def close(self) -> None:
        self._raw.close()

    def _next_stored_plain(self) -> bytes:
        """The next non-empty piece of the stored bytes, hashed and decrypted; b"" at the end."""
        while not self._done:
            raw = self._raw.read(READ_SIZE)
            if not raw:
                self._done = True
                return self._decryptor.finalize() if self._decryptor else b""
            if not self.size and self._decryptor is None and is_encrypted(raw[: len(MAGIC)]):
                raise PermanentError(Reason.DECRYPTION_FAILED, "artifact is encrypted but no key was given")
            self.sha256.update(raw)
            self.size += len(raw)
            plain = self._decryptor.update(raw) if self._decryptor else raw
            if plain:
                return plain
        return b""


class _Prepended:
    """What zstd's stream reader reads: the piece already taken to sniff the format, then the rest."""

    def __init__(self, first: bytes, rest: Callable[[], bytes]) -> None:
        self._first: bytes | None = first
        self._rest = rest

    def read(self, size: int = -1, /) -> bytes:
        if self._first is not None:
            first, self._first = self._first, None
            return first
        return self._rest()


def starts_compressed(head: bytes) -> bool:
    """Whether an unencrypted artifact starting with `head` is zstd (pg_restore cannot read it as is)."""
    return head.startswith(ZSTD_MAGIC)
