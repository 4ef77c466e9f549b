"""Settings of the off-site copy, rotation and encryption (issue #3)."""

from __future__ import annotations

import pyrage
import pytest

from sidecar.core.errors import SettingsError
from sidecar.core.retention import DEFAULT_KEEP, Keep
from sidecar.core.settings import load_settings


def test_no_bucket_no_store():
    settings = load_settings({})
    assert settings.s3 is None and settings.encryption is None and settings.keep == DEFAULT_KEEP
    assert settings.encrypt_local is True and settings.images_keep == 3


def test_s3_settings_and_secrets_from_files(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("s3cr3t-value\n")
    settings = load_settings({
        "S3_BUCKET": "my-backups", "S3_PREFIX": "/host1/", "S3_ENDPOINT_URL": "http://127.0.0.1:9000",
        "S3_REGION": "eu-west-1", "S3_STORAGE_CLASS": "STANDARD_IA", "S3_PATH_STYLE": "yes",
        "S3_PART_SIZE_MB": "16", "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE", "AWS_SECRET_ACCESS_KEY_FILE": str(secret),
    })
    s3 = settings.s3
    assert (s3.bucket, s3.prefix, s3.region, s3.storage_class, s3.path_style) == \
        ("my-backups", "host1", "eu-west-1", "STANDARD_IA", True)
    assert s3.part_size == 16 * 1024 * 1024 and s3.secret_access_key == "s3cr3t-value"
    assert "s3cr3t" not in repr(settings)


@pytest.mark.parametrize("env, fragment", [
    ({"S3_BUCKET": "Bad_Bucket"}, "S3_BUCKET='Bad_Bucket' is invalid"),
    ({"S3_BUCKET": "ok-bucket", "S3_ENDPOINT_URL": "minio:9000"}, "S3_ENDPOINT_URL='minio:9000' is invalid"),
    ({"S3_BUCKET": "ok-bucket", "S3_PART_SIZE_MB": "1"}, "S3_PART_SIZE_MB='1' is invalid: expected a whole number from 5"),
    ({"S3_BUCKET": "ok-bucket", "AWS_ACCESS_KEY_ID": "AKIA"}, "set both"),
    ({"S3_PREFIX": "x"}, "S3_PREFIX is set but S3_BUCKET is not"),
    ({"S3_BUCKET": "ok-bucket", "S3_CHECKSUM": "md5"}, "accepted: SHA256, none"),
    ({"BACKUP_KEEP": "daily=x"}, "BACKUP_KEEP='daily=x' is invalid"),
    ({"BACKUP_PRUNE_DRY_RUN": "maybe"}, "accepted: true/1/yes or false/0/no"),
    ({"BACKUP_ENCRYPT_LOCAL": "sometimes"}, "BACKUP_ENCRYPT_LOCAL='sometimes' is invalid"),
    ({"BACKUP_KEEP_IMAGES": "0"}, "BACKUP_KEEP_IMAGES='0' is invalid"),
    ({"BACKUP_AGE_RECIPIENTS": "not-a-key"}, "BACKUP_AGE_RECIPIENTS is invalid"),
])
def test_invalid_offsite_settings_are_named(env, fragment):
    with pytest.raises(SettingsError) as err:
        load_settings(env)
    assert fragment in str(err.value)


def test_keep_setting():
    assert load_settings({"BACKUP_KEEP": "daily=3"}).keep == Keep(DEFAULT_KEEP.hourly, 3, DEFAULT_KEEP.weekly,
                                                                   DEFAULT_KEEP.monthly)


def test_encryption_settings(tmp_path):
    identity = pyrage.x25519.Identity.generate()
    key = tmp_path / "key.txt"
    key.write_text(f"{identity}\n")
    settings = load_settings({"BACKUP_AGE_RECIPIENTS": str(identity.to_public()),
                              "BACKUP_AGE_IDENTITY_FILE": str(key), "BACKUP_ENCRYPT_LOCAL": "false"})
    assert settings.encryption.recipients == (str(identity.to_public()),)
    assert settings.encrypt_local is False and len(settings.decryption.identities) == 1


def test_passphrase_is_never_quoted(tmp_path):
    with pytest.raises(SettingsError) as err:
        load_settings({"BACKUP_AGE_PASSPHRASE": "hunter2-secret", "BACKUP_AGE_RECIPIENTS": "age1bad"})
    assert "hunter2" not in str(err.value)
    settings = load_settings({"BACKUP_AGE_PASSPHRASE": "hunter2-secret"})
    assert "hunter2" not in repr(settings)
    assert settings.decryption.passphrase == "hunter2-secret"


def test_an_endpoint_password_is_never_echoed():
    with pytest.raises(SettingsError) as caught:
        load_settings({"S3_BUCKET": "bucket", "S3_ENDPOINT_URL": "ftp://user:secretpw@host:9000"})
    assert "S3_ENDPOINT_URL='ftp://****@host:9000' is invalid" in str(caught.value)
    assert "secretpw" not in str(caught.value)
    settings = load_settings({"S3_BUCKET": "bucket", "S3_ENDPOINT_URL": "http://user:secretpw@host:9000"})
    assert settings.s3.endpoint_url == "http://user:secretpw@host:9000"  # botocore gets it as written
    assert "secretpw" not in repr(settings)
