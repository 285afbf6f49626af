"""Encryption at rest: chunked AES-256-GCM (the STREAM construction), from `cryptography`.

Layout of an encrypted object:

    header  = MAGIC(8) | salt(16) | nonce_prefix(7) | key_id(8) | chunk_size(4, big-endian)
    chunks  = AES-GCM(plaintext chunk) ..., each `chunk_size` bytes of plaintext + a 16-byte tag

Each backup gets its own key, HKDF-SHA256(secret, salt), so nonces never repeat across
backups. A chunk's nonce is `nonce_prefix | counter(4) | final(1)` and the header is the
associated data of every chunk: reordered, dropped, appended or truncated chunks and an
edited header all fail authentication. The last chunk (possibly empty) carries final=1, so a
truncated object is detected too. `key_id` (HKDF of the secret, not of any backup key) lets a
wrong key be reported as such before any decryption is attempted.
"""

from __future__ import annotations

import os
import struct
from typing import Any, BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tasks.backup.model import BackupError

ALGORITHM = "aes-256-gcm-stream"
MAGIC = b"KTLOENC1"
CHUNK = 1 << 20
TAG = 16
_HEADER = struct.Struct(">8s16s7s8sI")
HEADER_SIZE = _HEADER.size


def _hkdf(secret: str, salt: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(
        secret.encode()
    )


def key_id(secret: str) -> str:
    """A public fingerprint of the key material (it reveals nothing usable about the key)."""
    return _hkdf(secret, b"", b"ktlo-backup/1 key-id", 8).hex()


def description(secret_name: str, secret: str) -> dict[str, Any]:
    """What manifests and the catalog record about encryption: never the key itself."""
    return {"algorithm": ALGORITHM, "key_secret": secret_name, "key_id": key_id(secret)}


def _nonce(prefix: bytes, counter: int, final: bool) -> bytes:
    return prefix + struct.pack(">IB", counter, 1 if final else 0)


class Encryptor:
    """Turns a plaintext stream into the encrypted layout; `write` returns ciphertext bytes."""

    def __init__(self, secret: str, chunk_size: int = CHUNK):
        salt, prefix = os.urandom(16), os.urandom(7)
        self.header = _HEADER.pack(MAGIC, salt, prefix, bytes.fromhex(key_id(secret)), chunk_size)
        self._aead = AESGCM(_hkdf(secret, salt, b"ktlo-backup/1 aes-256-gcm", 32))
        self._prefix = prefix
        self._chunk = chunk_size
        self._buffer = bytearray()
        self._counter = 0
        self._started = False

    def _seal(self, data: bytes | memoryview, final: bool) -> bytes:
        sealed = self._aead.encrypt(
            _nonce(self._prefix, self._counter, final), bytes(data), self.header
        )
        self._counter += 1
        return sealed

    def update(self, data: bytes | memoryview) -> bytes:
        out = bytearray()
        if not self._started:
            out += self.header
            self._started = True
        self._buffer += data
        if len(self._buffer) >= self._chunk:
            view = memoryview(self._buffer)
            full = len(self._buffer) - len(self._buffer) % self._chunk
            for start in range(0, full, self._chunk):
                out += self._seal(view[start : start + self._chunk], final=False)
            view.release()
            del self._buffer[:full]
        return bytes(out)

    def finalize(self) -> bytes:
        head = b"" if self._started else self.header
        self._started = True
        tail = self._seal(bytes(self._buffer), final=True)
        self._buffer.clear()
        return head + tail


class DecryptingReader:
    """A file-like reader of the plaintext of an encrypted object (for zstd's stream readers)."""

    def __init__(self, raw: BinaryIO, secret: str, *, backup_id: str, secret_name: str):
        self._raw = raw
        self._backup_id = backup_id
        header = _read_exactly(raw, HEADER_SIZE)
        if len(header) < HEADER_SIZE or header[:8] != MAGIC:
            raise BackupError(f"backup {backup_id}: not a ktlo encrypted object (bad header)")
        _, salt, prefix, kid, chunk_size = _HEADER.unpack(header)
        if kid.hex() != key_id(secret):
            raise BackupError(
                f"backup {backup_id}: wrong encryption key: secret '{secret_name}' has key id "
                f"{key_id(secret)}, the backup was encrypted with key id {kid.hex()}"
            )
        self._header = header
        self._aead = AESGCM(_hkdf(secret, salt, b"ktlo-backup/1 aes-256-gcm", 32))
        self._prefix = prefix
        self._sealed = chunk_size + TAG
        self._counter = 0
        self._pending = _read_exactly(raw, self._sealed)
        self._plain = b""
        self._offset = 0
        self._done = False

    def _next_chunk(self) -> bytes:
        following = _read_exactly(self._raw, self._sealed)
        final = not following
        try:
            plain = self._aead.decrypt(
                _nonce(self._prefix, self._counter, final), self._pending, self._header
            )
        except InvalidTag:
            raise BackupError(
                f"backup {self._backup_id}: authentication failed at chunk {self._counter} "
                "(the object is corrupt, truncated or was tampered with)"
            ) from None
        self._counter += 1
        self._pending = following
        self._done = final
        return plain

    def read(self, size: int = -1) -> bytes:
        parts: list[bytes] = []
        wanted = size if size >= 0 else 1 << 62
        while wanted > 0:
            if self._offset >= len(self._plain):
                if self._done:
                    break
                self._plain, self._offset = self._next_chunk(), 0
                continue
            piece = self._plain[self._offset : self._offset + wanted]
            self._offset += len(piece)
            wanted -= len(piece)
            parts.append(piece)
        return b"".join(parts)

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        self._raw.close()


def _read_exactly(raw: BinaryIO, n: int) -> bytes:
    parts: list[bytes] = []
    while n > 0:
        chunk = raw.read(n)
        if not chunk:
            break
        parts.append(chunk)
        n -= len(chunk)
    return b"".join(parts)
