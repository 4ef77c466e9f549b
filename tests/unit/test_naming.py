"""naming.py and labels.short_volume_name: archive names, collisions, parsing back."""

from __future__ import annotations

import itertools
import random
import re
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from sidecar.core.errors import UnsafeName
from sidecar.core.labels import restore_volumes, select_volumes, short_volume_name
from sidecar.core.naming import ArchiveName, choose_name, parse_name
from sidecar.core.schedule import Frequency

from .helpers import bind, container, volume

WHEN = datetime(2026, 3, 29, 14, 5, 9, 123456)


def chooser(taken: set[str], asked: list[str] | None = None):
    def exists(relpath: str) -> bool:
        if asked is not None:
            asked.append(relpath)
        return relpath in taken
    return exists


# --- choose_name ------------------------------------------------------------------

@pytest.mark.parametrize("frequency, with_time, extension, relpath", [
    (Frequency.DAILY, False, ".tar.zst", "daily/app_data_2026-03-29_daily.tar.zst"),
    (Frequency.WEEKLY, False, ".tar.gz", "weekly/app_data_2026-03-29_weekly.tar.gz"),
    (Frequency.MONTHLY, False, ".tar", "monthly/app_data_2026-03-29_monthly.tar"),
    (Frequency.HOURLY, True, ".tar.zst", "hourly/app_data_2026-03-29T140509_hourly.tar.zst"),
    # The folder and the time part are chosen independently.
    (Frequency.DAILY, True, ".tar.zst", "daily/app_data_2026-03-29T140509_daily.tar.zst"),
])
def test_first_name(frequency, with_time, extension, relpath):
    asked: list[str] = []
    name = choose_name("app", "data", WHEN, frequency, with_time, extension, chooser(set(), asked))
    assert name.relpath == relpath
    assert name.filename == relpath.split("/", 1)[1]
    assert asked == [relpath]  # the callback is asked about the relative path, folder included


def test_time_zone_and_microseconds_are_dropped_from_the_name():
    when = datetime(2026, 10, 25, 2, 30, 0, 999999, tzinfo=ZoneInfo("Europe/Berlin"))
    name = choose_name("app", "data", when, Frequency.HOURLY, True, ".tar", chooser(set()))
    assert name.filename == "app_data_2026-10-25T023000_hourly.tar"
    assert name.stamp == datetime(2026, 10, 25, 2, 30)
    assert name.stamp.tzinfo is None


def test_collisions_add_the_time_then_a_sequence_number():
    taken: set[str] = set()
    exists = chooser(taken)
    got = []
    for _ in range(5):
        name = choose_name("app", "data", WHEN, Frequency.DAILY, False, ".tar.zst", exists)
        assert name.relpath not in taken
        taken.add(name.relpath)
        got.append(name.filename)
    assert got == [
        "app_data_2026-03-29_daily.tar.zst",
        "app_data_2026-03-29T140509_daily.tar.zst",
        "app_data_2026-03-29T140509-2_daily.tar.zst",
        "app_data_2026-03-29T140509-3_daily.tar.zst",
        "app_data_2026-03-29T140509-4_daily.tar.zst",
    ]


def test_second_archive_of_the_day_at_another_time_gets_its_time():
    taken = {"daily/app_data_2026-03-29_daily.tar.zst"}
    later = WHEN.replace(hour=20, minute=0, second=0)
    name = choose_name("app", "data", later, Frequency.DAILY, False, ".tar.zst", chooser(taken))
    assert name.filename == "app_data_2026-03-29T200000_daily.tar.zst"


def test_collision_with_time_already_in_the_name_gets_a_sequence_number():
    taken = {"hourly/app_data_2026-03-29T140509_hourly.tar"}
    name = choose_name("app", "data", WHEN, Frequency.HOURLY, True, ".tar", chooser(taken))
    assert name.filename == "app_data_2026-03-29T140509-2_hourly.tar"


@pytest.mark.parametrize("other", [
    "app_data_2026-03-29_daily.tar.gz",  # another compression is another name
    "app_logs_2026-03-29_daily.tar.zst",
    "app2_data_2026-03-29_daily.tar.zst",
])
def test_only_the_same_name_collides(other):
    name = choose_name("app", "data", WHEN, Frequency.DAILY, False, ".tar.zst", chooser({"daily/" + other}))
    assert name.filename == "app_data_2026-03-29_daily.tar.zst"


# --- parse_name -------------------------------------------------------------------

