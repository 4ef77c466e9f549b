"""Encryption of archives with age (age-encryption.org/v1), streaming both ways.

Owns `encrypting` (a writable file whose bytes come out age-encrypted into another
file as they are written) and `decrypting` (a readable file of the plaintext of an age
stream); keys, recipients and identity files are parsed in `keys`. Memory stays bounded (a few 64 KiB
chunks) whatever the archive's size, and plaintext is never written anywhere but to
the caller: no temporary files.

Two engines, one format:

- Public keys (X25519 `age1...`, `ssh-ed25519`, `ssh-rsa`) go through rage, via the
  pyrage bindings. pyrage streams only from a readable file to a writable one
  (`encrypt_io`/`decrypt_io`), so it runs in a worker thread fed through an
  `os.pipe()`: kernel memory, never the disk.
- Passphrases (the scrypt recipient): pyrage has only whole-buffer calls for them, which
  would hold a whole archive in memory, so the scrypt header and the payload's STREAM
  chunks are built here from the spec with the `cryptography` primitives
  (ChaCha20-Poly1305, HKDF-SHA-256, scrypt). Tests check the output against rage and
  the age CLI, in both directions.

Errors (wrong key or passphrase, damaged, truncated or tampered data) raise
EncryptionError; no message ever holds a passphrase or secret key material.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import logging
import os
import re
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import BinaryIO, Iterator

import pyrage
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from sidecar.core.errors import EncryptionError
from sidecar.core.keys import DEFAULT_WORK_FACTOR, MAX_WORK_FACTOR, EncryptionConfig, Identity, Recipient, to_recipient
from .streams import ChunkedReader

logger = logging.getLogger(__name__)

_VERSION_LINE = b"age-encryption.org/v1"
_SCRYPT_LABEL = b"age-encryption.org/v1/scrypt"
_CHUNK = 64 * 1024  # plaintext bytes per STREAM chunk
_TAG = 16  # Poly1305 tag
_MAX_HEADER = 1 << 20
_READ = 1 << 16


# --- encrypting -----------------------------------------------------------------------

@contextmanager
def encrypting(out: BinaryIO, config: EncryptionConfig) -> Iterator[BinaryIO]:
    """A writable file: what is written to it comes out age-encrypted into `out` (only
    `write`, plus `flush` if it has one, is used) as it arrives. Leaving the block
    normally finishes the age stream; leaving it with an exception writes nothing more
    to `out`, leaves the stream unfinished (unreadable) and lets the exception through.
    `out` must not be written to by anyone else inside the block."""
    if config.passphrase is not None:
        writer: _PassphraseWriter | _PipeWriter = _PassphraseWriter(out, config.passphrase, config.work_factor)
    else:
        writer = _PipeWriter(out, [to_recipient(r) for r in config.recipients])
    try:
        yield writer  # type: ignore[misc]
    except BaseException:
        writer.abort()
        raise
    writer.close()


class _PassphraseWriter:
    """age with one scrypt stanza, written here chunk by chunk (see the module doc)."""

    def __init__(self, out: BinaryIO, passphrase: str, work_factor: int):
        self._out = out
        file_key = os.urandom(16)
        salt = os.urandom(16)
        body = ChaCha20Poly1305(_scrypt(passphrase, salt, work_factor)).encrypt(bytes(12), file_key, None)
        header = _VERSION_LINE + b"\n" + _stanza([b"scrypt", _b64(salt), str(work_factor).encode()], body) + b"---"
        mac = hmac.new(_hkdf(file_key, b"", b"header"), header, hashlib.sha256).digest()
        nonce = os.urandom(16)
        self._seal = _Stream(_hkdf(file_key, nonce, b"payload"))
        self._pending = bytearray()
        self.closed = False
        out.write(header + b" " + _b64(mac) + b"\n" + nonce)

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if self.closed:
            raise ValueError("write to a finished age stream")
        view = memoryview(data).cast("B")
        pos = 0
        while pos < len(view):
            if len(self._pending) == _CHUNK:
                # More data follows, so the buffered chunk is not the final one.
                self._out.write(self._seal.encrypt(self._pending, final=False))
                self._pending = bytearray()
            take = min(_CHUNK - len(self._pending), len(view) - pos)
            self._pending += view[pos:pos + take]
            pos += take
        return len(view)

    def flush(self) -> None:
        pass  # a chunk can only be sealed once it is known whether it is the last

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._out.write(self._seal.encrypt(self._pending, final=True))
        self._pending = bytearray()
        _flush(self._out)

    def abort(self) -> None:
        self.closed = True
        self._pending = bytearray()


class _PipeWriter:
    """pyrage's encrypt_io in a worker thread, reading what `write` puts into a pipe."""

    def __init__(self, out: BinaryIO, recipients: list[Recipient]):
        self._sink = _GuardedSink(out)
        self._aborted = threading.Event()
        self._error: BaseException | None = None
        read_fd, self._write_fd = os.pipe()
        _widen_pipe(self._write_fd)
        self._source = _AbortableReader(read_fd, self._aborted)
        self._thread = threading.Thread(target=self._run, args=(recipients,), name="age-encrypt", daemon=True)
        self._thread.start()
        self.closed = False

    def _run(self, recipients: list[Recipient]) -> None:
        try:
            pyrage.encrypt_io(self._source, self._sink, recipients)
        except BaseException as exc:  # reported by the writing thread
            self._error = exc
        finally:
            self._sink.blocked = True
            # Closing our end makes a writer blocked on a full pipe fail at once.
            os.close(self._source.fd)

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if self.closed:
            raise ValueError("write to a finished age stream")
        view = memoryview(data).cast("B")
        try:
            _write_all(self._write_fd, view)
        except BrokenPipeError:
            self._thread.join()
            self._raise_failure()
            raise
        return len(view)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        """End of the plaintext: the worker seals the final chunk; raise what failed."""
        if self.closed:
            return
        self.closed = True
        os.close(self._write_fd)
        self._thread.join()
        self._raise_failure()
        _flush(self._sink.out)

    def abort(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._aborted.set()
        self._sink.blocked = True  # before the worker can see EOF: it must not finish the stream
        os.close(self._write_fd)
        self._thread.join()

    def _raise_failure(self) -> None:
        if self._sink.error is not None:
            raise self._sink.error  # the destination failed (disk full...): say so as it is
        if self._error is not None:
            raise EncryptionError(f"age encryption failed: {_reason(self._error)}") from None


class _AbortableReader:
    """The worker's source: the pipe, but a deliberate abort is an error, not an EOF
    (an EOF would make rage finish a stream that must stay unfinished)."""

    def __init__(self, fd: int, aborted: threading.Event):
        self.fd = fd
        self._aborted = aborted

    def read(self, size: int = -1) -> bytes:
        data = os.read(self.fd, size if size > 0 else _READ)
        if not data and self._aborted.is_set():
            raise _Aborted("the archive was abandoned")
        return data


class _GuardedSink:
    """The worker's destination: `out`, shut once the stream is finished or abandoned, and
    remembering a write error (rage drops the error of its last buffered write)."""

    def __init__(self, out: BinaryIO):
        self.out = out
        self.blocked = False
        self.error: BaseException | None = None

    def write(self, data) -> int:
        if self.blocked:
            raise _Aborted("the archive was abandoned")
        try:
            written = self.out.write(data)
        except BaseException as exc:
            if self.error is None:
                self.error = exc
            raise
        return len(data) if written is None else written

    def flush(self) -> None:
        if not self.blocked:
            _flush(self.out)


class _Aborted(Exception):
    pass


# --- decrypting -----------------------------------------------------------------------

@contextmanager
def decrypting(inp: BinaryIO, identities: list[Identity] | None = None,
               passphrase: str | None = None) -> Iterator[BinaryIO]:
    """A readable file of the plaintext of the age stream in `inp` (only `read` is used).
    The header is checked on entry: a wrong key or passphrase raises EncryptionError at
    once. Damage, tampering or truncation raise EncryptionError from `read`, at the
    latest when the end is reached, so read to the end to have it all authenticated."""
    header, rest = _read_header(inp)
    source = _Prefixed(rest, inp)
    if header.is_scrypt:
        if passphrase is None:
            raise EncryptionError("the archive is encrypted with a passphrase, and none is configured "
                                  "(BACKUP_AGE_PASSPHRASE or BACKUP_AGE_PASSPHRASE_FILE)")
        yield _PassphraseReader(source, header, passphrase)  # type: ignore[misc]
        return
    if not identities:
        raise EncryptionError("the archive is encrypted to age public keys, and no identity is configured "
                              "(BACKUP_AGE_IDENTITY_FILE)")
    reader = _PipeReader(_Prefixed(header.raw + rest, inp), identities)
    try:
        reader.start()
        yield reader  # type: ignore[misc]
    finally:
        reader.stop()


@dataclass(frozen=True)
class _Header:
    raw: bytes  # every byte of the header, through the MAC line's newline
    stanzas: tuple[tuple[tuple[bytes, ...], bytes], ...]  # (arguments, body)
    mac_input: bytes
    mac: bytes

    @property
    def is_scrypt(self) -> bool:
        return any(args and args[0] == b"scrypt" for args, _ in self.stanzas)


def _read_header(inp: BinaryIO) -> tuple[_Header, bytes]:
    """Parse an age v1 header; returns it and the bytes read past it."""
    buf = bytearray()
    start = 0
    lines: list[bytes] = []
    while True:
        if len(buf) >= len(_VERSION_LINE) + 1 and not buf.startswith(_VERSION_LINE + b"\n"):
            raise EncryptionError(_not_age(buf))
        nl = buf.find(b"\n", start)
        if nl < 0:
            if len(buf) > _MAX_HEADER:
                raise EncryptionError("damaged age header (longer than 1 MiB)")
            more = inp.read(_READ)
            if not more:
                if not buf:
                    raise EncryptionError("the file is empty, not an age-encrypted archive")
                if not buf.startswith(_VERSION_LINE[:len(buf)]):
                    raise EncryptionError(_not_age(buf))
                raise EncryptionError("truncated age header")
            buf += more
            continue
        line = bytes(buf[start:nl])
        if len(lines) > 0 and line.startswith(b"---"):
            mac_start = start
            start = nl + 1
            break
        lines.append(line)
        start = nl + 1
    stanzas = []
    i = 1
    while i < len(lines):
        if not lines[i].startswith(b"-> "):
            raise EncryptionError("damaged age header (a line is not a recipient stanza)")
        args = tuple(lines[i][3:].split(b" "))
        i += 1
        body_lines = []
        while True:
            if i >= len(lines):
                raise EncryptionError("damaged age header (unfinished recipient stanza)")
            body_lines.append(lines[i])
            i += 1
            if len(body_lines[-1]) < 64:
                break
        try:
            body = _unb64(b"".join(body_lines))
        except ValueError:
            raise EncryptionError("damaged age header (a stanza body is not base64)") from None
        stanzas.append((args, body))
    if not stanzas:
        raise EncryptionError("damaged age header (no recipient stanza)")
    mac_line = bytes(buf[mac_start:start - 1])
    try:
        if not mac_line.startswith(b"--- "):
            raise ValueError
        mac = _unb64(mac_line[4:])
    except ValueError:
        raise EncryptionError("damaged age header (bad MAC line)") from None
    header = _Header(bytes(buf[:start]), tuple(stanzas), bytes(buf[:mac_start + 3]), mac)
    return header, bytes(buf[start:])


def _not_age(start: bytes | bytearray) -> str:
    if bytes(start).startswith(b"-----BEGIN AGE ENCRYPTED FILE-----"):
        return "ASCII-armored age files are not supported (archives are written in binary)"
    return "not an age-encrypted file (it does not start with the age v1 header)"


class _PassphraseReader(ChunkedReader):
    def __init__(self, source: "_Prefixed", header: _Header, passphrase: str):
        super().__init__()
        file_key = _unwrap_scrypt(header, passphrase)
        expected = hmac.new(_hkdf(file_key, b"", b"header"), header.mac_input, hashlib.sha256).digest()
        if not hmac.compare_digest(expected, header.mac):
            raise EncryptionError("the age header was changed after it was written (MAC mismatch)")
        nonce = source.read_exact(16)
        if len(nonce) < 16:
            raise EncryptionError("truncated age file (no payload)")
        self._stream = _Stream(_hkdf(file_key, nonce, b"payload"))
        self._source = source
        self._ahead = source.read_exact(_CHUNK + _TAG)
        self._failure: str | None = None

    def _next_chunk(self, wanted: int) -> bytes:
        # A failure stays: reading on must not look like a clean end.
        if self._failure is not None:
            raise EncryptionError(self._failure)
        try:
            return self._open_chunk()
        except EncryptionError as exc:
            self._failure = str(exc)
            raise

    def _open_chunk(self) -> bytes:
        sealed, self._ahead = self._ahead, self._source.read_exact(_CHUNK + _TAG)
        final = not self._ahead
        if len(sealed) < _TAG:
            raise EncryptionError(f"truncated age file (the stream ends without its final chunk, "
                                  f"after chunk {self._stream.counter})")
        plain = self._stream.decrypt(sealed, final)
        if final:
            self._at_end = True
            if not plain and self._stream.counter > 1:
                raise EncryptionError("damaged age file (an empty final chunk after data)")
        return plain

    def close(self) -> None:
        self._at_end = True


class _PipeReader(ChunkedReader):
    """pyrage's decrypt_io in a worker thread, writing the plaintext into a pipe."""

    def __init__(self, source: "_Prefixed", identities: list[Identity]):
        super().__init__()
        self._source = source
        self._identities = list(identities)
        self._read_fd, self._write_fd = os.pipe()
        _widen_pipe(self._write_fd)
        self._thread = threading.Thread(target=self._run, name="age-decrypt", daemon=True)
        self._error: BaseException | None = None
        self._stopped = False

    def _run(self) -> None:
        try:
            pyrage.decrypt_io(self._source, _FdWriter(self._write_fd), self._identities)
        except BaseException as exc:  # reported by the reading thread
            self._error = exc
        finally:
            os.close(self._write_fd)

    def start(self) -> None:
        self._thread.start()
        # Wait for the header to be processed (or refused): a wrong key fails here.
        self._chunk = self._fill(_READ)

    def _next_chunk(self, wanted: int) -> bytes:
        return self._fill(_READ if wanted < 0 else max(wanted, _READ))

    def _fill(self, size: int) -> bytes:
        data = os.read(self._read_fd, min(size, 1 << 20))
        if not data:
            self._thread.join()
            if self._error is not None:
                # Not marked as the end: every further read fails the same way.
                raise EncryptionError(_decrypt_reason(self._error)) from None
            self._at_end = True
        return data

    def close(self) -> None:
        pass  # the context manager stops the worker

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        # A worker still writing gets EPIPE and ends.
        os.close(self._read_fd)
        if self._thread.ident is not None:
            self._thread.join()
        else:
            os.close(self._write_fd)


class _FdWriter:
    def __init__(self, fd: int):
        self._fd = fd

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        _write_all(self._fd, view)
        return len(view)

    def flush(self) -> None:
        pass


class _Prefixed:
    """`inp` with bytes already read from it put back in front."""

    def __init__(self, prefix: bytes, inp: BinaryIO):
        self._prefix = prefix
        self._inp = inp

    def read(self, size: int = -1) -> bytes:
        if self._prefix:
            if size < 0 or size >= len(self._prefix):
                data, self._prefix = self._prefix, b""
            else:
                data, self._prefix = self._prefix[:size], self._prefix[size:]
            return data
        return self._inp.read(size)

    def read_exact(self, size: int) -> bytes:
        """`size` bytes, fewer only at the end of the file."""
        parts = []
        while size > 0:
            data = self.read(size)
            if not data:
                break
            parts.append(data)
            size -= len(data)
        return b"".join(parts)


# --- the age format's pieces ------------------------------------------------------------

class _Stream:
    """age's payload STREAM: 64 KiB chunks, ChaCha20-Poly1305 with a nonce of an 11-byte
    big-endian counter and a last-chunk flag."""

    def __init__(self, key: bytes):
        self._aead = ChaCha20Poly1305(key)
        self.counter = 0

    def _nonce(self, final: bool) -> bytes:
        return self.counter.to_bytes(11, "big") + (b"\x01" if final else b"\x00")

    def encrypt(self, plain, final: bool) -> bytes:
        sealed = self._aead.encrypt(self._nonce(final), bytes(plain), None)
        self.counter += 1
        return sealed

    def decrypt(self, sealed: bytes, final: bool) -> bytes:
        try:
            plain = self._aead.decrypt(self._nonce(final), sealed, None)
        except InvalidTag:
            at = f"chunk {self.counter} (from plaintext byte {self.counter * _CHUNK})"
            if final:
                raise EncryptionError(f"truncated or damaged age file: {at} should be the last one "
                                      f"and does not authenticate") from None
            raise EncryptionError(f"damaged or tampered age file: {at} does not authenticate") from None
        self.counter += 1
        return plain


def _unwrap_scrypt(header: _Header, passphrase: str) -> bytes:
    if len(header.stanzas) != 1:
        raise EncryptionError("damaged age header (a passphrase stanza must be the only one)")
    args, body = header.stanzas[0]
    if len(args) != 3 or not re.fullmatch(rb"[1-9][0-9]*", args[2]):
        raise EncryptionError("damaged age header (bad passphrase stanza)")
    try:
        salt = _unb64(args[1])
    except ValueError:
        salt = b""
    if len(salt) != 16 or len(body) != 32:
        raise EncryptionError("damaged age header (bad passphrase stanza)")
    work_factor = int(args[2])
    if work_factor > MAX_WORK_FACTOR:
        raise EncryptionError(f"the archive's scrypt work factor {work_factor} is above the limit "
                              f"{MAX_WORK_FACTOR} (the sidecar writes {DEFAULT_WORK_FACTOR}); refusing to spend "
                              f"{_scrypt_mib(work_factor)} MiB on it: decrypt it with the age CLI if you trust it")
    return _file_key(passphrase, salt, work_factor, body)


@functools.lru_cache(maxsize=8)
def _file_key(passphrase: str, salt: bytes, work_factor: int, body: bytes) -> bytes:
    """The file key a passphrase stanza wraps. Cached (for this process, a few entries):
    a restore reads an archive twice, checking then unpacking, and scrypt is the costly
    part (256 MiB, half a second); failures are not cached."""
    try:
        return ChaCha20Poly1305(_scrypt(passphrase, salt, work_factor)).decrypt(bytes(12), body, None)
    except InvalidTag:
        raise EncryptionError("wrong passphrase (or a damaged archive header)") from None


def _scrypt_mib(work_factor: int) -> int:
    """The memory scrypt needs at this work factor (128 * r * N bytes, r = 8), in MiB."""
    return (128 * 8 << work_factor) >> 20


def _scrypt(passphrase: str, salt: bytes, work_factor: int) -> bytes:
    kdf = Scrypt(salt=_SCRYPT_LABEL + salt, length=32, n=1 << work_factor, r=8, p=1)
    return kdf.derive(passphrase.encode("utf-8"))


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    """HKDF-SHA-256 with 32 bytes of output (RFC 5869: a single expand block)."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def _stanza(args: list[bytes], body: bytes) -> bytes:
    encoded = _b64(body)
    lines = [encoded[i:i + 64] for i in range(0, len(encoded), 64)]
    if not lines or len(lines[-1]) == 64:
        lines.append(b"")  # the body ends with a line shorter than 64 columns
    return b"-> " + b" ".join(args) + b"\n" + b"".join(line + b"\n" for line in lines)


def _b64(data: bytes) -> bytes:
    return base64.b64encode(data).rstrip(b"=")


def _unb64(text: bytes) -> bytes:
    """Canonical unpadded base64, as the spec requires; ValueError otherwise."""
    if b"=" in text or not re.fullmatch(rb"[A-Za-z0-9+/]*", text):
        raise ValueError("not unpadded base64")
    try:
        data = base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
    except binascii.Error:
        raise ValueError("not base64") from None
    if _b64(data) != text:
        raise ValueError("not canonical base64")
    return data


# --- small helpers ----------------------------------------------------------------------

def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view):]


def _widen_pipe(fd: int) -> None:
    """Fewer thread switches with a 1 MiB pipe; the default 64 KiB works too."""
    try:
        import fcntl
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 1 << 20)
    except (ImportError, AttributeError, OSError):
        pass


def _flush(out) -> None:
    flush = getattr(out, "flush", None)
    if flush is not None:
        flush()


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def _decrypt_reason(exc: BaseException) -> str:
    text = _reason(exc)
    if "No matching keys" in text:
        return "none of the configured identities can decrypt this archive (wrong key)"
    if "Header MAC" in text:
        return "the age header was changed after it was written (MAC mismatch)"
    if "Header is invalid" in text:
        return "damaged age header"
    if isinstance(exc, OSError) or "decryption error" in text:
        return "damaged, tampered or truncated age file (a payload chunk does not authenticate)"
    return f"age decryption failed: {text}"
