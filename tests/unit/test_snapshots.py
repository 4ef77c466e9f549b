"""restic snapshots in the seed's vocabulary: tags, names, keep -> forget, restic's JSON."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from sidecar.core.errors import ArchiveError, UnsafeName
from sidecar.core.retention import Keep
from sidecar.core.schedule import Frequency
from sidecar.core.snapshots import (
    Snapshot,
    choose_snapshot,
    forget_args,
    parse_backup_line,
    parse_snapshots,
    parse_time,
    restore_include,
    selector,
    snapshot_names,
    summary_of,
    tags,
)

UTC = timezone.utc

# As restic 0.14 prints them (`restic snapshots --json`, `restic backup --json`).
SNAPSHOTS_JSON = json.dumps([
    {"time": "2026-12-07T17:49:25.563042706Z", "tree": "6ac3", "paths": ["/volume"], "hostname": "node1",
     "username": "root", "tags": ["backup-sidecar", "target=app", "item=data", "frequency=daily"],
     "id": "9c06f831dd12460efe2e84a16d9c41372190330bb1f6451fef1a3adec34e114d", "short_id": "9c06f831"},
    {"time": "2026-12-06T03:00:01.5+01:00", "tree": "aa", "paths": ["/volume"], "hostname": "node1",
     "tags": ["backup-sidecar", "target=app", "item=data", "frequency=daily"], "id": "11112222" * 8,
     "short_id": "11112222"},
    {"time": "2026-12-07T01:00:00Z", "tree": "bb", "paths": ["/home"], "hostname": "laptop", "id": "33334444" * 8,
     "short_id": "33334444"},
])
SUMMARY = ('{"message_type":"summary","files_new":1,"files_changed":2,"files_unmodified":30,"dirs_new":1,'
           '"data_blobs":1,"tree_blobs":2,"data_added":706,"total_files_processed":33,"total_bytes_processed":3000,'
           '"total_duration":0.285088326,"snapshot_id":"9c06f831"}')


def snap(when: datetime, item: str = "data", target: str = "app", freq: str = "daily", sid: str = "") -> Snapshot:
    sid = sid or f"{int(when.timestamp()):x}".ljust(64, "0")
    return Snapshot(sid, sid[:8], when, "node1", ("/volume",),
                    ("backup-sidecar", f"target={target}", f"item={item}", f"frequency={freq}"))


def test_tags_and_selector_name_target_item_and_frequency():
    assert tags("app", "data", Frequency.HOURLY) == ("backup-sidecar", "target=app", "item=data", "frequency=hourly")
    assert selector("app", "postgres+dump") == "backup-sidecar,target=app,item=postgres+dump"
    assert selector("app") == "backup-sidecar,target=app"


@pytest.mark.parametrize("name", ["", "..", "a/b"])
def test_tags_refuse_names_no_file_could_carry(name):
    with pytest.raises(UnsafeName):
        tags(name, "data", Frequency.DAILY)


def test_parse_snapshots_reads_restic_json_oldest_first_with_nanoseconds_and_offsets():
    found = parse_snapshots(SNAPSHOTS_JSON)
    assert [s.short_id for s in found] == ["11112222", "33334444", "9c06f831"]
    assert found[0].time == datetime(2026, 12, 6, 2, 0, 1, 500000, tzinfo=UTC)
    assert found[2].time == datetime(2026, 12, 7, 17, 49, 25, 563042, tzinfo=UTC)
    assert (found[2].backup_name, found[2].item, found[2].frequency, found[2].ours) == ("app", "data",
                                                                                      Frequency.DAILY, True)
    assert not found[1].ours  # someone else's snapshot in the same repository: never ours to name or forget


@pytest.mark.parametrize("text", ["not json", '{"a": 1}', '[{"no": "id"}]'])
def test_parse_snapshots_refuses_anything_else(text):
    with pytest.raises(ArchiveError):
        parse_snapshots(text)


def test_parse_time_pads_short_fractions():
    assert parse_time("2026-01-02T03:04:05.1Z").microsecond == 100000
    assert parse_time("2026-01-02T03:04:05Z").tzinfo is not None


def test_summary_of_reads_the_last_line_of_restic_backup_json():
    summary = summary_of(parse_backup_line(SUMMARY))
    assert (summary.snapshot_id, summary.data_added, summary.total_bytes_processed) == ("9c06f831", 706, 3000)
    assert (summary.files_new, summary.files_changed, summary.files_unmodified) == (1, 2, 30)
    assert summary_of(parse_backup_line('{"message_type":"status","percent_done":0.5}')) is None
    assert parse_backup_line("restic: some text") is None


def test_names_follow_the_archive_vocabulary_second_of_a_day_gets_the_time_then_a_number():
    tz = ZoneInfo("Europe/Berlin")
    first = snap(datetime(2026, 12, 7, 1, 0, 0, tzinfo=UTC))
    second = snap(datetime(2026, 12, 7, 12, 30, 0, tzinfo=UTC))
    third = snap(datetime(2026, 12, 7, 12, 30, 0, 400000, tzinfo=UTC), sid="f" * 64)
    other = snap(datetime(2026, 12, 7, 1, 0, 0, tzinfo=UTC), item="postgres+dump", sid="e" * 64)
    names = snapshot_names([third, other, second, first], tz)
    assert names[first.id] == "app_data_2026-12-07_daily"
    assert names[second.id] == "app_data_2026-12-07T133000_daily"  # the sidecar's time zone
    assert names[third.id] == "app_data_2026-12-07T133000-2_daily"
    assert names[other.id] == "app_postgres+dump_2026-12-07_daily"


def test_choose_snapshot_by_latest_id_short_id_or_name():
    a, b = snap(datetime(2026, 12, 6, tzinfo=UTC)), snap(datetime(2026, 12, 7, tzinfo=UTC))
    names = snapshot_names([a, b], UTC)
    assert choose_snapshot([a, b], "latest", names) == b
    assert choose_snapshot([a, b], a.short_id, names) == a
    assert choose_snapshot([a, b], a.id, names) == a
    assert choose_snapshot([a, b], "app_data_2026-12-06_daily", names) == a
    with pytest.raises(ArchiveError, match="no snapshot 'nope'"):
        choose_snapshot([a, b], "nope", names)


@pytest.mark.parametrize("keep, expected", [
    (Keep(24, 7, 4, 3), ("--keep-hourly", "24", "--keep-daily", "7", "--keep-weekly", "4", "--keep-monthly", "3",
                         "--keep-last", "1")),
    (Keep(0, 14, 0, 12), ("--keep-daily", "14", "--keep-monthly", "12", "--keep-last", "1")),
    (Keep(0, 0, 0, 1), ("--keep-monthly", "1", "--keep-last", "1")),
])
def test_forget_args_keep_what_backup_keep_keeps_and_never_the_newest(keep, expected):
    assert forget_args(keep) == expected


@pytest.mark.parametrize("path, include", [
    ("config/app.ini", "/volume/config/app.ini"), ("./a//b/", "/volume/a/b"), ("top", "/volume/top"),
    (None, None),
])
def test_restore_include_stays_inside_the_volume(path, include):
    assert restore_include(path) == include


@pytest.mark.parametrize("path", ["../etc/passwd", "a/../../b", "", ".", "/"])
def test_restore_include_refuses_what_leaves_the_volume(path):
    with pytest.raises(ArchiveError, match="inside the volume"):
        restore_include(path)
