"""BACKUP_DESTINATIONS (issue 12): the S3 store, rclone remotes and a mounted folder, their
names, the RCLONE_* variables handed to rclone (with _FILE forms), and every mistake
reported naming the setting, the value and what is accepted."""

from __future__ import annotations

import pytest

from sidecar.core.config import LocalConfig, RcloneConfig, S3Config
from sidecar.core.errors import SettingsError
from sidecar.core.settings import destination_name, load_settings

S3 = {"S3_BUCKET": "my-backups"}


def names(settings) -> list[str]:
    return [destination_name(d) for d in settings.destinations]


def test_default_is_s3_when_a_bucket_is_set_else_none():
    assert load_settings({}).destinations == ()
    settings = load_settings(S3)
    assert settings.destinations == (settings.s3,) and isinstance(settings.s3, S3Config)


def test_a_comma_list_keeps_its_order_and_names_each_kind():
    settings = load_settings({**S3, "BACKUP_DESTINATIONS": " nas:backups/host1/ , s3,/mnt/copy/ ,dav:"})
    assert names(settings) == ["nas", "s3", "local", "dav"]
    nas, s3, local, dav = settings.destinations
    assert (nas.remote, nas.path, nas.spec) == ("nas", "backups/host1", "nas:backups/host1")
    assert s3 is settings.s3
    assert local == LocalConfig("/mnt/copy", file_mode=0o600)
    assert (dav.remote, dav.path) == ("dav", "")


def test_the_local_copy_is_never_world_readable():
    settings = load_settings({"BACKUP_DESTINATIONS": "/mnt/copy", "BACKUP_FILE_MODE": "0644"})
    assert settings.destinations[0].file_mode == 0o640


def test_rclone_variables_reach_the_remote_with_file_forms_read(tmp_path):
    secret = tmp_path / "pass"
    secret.write_text("obscured-pass-value\n")
    key = tmp_path / "id_ed25519"
    env = {"BACKUP_DESTINATIONS": "nas:b", "RCLONE_CONFIG": "/config/rclone.conf",
           "RCLONE_CONFIG_NAS_TYPE": "sftp", "RCLONE_CONFIG_NAS_PASS_FILE": str(secret),
           "RCLONE_CONFIG_NAS_KEY_FILE": str(key),  # sftp's key_file option: a path, passed as is
           "RCLONE_RETRIES": "7", "BACKUP_PROGRESS_INTERVAL": "2", "OTHER": "not passed"}
    config = load_settings(env).destinations[0]
    assert isinstance(config, RcloneConfig)
    assert dict(config.env) == {"RCLONE_CONFIG": "/config/rclone.conf", "RCLONE_CONFIG_NAS_TYPE": "sftp",
                                "RCLONE_CONFIG_NAS_PASS": "obscured-pass-value",
                                "RCLONE_CONFIG_NAS_KEY_FILE": str(key), "RCLONE_RETRIES": "7"}
    assert config.progress_interval == 2
    assert "obscured-pass-value" not in repr(config)


@pytest.mark.parametrize("env, fragments", [
    ({"BACKUP_DESTINATIONS": "nas:a,nas:b"}, ["BACKUP_DESTINATIONS='nas:a,nas:b' is invalid",
                                             "two destinations would be named 'nas' (nas:a, nas:b)"]),
    ({"BACKUP_DESTINATIONS": "/mnt/a,/mnt/b"}, ["would be named 'local' (/mnt/a, /mnt/b)"]),
    ({**S3, "BACKUP_DESTINATIONS": "s3,s3"}, ["would be named 's3'"]),
    ({"BACKUP_DESTINATIONS": "backups/host1"}, ["'backups/host1' is not a destination; accepted: s3 (the S3 store", "REMOTE:path (an rclone remote"]),
    ({"BACKUP_DESTINATIONS": "nas,pass=x:b"}, ["'nas' is not a destination"]),
    ({"BACKUP_DESTINATIONS": ":sftp:b"}, ["':sftp:b' is not a destination"]),
    ({"BACKUP_DESTINATIONS": "s3"}, ["BACKUP_DESTINATIONS names s3 but S3_BUCKET is not set"]),
    ({**S3, "BACKUP_DESTINATIONS": "nas:b"}, ["S3_BUCKET is set but BACKUP_DESTINATIONS='nas:b' does not name s3"]),
    ({"BACKUP_DESTINATIONS": "/backups/copy"}, ["overlaps BACKUP_DIR='/backups'"]),
    ({"BACKUP_DESTINATIONS": "/"}, ["overlaps BACKUP_DIR"]),
    ({"BACKUP_DESTINATIONS": "nas:b", "RCLONE_CONFIG_NAS_PASS": "x", "RCLONE_CONFIG_NAS_PASS_FILE": "/f"},
     ["RCLONE_CONFIG_NAS_PASS and RCLONE_CONFIG_NAS_PASS_FILE are both set"]),
    ({"BACKUP_DESTINATIONS": "nas:b", "RCLONE_CONFIG_NAS_PASS_FILE": "/nonexistent/pass"},
     ["RCLONE_CONFIG_NAS_PASS_FILE='/nonexistent/pass' cannot be read"]),
])
def test_mistakes_name_the_setting_the_value_and_what_is_accepted(env, fragments):
    with pytest.raises(SettingsError) as caught:
        load_settings(env)
    for fragment in fragments:
        assert fragment in str(caught.value)


def test_rclone_file_forms_are_read_only_when_an_rclone_remote_is_used():
    assert load_settings({"RCLONE_CONFIG_NAS_PASS_FILE": "/nonexistent/pass"}).destinations == ()
