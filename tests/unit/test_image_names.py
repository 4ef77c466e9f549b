"""Image export names and their rotation (pure)."""

from __future__ import annotations

from datetime import datetime

import pytest

from sidecar.retention import select_image_prune
from sidecar.naming import ImageArchiveName, choose_image_name, parse_image_name, split_image_reference


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
    assert names == ["images/my-app_v1_2026-01-02.tar.zst", "images/my-app_v1_2026-01-02T030405.tar.zst",
                     "images/my-app_v1_2026-01-02T030405-2.tar.zst"]
    assert parse_image_name("my-app_v1_2026-01-02.tar.zst.age").extension == ".tar.zst.age"
    assert parse_image_name("app_data_2026-01-02_daily.tar.zst") is None


def test_select_image_prune_keeps_the_newest_per_image():
    def n(image, day):
        return ImageArchiveName(datetime(2026, 1, day), image, "latest", ".tar.zst")

    items = [(f"{img}-{d}", n(img, d)) for img in ("a", "b") for d in (1, 2, 3, 4)] + [("c-1", n("c", 1))]
    assert sorted(select_image_prune(items, 2)) == ["a-1", "a-2", "b-1", "b-2"]
    assert sorted(select_image_prune(items, 0)) == ["a-1", "a-2", "a-3", "b-1", "b-2", "b-3"]  # one always kept