ROUND_TRIP = [
    ArchiveName(datetime(2026, 3, 29), "app", "data", Frequency.DAILY, ".tar.zst"),
    ArchiveName(datetime(2026, 3, 29, 2, 30), "app", "data", Frequency.HOURLY, ".tar.gz", has_time=True),
    ArchiveName(datetime(2026, 3, 29, 23, 59, 59), "app", "data", Frequency.WEEKLY, ".tar", True, seq=2),
    ArchiveName(datetime(2026, 1, 1), "my_app", "pg-data", Frequency.MONTHLY, ".tar.zst"),
    ArchiveName(datetime(2026, 1, 1), "my_app_v2.prod", "data", Frequency.DAILY, ".tar.zst", True, 17),
    ArchiveName(datetime(2026, 1, 1), "web.v1.2", "html.d", Frequency.DAILY, ".tar.gz"),
    ArchiveName(datetime(2026, 1, 1), "a_", "b", Frequency.DAILY, ".tar"),
    ArchiveName(datetime(2026, 1, 1), "x_2026-01-01_daily", "data-2", Frequency.DAILY, ".tar"),
    ArchiveName(datetime(2026, 1, 1), "svc", "2026-01-01", Frequency.HOURLY, ".tar", True, 3),
    ArchiveName(datetime(2026, 1, 1), "Svc", "Data", Frequency.DAILY, ".tar"),
]


@pytest.mark.parametrize("name", ROUND_TRIP, ids=lambda n: n.filename)
def test_parse_name_round_trips(name):
    parsed = parse_name(name.filename)
    assert parsed == name
    assert parsed.relpath == f"{name.frequency.value}/{name.filename}"


def test_chosen_names_parse_back():
    taken: set[str] = set()
    for backup_name in ("app", "my_app", "my_app.v2"):
        for _ in range(3):
            name = choose_name(backup_name, "data", WHEN, Frequency.DAILY, False, ".tar.zst", chooser(taken))
            taken.add(name.relpath)
            parsed = parse_name(name.filename)
            assert (parsed.backup_name, parsed.volume_name, parsed.filename) == (backup_name, "data", name.filename)


@pytest.mark.parametrize("filename", [
    "app_data_2026-03-29_daily.tar.zst.partial",
    "app_data_2026-03-29_daily.tar.zst.sha256",
    "app_data_2026-03-29_daily.zip",
    "app_data_2026-03-29_daily.tar.bz2",
    "app_data_2026-03-29_yearly.tar",
    "app_data_2026-03-29.tar",
    "data_2026-03-29_daily.tar",
    "_data_2026-03-29_daily.tar",
    "app__2026-03-29_daily.tar",
    "app_data_2026-3-29_daily.tar",
    "app_data_2026-02-30_daily.tar",
    "app_data_2026-03-29T1405_daily.tar",
    "app_data_2026-03-29T250000_daily.tar",
    "app_data_2026-03-29T140509-_daily.tar",
    "app_data_2026-03-29_daily.tar ",
    "notes.txt",
    "",
])
def test_parse_name_rejects(filename):
    assert parse_name(filename) is None


def test_parsed_names_sort_by_time():
    names = [
        "app_data_2026-03-29_daily.tar.zst",
        "app_data_2026-03-29T140509_daily.tar.zst",
        "app_data_2026-03-29T140509-2_daily.tar.zst",
        "app_data_2026-03-29T140509-10_daily.tar.zst",
        "app_data_2026-03-29T150000_daily.tar.zst",
        "app_data_2026-03-30_daily.tar.zst",
        "app_data_2026-04-02_daily.tar.zst",
        "app_data_2027-01-01_daily.tar.zst",
    ]
    shuffled = names[:]
    random.Random(4).shuffle(shuffled)
    assert [n.filename for n in sorted(parse_name(f) for f in shuffled)] == names


def test_names_of_different_frequencies_sort():
    daily = parse_name("app_data_2026-03-29_daily.tar.zst")
    hourly = parse_name("app_data_2026-03-29T000000_hourly.tar.zst")
    assert sorted([hourly, daily])[0].stamp == datetime(2026, 3, 29)


# --- type names ---------------------------------------------------------------------

ANON = "3f0e7c1d9b2a4c5e8f6a7b8c9d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f7a8b9c0"


@pytest.mark.parametrize("mount, project, expected", [
    (volume("proj_data", "/data"), "proj", "data"),
    (volume("proj_pg_data", "/var/lib/postgresql/data"), "proj", "pg-data"),
    (volume("proj_data", "/data"), None, "proj-data"),
    (volume("proj_data", "/data"), "other", "proj-data"),
    (volume("project_data", "/data"), "proj", "project-data"),
    (volume("shared", "/shared"), "proj", "shared"),
    (volume("my.vol", "/x"), "proj", "my.vol"),
    (volume("proj_.hidden_", "/x"), "proj", "hidden"),
    (volume("proj_", "/x"), "proj", "root"),
    (volume("Ünïcode", "/x"), None, "n-code"),
    (volume(ANON, "/var/lib/postgresql/data"), "proj", "data"),
    (volume(ANON, "/var/lib/my_db/"), "proj", "my-db"),
    (volume(ANON, "/"), None, "root"),
    (volume("x" * 80, "/x"), None, "x" * 60),
    (bind("/srv/conf", "/etc/app"), "proj", "app"),
    (bind("/srv/conf", "/etc/my_app/"), "proj", "my-app"),
    (bind("/srv/conf", "/"), "proj", "root"),
])
def test_short_volume_name(mount, project, expected):
    name = short_volume_name(mount, project)
    assert name == expected
    assert "_" not in name


