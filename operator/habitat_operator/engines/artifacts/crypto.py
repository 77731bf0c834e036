"""Streaming authenticated encryption of artifacts: chunked AES-256-GCM.

Layout: a header, then the plaintext in chunks of `chunk_size` bytes, each sealed separately.

    header = MAGIC (8) | version (1) | chunk_size (4, big-endian) | salt (16) | nonce prefix (8)
    chunk i = AES-256-GCM(key, nonce = prefix | i (4, big-endian), aad = header | final flag (1))

The key is HKDF-SHA256(secret, salt) so any secret length works, but the secret should be 32 or
more random bytes (e.g. `openssl rand 32`): HKDF does not make a guessable secret strong. The
counter in the nonce detects reordered or dropped chunks, the header in the AAD binds its fields,
and the final flag detects truncation at a chunk boundary. Every chunk but the last is full; the
last one is flagged final and always shorter than a full chunk (possibly empty), so a reader knows
a full chunk is not the last without looking ahead.
"""

import os
import struct
from collections.abc import Iterator
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from habitat_operator.api.common import Reason
from habitat_operator.errors import OperationError, PermanentError

MAGIC: Final = b"HABENC\x00\x01"
VERSION: Final = 1
CHUNK_SIZE: Final = 1 << 20

_HEADER = struct.Struct(">8sBI16s8s")
_TAG_SIZE: Final = 16
_MAX_CHUNK_SIZE: Final = 64 << 20
_MAX_CHUNKS: Final = 1 << 32
_HKDF_INFO: Final = b"habitat-operator artifact encryption v1"


def is_encrypted(head: bytes) -> bool:
    """Whether an artifact starting with `head` is in this format."""
    return head.startswith(MAGIC)


def _derive_key(secret: bytes, salt: bytes) -> AESGCM:
    if not secret:
        raise PermanentError(Reason.KEY_INVALID, "encryption key is empty")
    key = HKDF(algorithm=SHA256(), length=32, salt=salt, info=_HKDF_INFO).derive(secret)
    return AESGCM(key)


def _nonce(prefix: bytes, counter: int) -> bytes:
    if counter >= _MAX_CHUNKS:
        raise PermanentError(Reason.ENCRYPTION_FAILED, "artifact too large to encrypt")
    return prefix + counter.to_bytes(4, "big")


class _Chunker:
    """Cuts a stream into chunks of `size` bytes, copying only chunks that arrive in pieces."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.pending = bytearray()

    def feed(self, data: bytes) -> Iterator[bytes | bytearray | memoryview]:
        """Full chunks completed by `data`; each is valid only until the next one is taken."""
        view = memoryview(data)
        if self.pending:
            taken = min(self.size - len(self.pending), len(view))
            self.pending += view[:taken]
            view = view[taken:]
            if len(self.pending) < self.size:
                return
            yield self.pending
            self.pending = bytearray()
        while len(view) >= self.size:
            yield view[: self.size]
            view = view[self.size :]
        self.pending += view


class Encryptor:
    """Encrypt a stream: feed plaintext to `update`, then call `finalize` once; write all outputs."""

    def __init__(self, secret: bytes, *, chunk_size: int = CHUNK_SIZE) -> None:
        salt, self._prefix = os.urandom(16), os.urandom(8)
        self._aead = _derive_key(secret, salt)
        self._header = _HEADER.pack(MAGIC, VERSION, chunk_size, salt, self._prefix)
        self._chunks = _Chunker(chunk_size)
        self._counter = 0
        self._header_sent = False

    def update(self, data: bytes) -> bytes:
        parts = self._take_header()
        parts.extend(self._seal(chunk, final=False) for chunk in self._chunks.feed(data))
        return b"".join(parts)

    def finalize(self) -> bytes:
        """The rest: the final chunk is always shorter than a full one (possibly empty)."""
        parts = self._take_header()
        parts.append(self._seal(self._chunks.pending, final=True))
        return b"".join(parts)

    def _take_header(self) -> list[bytes]:
        if self._header_sent:
            return []
        self._header_sent = True
        return [self._header]

    def _seal(self, plaintext: bytes | bytearray | memoryview, *, final: bool) -> bytes:
        nonce = _nonce(self._prefix, self._counter)
        self._counter += 1
        return self._aead.encrypt(nonce, plaintext, self._header + bytes([final]))


class Decryptor:
    """Decrypt a stream made by `Encryptor`; `finalize` must be called to detect truncation.

    Raises PermanentError(Reason.DECRYPTION_FAILED) on a wrong key, tampering, truncation or a stream
    that is not in this format. Output from `update` is authentic, but only `finalize` proves that
    the stream was complete.
    """

    def __init__(self, secret: bytes) -> None:
        if not secret:
            raise PermanentError(Reason.KEY_INVALID, "encryption key is empty")
        self._secret = secret
        self._header = bytearray()
        self._aad = b""
        self._aead: AESGCM | None = None
        self._prefix = b""
        self._chunks: _Chunker | None = None
        self._counter = 0

    def update(self, data: bytes) -> bytes:
        if self._chunks is None:
            data = self._read_header(data)
            if self._chunks is None:
                return b""
        return b"".join(self._open(chunk, final=False) for chunk in self._chunks.feed(data))

    def finalize(self) -> bytes:
        if self._chunks is None or len(self._chunks.pending) < _TAG_SIZE:
            raise _failed("encrypted artifact is truncated")
        return self._open(self._chunks.pending, final=True)

    def _read_header(self, data: bytes) -> bytes:
        """Take header bytes from `data`, parse the header once complete; return the rest."""
        missing = _HEADER.size - len(self._header)
        self._header += data[:missing]
        if not MAGIC.startswith(bytes(self._header[: len(MAGIC)])):
            raise _failed("artifact is not encrypted by habitat-operator")
        if len(self._header) < _HEADER.size:
            return b""
        _, version, chunk_size, salt, self._prefix = _HEADER.unpack(self._header)
        if version != VERSION or not 0 < chunk_size <= _MAX_CHUNK_SIZE:
            raise _failed(f"unsupported encryption header (version {version})")
        self._aead = _derive_key(self._secret, salt)
        self._aad = bytes(self._header)
        self._chunks = _Chunker(chunk_size + _TAG_SIZE)
        return data[missing:]

    def _open(self, sealed: bytes | bytearray | memoryview, *, final: bool) -> bytes:
        assert self._aead is not None
        nonce = _nonce(self._prefix, self._counter)
        self._counter += 1
        try:
            return self._aead.decrypt(nonce, sealed, self._aad + bytes([final]))
        except InvalidTag:
            raise _failed("wrong key, or the artifact is corrupted or truncated") from None


def _failed(detail: str) -> OperationError:
    return PermanentError(Reason.DECRYPTION_FAILED, f"cannot decrypt artifact: {detail}")
