import os

import pytest

from habitat_operator.engines.artifacts.crypto import CHUNK_SIZE, MAGIC, Decryptor, Encryptor, is_encrypted
from habitat_operator.errors import OperationError

KEY = os.urandom(32)
SMALL_CHUNK = 64


def encrypt(plaintext: bytes, *, key: bytes = KEY, chunk_size: int = SMALL_CHUNK, step: int = 1000) -> bytes:
    encryptor = Encryptor(key, chunk_size=chunk_size)
    parts = [encryptor.update(plaintext[i : i + step]) for i in range(0, len(plaintext), step)]
    return b"".join(parts) + encryptor.finalize()


def decrypt(ciphertext: bytes, *, key: bytes = KEY, step: int = 1000) -> bytes:
    decryptor = Decryptor(key)
    parts = [decryptor.update(ciphertext[i : i + step]) for i in range(0, len(ciphertext), step)]
    return b"".join(parts) + decryptor.finalize()


def expect_failure(ciphertext: bytes, *, key: bytes = KEY) -> OperationError:
    with pytest.raises(OperationError) as caught:
        decrypt(ciphertext, key=key)
    assert caught.value.reason == "DecryptionFailed"
    assert not caught.value.retryable
    return caught.value


@pytest.mark.parametrize(
    "size", [0, 1, SMALL_CHUNK - 1, SMALL_CHUNK, SMALL_CHUNK + 1, 10 * SMALL_CHUNK, 5000]
)
@pytest.mark.parametrize("step", [1, 7, SMALL_CHUNK, 1000])
def test_round_trip_any_size_and_split(size: int, step: int) -> None:
    plaintext = os.urandom(size)
    assert decrypt(encrypt(plaintext, step=step), step=step) == plaintext


def test_round_trip_default_chunk_size() -> None:
    plaintext = os.urandom(2 * CHUNK_SIZE + 123)
    ciphertext = encrypt(plaintext, chunk_size=CHUNK_SIZE, step=CHUNK_SIZE)
    assert decrypt(ciphertext, step=300_000) == plaintext


def test_overhead_is_header_and_one_tag_per_chunk() -> None:
    ciphertext = encrypt(b"x" * (3 * SMALL_CHUNK))
    # Three full chunks, then an empty final chunk: header 37 bytes, 4 tags of 16.
    assert len(ciphertext) == 3 * SMALL_CHUNK + 37 + 4 * 16


def test_output_is_marked_and_hides_plaintext() -> None:
    plaintext = b"PGDMP" + b"secret table contents " * 100
    ciphertext = encrypt(plaintext)
    assert ciphertext.startswith(MAGIC)
    assert is_encrypted(ciphertext)
    assert not is_encrypted(plaintext)
    assert b"secret table contents" not in ciphertext


def test_same_plaintext_encrypts_differently() -> None:
    assert encrypt(b"same") != encrypt(b"same")


def test_any_key_length_works() -> None:
    for key in (b"k", b"short passphrase", os.urandom(64)):
        assert decrypt(encrypt(b"data", key=key), key=key) == b"data"


def test_empty_key_is_rejected() -> None:
    for make in (Encryptor, Decryptor):
        with pytest.raises(OperationError) as caught:
            make(b"")
        assert caught.value.reason == "KeyInvalid"


def test_wrong_key_fails() -> None:
    expect_failure(encrypt(b"data" * 100), key=os.urandom(32))


@pytest.mark.parametrize("position", [0, 8, 12, 30, 40, 100, -1])
def test_flipped_byte_fails(position: int) -> None:
    ciphertext = bytearray(encrypt(os.urandom(500)))
    ciphertext[position] ^= 0x01
    expect_failure(bytes(ciphertext))


def test_truncation_inside_a_chunk_fails() -> None:
    ciphertext = encrypt(os.urandom(500))
    expect_failure(ciphertext[:-5])


def test_truncation_at_a_chunk_boundary_fails() -> None:
    ciphertext = encrypt(os.urandom(4 * SMALL_CHUNK))
    sealed = SMALL_CHUNK + 16
    # Drop the empty final chunk, then also a full one: each leaves only non-final chunks.
    expect_failure(ciphertext[:-16])
    expect_failure(ciphertext[: -16 - sealed])


def test_header_only_fails() -> None:
    expect_failure(encrypt(b"")[:37])


def test_truncated_header_fails() -> None:
    expect_failure(encrypt(b"data")[:20])
    expect_failure(b"")


def test_dropped_chunk_fails() -> None:
    ciphertext = encrypt(os.urandom(3 * SMALL_CHUNK + 10))
    sealed = SMALL_CHUNK + 16
    expect_failure(ciphertext[: 37 + sealed] + ciphertext[37 + 2 * sealed :])


def test_swapped_chunks_fail() -> None:
    ciphertext = encrypt(os.urandom(3 * SMALL_CHUNK + 10))
    sealed = SMALL_CHUNK + 16
    first, second = ciphertext[37 : 37 + sealed], ciphertext[37 + sealed : 37 + 2 * sealed]
    expect_failure(ciphertext[:37] + second + first + ciphertext[37 + 2 * sealed :])


def test_appended_data_fails() -> None:
    ciphertext = encrypt(os.urandom(100))
    expect_failure(ciphertext + ciphertext[37:])


def test_plaintext_input_is_rejected_early() -> None:
    decryptor = Decryptor(KEY)
    with pytest.raises(OperationError, match="not encrypted"):
        decryptor.update(b"PGDMP\x01\x0e\x00")


def test_failure_message_is_one_line_without_key() -> None:
    error = expect_failure(encrypt(b"data"), key=b"the-wrong-key")
    assert "\n" not in error.message
    assert "the-wrong-key" not in error.message
    assert KEY.hex() not in error.message
