"""Age keys and encryption settings: what `settings` parses and `crypto` uses. Pure: no
archive I/O, no streams.

Owns EncryptionConfig (recipients or a passphrase), DecryptionKeys (identities or the
passphrase), parsing recipients and loading identity files, and the texts saying what is
accepted. No message ever holds a passphrase or secret key material.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias

import pyrage

Identity: TypeAlias = pyrage.x25519.Identity | pyrage.ssh.Identity
Recipient: TypeAlias = pyrage.x25519.Recipient | pyrage.ssh.Recipient

DEFAULT_WORK_FACTOR = 18  # log2 of scrypt's N, as the age CLI uses: ~0.5 s and 256 MiB once per archive
MIN_WORK_FACTOR = 10
# The most accepted, writing or decrypting: what the sidecar writes plus one step for age
# tools that calibrate theirs (512 MiB of scrypt memory, about 1 s). A forged header must
# not make a restore spend 4 GiB and half a minute (the age CLI's own limit is 22).
MAX_WORK_FACTOR = DEFAULT_WORK_FACTOR + 1

ACCEPTED_RECIPIENTS = (
    "age X25519 public keys (age1...) or SSH public keys (ssh-ed25519 AAAA..., ssh-rsa AAAA...), "
    "separated by commas, spaces or new lines, one SSH key per line or comma-separated entry; "
    "'#' starts a comment"
)
ACCEPTED_IDENTITIES = (
    "an age identity file (AGE-SECRET-KEY-1... lines as age-keygen writes them, '#' comments) "
    "or an unencrypted OpenSSH private key"
)


@dataclass(frozen=True)
class EncryptionConfig:
    """How archives are encrypted: to public keys, or with a passphrase (exactly one)."""

    recipients: tuple[str, ...] = ()
    passphrase: str | None = field(default=None, repr=False)
    work_factor: int = DEFAULT_WORK_FACTOR  # scrypt cost in passphrase mode (log2 N)

    def __post_init__(self) -> None:
        if bool(self.recipients) == (self.passphrase is not None):
            raise ValueError("encryption needs exactly one of: recipients (age public keys) or a passphrase")
        if self.passphrase is not None and not self.passphrase:
            raise ValueError("the passphrase is empty")
        for entry in self.recipients:
            to_recipient(entry)
        if not MIN_WORK_FACTOR <= self.work_factor <= MAX_WORK_FACTOR:
            raise ValueError(f"scrypt work factor {self.work_factor} is outside "
                             f"{MIN_WORK_FACTOR}..{MAX_WORK_FACTOR}")


@dataclass(frozen=True)
class DecryptionKeys:
    """What opens encrypted archives: age identities, or the passphrase."""

    identities: tuple = ()
    passphrase: str | None = field(default=None, repr=False)


# --- recipients and identities ------------------------------------------------------

def parse_recipients(text: str) -> tuple[str, ...]:
    """Recipients from a setting's value or a recipients file: entries separated by
    commas, whitespace or new lines, '#' to the end of a line is a comment. An SSH key
    ("ssh-ed25519 AAAA... comment") is one whole line or comma-separated entry; its
    comment is dropped. Raises ValueError naming the bad entry (a pasted secret key is
    never echoed) and what is accepted, or when there is no recipient at all."""
    found: list[str] = []
    for line in text.splitlines():
        for entry in line.split("#", 1)[0].split(","):
            words = entry.split()
            if not words:
                continue
            if words[0].startswith("ssh-"):
                candidates = [" ".join(words[:2])]
            else:
                candidates = words
            for candidate in candidates:
                to_recipient(candidate)
                if candidate not in found:
                    found.append(candidate)
    if not found:
        raise ValueError(f"no recipient given (expected {ACCEPTED_RECIPIENTS})")
    return tuple(found)


def to_recipient(entry: str) -> Recipient:
    """The pyrage recipient for one entry, or ValueError with a message safe to log."""
    if _looks_secret(entry):
        raise ValueError("a secret key was given as a recipient: give the public key (age1..., "
                         "from `age-keygen -y`) here; the secret key belongs only in the identity "
                         "file of the host that restores")
    try:
        if entry.startswith("ssh-"):
            return pyrage.ssh.Recipient.from_str(entry)
        if entry[:4].lower() == "age1":
            return pyrage.x25519.Recipient.from_str(entry)
    except (pyrage.RecipientError, ValueError, TypeError):
        raise ValueError(f"{_shown(entry)} is not a valid age recipient (expected {ACCEPTED_RECIPIENTS})") from None
    raise ValueError(f"{_shown(entry)} is not an age recipient (expected {ACCEPTED_RECIPIENTS})")


def load_identities(path: Path) -> list[Identity]:
    """The identities in an age identity file or an OpenSSH private key file. Raises
    ValueError naming the file and line, never the key material."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the identity file ({exc.strerror or exc})") from None
    if b"-----BEGIN" in data:
        return [_ssh_identity(path, data)]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a text file (expected {ACCEPTED_IDENTITIES})") from None
    identities: list[Identity] = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        upper = line.upper()
        if upper.startswith("AGE-SECRET-KEY-1"):
            try:
                identities.append(pyrage.x25519.Identity.from_str(line))
            except (pyrage.IdentityError, ValueError, TypeError):
                raise ValueError(f"{path}: line {lineno} is a damaged age secret key "
                                 f"(expected {ACCEPTED_IDENTITIES})") from None
        elif upper.startswith("AGE-SECRET-KEY-") or upper.startswith("AGE-PLUGIN-"):
            raise ValueError(f"{path}: line {lineno} is a kind of age identity that is not supported "
                             f"(post-quantum or plugin); expected {ACCEPTED_IDENTITIES}")
        elif line[:4].lower() == "age1" or line.startswith("ssh-"):
            raise ValueError(f"{path}: line {lineno} is a public key (a recipient), not an identity: "
                             f"the identity file holds the secret key (expected {ACCEPTED_IDENTITIES})")
        else:
            raise ValueError(f"{path}: line {lineno} is not an age identity (expected {ACCEPTED_IDENTITIES})")
    if not identities:
        raise ValueError(f"{path}: holds no identity (expected {ACCEPTED_IDENTITIES})")
    return identities


def _ssh_identity(path: Path, data: bytes) -> Identity:
    try:
        return pyrage.ssh.Identity.from_buffer(data)
    except (pyrage.IdentityError, ValueError, TypeError) as exc:
        if "ncrypted" in str(exc) or b"ENCRYPTED" in data or b"bcrypt" in data:
            reason = f"passphrase-protected SSH keys are not supported (expected {ACCEPTED_IDENTITIES})"
        else:
            reason = f"not a usable SSH private key (expected {ACCEPTED_IDENTITIES})"
        raise ValueError(f"{path}: {reason}") from None


def _looks_secret(entry: str) -> bool:
    upper = entry.upper()
    return upper.startswith("AGE-SECRET-KEY-") or upper.startswith("AGE-PLUGIN-") or "PRIVATE KEY" in upper


def _shown(entry: str) -> str:
    return repr(entry if len(entry) <= 80 else entry[:77] + "...")
