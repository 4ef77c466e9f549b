"""values.py: the parsers shared by the settings and labels tables, and the one true/false reader."""

from __future__ import annotations

import pytest

from sidecar.core.errors import SettingsError
from sidecar.core.labels import enable_value
from sidecar.core.model import Strategy
from sidecar.core.settings import load_settings
from sidecar.core.values import BOOLEAN, member_of, one_of, seconds, truth, userinfo_parts, whole, without_userinfo

SPELLINGS = [("true", True), ("TRUE", True), (" Yes ", True), ("1", True), ("false", False), ("No", False),
             ("0", False), ("maybe", None), ("", None), ("on", None), ("y", None)]


@pytest.mark.parametrize("raw, expected", SPELLINGS)
def test_truth(raw, expected):
    assert truth(raw) is expected


@pytest.mark.parametrize("raw, expected", SPELLINGS)
def test_settings_and_labels_read_true_and_false_alike(raw, expected):
    assert enable_value({"backup.enable": raw}) is expected
    if expected is None:
        if raw.strip():  # a blank setting means its default
            with pytest.raises(SettingsError, match="accepted: true/1/yes or false/0/no"):
                load_settings({"BACKUP_PRUNE_DRY_RUN": raw})
    else:
        assert load_settings({"BACKUP_PRUNE_DRY_RUN": raw}).prune_dry_run is expected


def test_boolean_parser_says_what_it_accepts():
    with pytest.raises(ValueError, match="^accepted: true/1/yes or false/0/no$"):
        BOOLEAN("perhaps")


@pytest.mark.parametrize("raw, ok", [("0", False), ("1", True), ("64", True), ("65", False), (" 7 ", True),
                                     ("-1", False), ("1.0", False), ("²", False), ("0000000064", False)])
def test_whole(raw, ok):
    parse = whole(1, 64)
    if ok:
        assert parse(raw) == int(raw)
    else:
        with pytest.raises(ValueError, match="^expected a whole number from 1 to 64$"):
            parse(raw)
    assert parse.accepted == "whole number, 1 to 64"


def test_whole_digit_limit():
    assert whole(0, 3600, digits=5)("00030") == 30
    with pytest.raises(ValueError):
        whole(0, 3600, digits=5)("000030")


@pytest.mark.parametrize("raw", ["nan", "inf", "-0.5", "soon", "11"])
def test_seconds_out_of_bounds(raw):
    with pytest.raises(ValueError, match="^expected a number of seconds from 0 to 10$"):
        seconds(0, 10)(raw)


def test_one_of_and_member_of_fold_case():
    assert one_of(("DEBUG", "INFO"), fold=str.upper)(" info ") == "INFO"
    assert member_of(Strategy)(" PAUSE ") is Strategy.PAUSE
    with pytest.raises(ValueError, match="^accepted: stop, pause, hot$"):
        member_of(Strategy)("freeze")
    assert member_of(Strategy).accepted == "`stop`, `pause`, `hot`"


def test_s3_settings_are_read_only_with_a_bucket():
    # As before the table: without S3_BUCKET the store's other settings are not checked.
    assert load_settings({"S3_PART_SIZE_MB": "1", "AWS_ACCESS_KEY_ID": "AKIA"}).s3 is None


@pytest.mark.parametrize("url, shown", [
    ("http://user:secretpw@host:9000/x", "http://****@host:9000/x"),
    ("https://a%40b:p%3Aw@host", "https://****@host"),
    ("http://host:9000", "http://host:9000"),
    ("http://host/path@x", "http://host/path@x"),  # an @ in the path is no user info
    ("not a url user:pw@x", "not a url user:pw@x"),
])
def test_without_userinfo(url, shown):
    assert without_userinfo(url) == shown


def test_userinfo_parts_as_written_and_decoded():
    assert userinfo_parts("http://us%40r:p%3Aw@host") == ("us%40r:p%3Aw", "us@r:p:w", "p%3Aw", "p:w")
    assert userinfo_parts("http://host:9000") == ()
