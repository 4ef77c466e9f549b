"""The rclone destination's secrets (issue 12): which values are masked (secret-named
options of every remote, in variables and rclone.conf, as written, revealed and as URL
user info), rclone's obscuring undone, and error messages built from rclone's output
never carrying them; unreachable told apart from refused."""

from __future__ import annotations

import base64
import json
import os

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from sidecar.core.config import RcloneConfig
from sidecar.destinations.rclone import _OBSCURE_KEY, RcloneDestination, reveal, secret_values
from sidecar.core.errors import DestinationError, DestinationUnreachable

PASSWORD = "S3cretPw!"
# `rclone obscure 'S3cretPw!'` (rclone 1.60): checked against the real binary.
OBSCURED = "rgjPjSOCGfPT84IbjY-C8f6-P-3YDdPj8g"


def obscure(plain: str) -> str:
    iv = os.urandom(16)
    encryptor = Cipher(algorithms.AES(_OBSCURE_KEY), modes.CTR(iv)).encryptor()
    return base64.urlsafe_b64encode(iv + encryptor.update(plain.encode()) + encryptor.finalize()).decode().rstrip("=")


def test_reveal_undoes_rclones_obscure():
    assert reveal(OBSCURED) == PASSWORD
    assert reveal(obscure("another one")) == "another one"
    assert reveal("plain-password!") is None and reveal("short") is None


def test_secret_values_from_variables_and_rclone_conf():
    token = json.dumps({"access_token": "ya29.ACCESS-TOKEN", "refresh_token": "1//REFRESH-TOKEN", "expiry": "x"})
    env = {"RCLONE_CONFIG_NAS_TYPE": "sftp", "RCLONE_CONFIG_NAS_HOST": "nas.example", "RCLONE_CONFIG_NAS_USER": "backup",
           "RCLONE_CONFIG_NAS_PASS": OBSCURED, "RCLONE_CONFIG_NAS_KEY_USE_AGENT": "false",
           "RCLONE_CONFIG_DAV_URL": "https://bob:dav-secret@dav.example/remote.php",
           "RCLONE_CONFIG_PASS": "config-file-password", "RCLONE_RETRIES": "3"}
    conf = f"[gd]\ntype = drive\ntoken = {token}\nclient_secret = gd-client-secret\n\n[b2]\ntype = b2\naccount = 0012\nkey = K001b2applicationkey\n"
    found = secret_values(env, conf)
    for secret in (OBSCURED, PASSWORD, "dav-secret", "bob:dav-secret", "config-file-password", token,
                   "ya29.ACCESS-TOKEN", "1//REFRESH-TOKEN", "gd-client-secret", "K001b2applicationkey"):
        assert secret in found
    for shown in ("sftp", "nas.example", "backup", "false", "drive", "3"):
        assert shown not in found
    assert list(found) == sorted(found, key=len, reverse=True)


def test_an_unparsable_rclone_conf_still_masks_the_variables():
    assert OBSCURED in secret_values({"RCLONE_CONFIG_NAS_PASS": OBSCURED}, "# Encrypted rclone configuration File\n\nRCLONE_ENCRYPT_V0:\nxyz")


def destination(**env: str) -> RcloneDestination:
    env.setdefault("RCLONE_CONFIG", "/nonexistent/rclone.conf")
    return RcloneDestination(RcloneConfig("nas", "backups/host1", tuple(env.items())))


def test_error_messages_are_scrubbed_and_classified():
    nas = destination(RCLONE_CONFIG_NAS_PASS=OBSCURED)
    error = nas._error("list", "nas:backups/host1/", 1, [
        f"2026/12/02 02:34:33 Failed to create file system for \"nas:b\": couldn't connect SSH: dial tcp "
        f"127.0.0.1:22023: connect: connection refused (pass {PASSWORD}, obscured {OBSCURED})"])
    assert isinstance(error, DestinationUnreachable)
    assert PASSWORD not in str(error) and OBSCURED not in str(error) and "***" in str(error)
    assert str(error).startswith("nas: list of nas:backups/host1/ failed (rclone exit 1): Failed to create file")

    refused = nas._error("list", "nas:backups/host1/", 1, ["ssh: handshake failed: ssh: unable to authenticate"])
    assert type(refused) is DestinationError
    assert isinstance(nas._error("upload", "k", 5, ["Post: 500 Internal Server Error"]), DestinationUnreachable)


@pytest.mark.parametrize("line, hint", [
    ("Failed to create file system for \"nas:b\": didn't find section in config file",
     "define the remote 'nas' in the rclone.conf RCLONE_CONFIG names, or with RCLONE_CONFIG_NAS_TYPE"),
    ("Failed to create file system: input too short when revealing password - is it obscured?",
     "rclone expects passwords obscured"),
])
def test_configuration_mistakes_get_a_hint(line, hint):
    assert hint in str(destination()._error("check", "nas:", 1, [line]))


def test_keys_and_names():
    nas = destination()
    assert nas.name == "nas"
    assert nas.key("daily/x.tar.zst") == "nas:backups/host1/daily/x.tar.zst"
    assert nas.describe() == "nas:backups/host1/"
    with pytest.raises(DestinationError, match="not a valid archive path"):
        nas.key("../x")


def test_secrets_reach_rclone_through_its_environment_never_its_command_line():
    nas = destination(RCLONE_CONFIG_NAS_PASS=OBSCURED, RCLONE_RETRIES="9")
    command, env = nas._command(["lsjson", nas.describe()])
    assert env["RCLONE_CONFIG_NAS_PASS"] == OBSCURED
    assert not any(OBSCURED in part or PASSWORD in part for part in command)
    assert "--retries" not in command and "--contimeout" in command  # the user's RCLONE_RETRIES wins
    assert command[-3:] == ["--use-json-log", "--log-level", "NOTICE"]