def test_type_names_never_contain_underscores_and_parse_back():
    rng = random.Random(7)
    alphabet = "ab_-.Z9/ é"
    for _ in range(300):
        raw = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 20)))
        mount = volume(raw.replace("/", ""), "/" + raw) if rng.random() < 0.5 else bind("/h", "/" + raw)
        name = short_volume_name(mount, "ab")
        assert "_" not in name
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.-]*", name), name
        archive = ArchiveName(datetime(2026, 1, 1), "my_app_x", name, Frequency.DAILY, ".tar")
        assert parse_name(archive.filename) == archive


def test_equal_type_names_in_one_container_are_made_unique():
    mounts = (
        volume("proj_data", "/data"),
        volume("data", "/other"),
        bind("/srv/a", "/a/data"),
        volume("data-2", "/d2"),
        bind("/srv/b", "/b/data"),
    )
    specs = select_volumes(container(mounts=mounts), tuple(m.destination for m in mounts))
    names = [s.volume_name for s in specs]
    # Suffixes go by mount destination (/a/data, /b/data, /d2, /data, /other), not listing order.
    assert names == ["data-3", "data-4", "data", "data-2-2", "data-2"]
    assert [s.mount for s in specs] == list(mounts)


def test_short_names_do_not_depend_on_the_engines_mount_order():
    """The engine builds Mounts from a Go map: every order must give each mount the same name."""
    mounts = (
        volume("proj_data", "/data"),
        volume("data", "/other"),
        bind("/srv/a", "/a/data"),
        volume("data-2", "/d2"),
    )
    expected = {"/a/data": "data", "/d2": "data-2", "/data": "data-3", "/other": "data-4"}
    for order in itertools.permutations(mounts):
        for wanted in (tuple(m.destination for m in order), tuple(m.destination for m in reversed(order))):
            specs = select_volumes(container(mounts=order), wanted)
            assert {s.mount.destination: s.volume_name for s in specs} == expected
        named = select_volumes(container(mounts=order), None)  # every named volume
        assert {s.mount.destination: s.volume_name for s in named} == {"/d2": "data-2", "/data": "data",
                                                                         "/other": "data-3"}


def test_recency_is_the_one_newest_key():
    """A second archive of the day (with a time part) is newer than the first even at the
    same stamp; promoted copies share their moment and the original sorts newest."""
    stamp = datetime(2026, 1, 1)
    first = ArchiveName(stamp, "app", "data", Frequency.DAILY, ".tar.zst")
    second = ArchiveName(stamp, "app", "data", Frequency.DAILY, ".tar.zst", has_time=True)
    weekly = ArchiveName(stamp, "app", "data", Frequency.WEEKLY, ".tar.zst")
    assert second.recency > first.recency
    assert weekly.moment == first.moment and first.recency > weekly.recency
    assert max([weekly, first, second], key=lambda n: n.recency) is second


def test_restore_names_a_mount_as_its_backup_did():
    """A bind mount is not backed up unless listed; it must not take the name the backed-up
    volume has in its archives."""
    mounts = (bind("/srv/a", "/a/data"), volume("proj_data", "/data"))
    specs = restore_volumes(container(mounts=mounts))
    assert [(s.volume_name, s.mount.destination) for s in specs][0] == ("data", "/data")
    listed = restore_volumes(container(labels={"backup.enable": "true", "backup.volumes": "/a/data,/data"},
                                       mounts=mounts))
    assert [(s.volume_name, s.mount.destination) for s in listed] == [("data", "/a/data"), ("data-2", "/data")]


@pytest.mark.parametrize("backup_name, volume_name", [("../x", "data"), ("app", ".."), ("a/b", "data"),
                                                      ("app", "d\0x"), ("", "data"), ("a" * 201, "data")])
def test_choose_name_refuses_names_that_are_no_single_file_name(backup_name, volume_name):
    with pytest.raises(UnsafeName):
        choose_name(backup_name, volume_name, datetime(2026, 1, 1), Frequency.DAILY, False, ".tar.zst",
                    lambda _rel: False)
