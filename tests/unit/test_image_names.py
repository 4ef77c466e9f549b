"""Image export names and their rotation (pure)."""

from __future__ import annotations

import re
from datetime import datetime

import pytest

from sidecar.core.retention import select_image_prune
from sidecar.core.naming import (
    ImageArchiveName,
    choose_image_name,
    image_reference_key,
    parse_image_name,
    split_image_reference,
)


@pytest.mark.parametrize("reference, expected", [
    ("app", ("app", "latest")),
    ("app:1.2", ("app", "1.2")),
    ("registry:5000/team/my_app:v1", ("registry-5000-team-my-app", "v1")),
    ("localhost:5000/app", ("localhost-5000-app", "latest")),
    ("sha256:0123456789abcdef0123456789", ("image", "0123456789ab")),
    ("busybox@sha256:abcdef", ("busybox", "latest")),
])
def test_split_image_reference(reference, expected):
    image, tag = split_image_reference(reference)
    assert (image, tag) == expected
    assert "_" not in image + tag


def test_names_round_trip_and_never_collide():
    taken: set[str] = set()
    names = []
    for _ in range(3):
        name = choose_image_name("my_app:v1", datetime(2026, 1, 2, 3, 4, 5), ".tar.zst", taken.__contains__)
        taken.add(name.relpath)
        names.append(name.relpath)
        assert parse_image_name(name.filename).filename == name.filename
    ref = image_reference_key("my_app:v1")  # names carry it since issue 11 (defect 2)
    assert names == [f"images/my-app_v1_{ref}_2026-01-02.tar.zst", f"images/my-app_v1_{ref}_2026-01-02T030405.tar.zst",
                     f"images/my-app_v1_{ref}_2026-01-02T030405-2.tar.zst"]
    assert parse_image_name("my-app_v1_2026-01-02.tar.zst.age").extension == ".tar.zst.age"
    assert parse_image_name("app_data_2026-01-02_daily.tar.zst") is None


def test_select_image_prune_keeps_the_newest_per_image():
    def n(image, day):
        return ImageArchiveName(datetime(2026, 1, day), image, "latest", ".tar.zst")

    items = [(f"{img}-{d}", n(img, d)) for img in ("a", "b") for d in (1, 2, 3, 4)] + [("c-1", n("c", 1))]
    assert sorted(select_image_prune(items, 2)) == ["a-1", "a-2", "b-1", "b-2"]
    assert sorted(select_image_prune(items, 0)) == ["a-1", "a-2", "a-3", "b-1", "b-2", "b-3"]  # one always kept


LOOKALIKES = [
    ("team/app:1.0", "team-app:1.0"),
    ("registry:5000/app", "registry-5000/app"),
    ("app:1_0", "app:1-0"),
    ("r/" + "a" * 90 + ":1", "r/" + "a" * 90 + "b:1"),  # the same once cut to 80 characters
]


@pytest.mark.parametrize("one, other", LOOKALIKES)
def test_lookalike_references_rotate_apart(one, other):
    """References that clean up to the same file name part keep their own exports: with
    keep=1 neither deletes the other's (locally and off-site, both use select_image_prune)."""
    assert split_image_reference(one) == split_image_reference(other)
    names = [choose_image_name(ref, datetime(2026, 1, day), ".tar.zst", lambda _rel: False)
             for day, ref in ((1, one), (2, other))]
    assert names[0].filename != names[1].filename
    assert [parse_image_name(n.filename) for n in names] == names
    assert select_image_prune([(n.relpath, n) for n in names], 1) == []
    later = choose_image_name(one, datetime(2026, 1, 3), ".tar.zst", lambda _rel: False)
    assert select_image_prune([(n.relpath, n) for n in names + [later]], 1) == [names[0].relpath]


def test_one_reference_one_key():
    assert image_reference_key("app") == image_reference_key("app:latest") == image_reference_key("app@sha256:ab")
    assert image_reference_key("app:1") != image_reference_key("app:2")
    assert re.fullmatch(r"[0-9a-f]{8}", image_reference_key("sha256:" + "c" * 64))


def test_names_without_the_key_still_parse_and_rotate_among_themselves():
    old = [parse_image_name(f"my-app_v1_2026-01-0{day}.tar.zst") for day in (1, 2)]
    new = choose_image_name("my-app:v1", datetime(2026, 1, 3), ".tar.zst", lambda _rel: False)
    assert all(n is not None and n.ref == "" for n in old) and old[0].filename == "my-app_v1_2026-01-01.tar.zst"
    doomed = select_image_prune([(n.filename, n) for n in old + [new]], 1)
    assert doomed == [old[0].filename]  # the old pair rotates alone; the new export is kept
    assert parse_image_name("deadbeef_cafebabe_2026-01-01.tar.zst").ref == ""  # a hex tag is no key
