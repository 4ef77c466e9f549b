"""Hostile input, property-based (hypothesis): every parser of text that reaches the sidecar
from outside (labels, settings, schedules, keep specifications, names that become paths)
either accepts it or raises our error type with a message that names the label or setting
and the value; nothing else escapes. A name that is accepted maps to a path inside the
backup folder.

Strategies mix valid-looking values with hostile ones (`../`, `/`, NUL, newlines, control
and non-ASCII characters, huge numbers, very long values)."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import PurePosixPath
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from sidecar.core.discovery import discover
from sidecar.core.errors import LabelError, SettingsError, UnsafeName
from sidecar.core.labels import (
    KNOWN_LABELS,
    LABELS,
    SECRET_LABELS,
    is_candidate,
    label_backup_name,
    parse_target,
    short_volume_name,
)
from sidecar.core.model import ContainerInfo, ContainerState, Mount
from sidecar.core.naming import choose_image_name, choose_name, safe_component, safe_relpath
from sidecar.core.retention import DEFAULT_KEEP, parse_keep
from sidecar.core.schedule import Frequency, parse_schedule
from sidecar.core.settings import SETTINGS, load_settings

BACKUP_DIR = PurePosixPath("/backups")
HOSTILE_PIECES = ["..", "../", "/", "\0", "\n", "\r", " ", "*", "%2e%2e", "~", "$(id)", "`id`", "\\", "_", ".",
                  "-", ":", "@", "=", ",", "\u202e", "é", "\udcff", "9" * 30, "-1", "0x10", "1e999", "nan"]
# Text as labels and settings arrive (Docker labels and environment values are strings;
# environment values cannot hold NUL, labels can).
hostile_text = st.one_of(
    st.text(max_size=40),
    st.lists(st.sampled_from(HOSTILE_PIECES) | st.text(max_size=6), max_size=8).map("".join),
    st.text(alphabet="abc019._-/ ", max_size=300),
)
env_text = hostile_text.map(lambda s: s.replace("\0", ""))

PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def inside(relpath: str, folder: PurePosixPath = BACKUP_DIR) -> bool:
    """Whether folder/relpath, normalised as the kernel would read it, stays under folder."""
    if "\0" in relpath or relpath.startswith("/"):
        return False
    joined = PurePosixPath(os.path.normpath(str(folder / relpath)))
    return joined != folder and folder in joined.parents


def make_container(labels: dict[str, str], name: str = "proj-app-1", mounts: tuple[Mount, ...] | None = None
                   ) -> ContainerInfo:
    return ContainerInfo(id="c" * 64, name=name, image="busybox", image_id="sha256:" + "b" * 64,
                         state=ContainerState.RUNNING, labels=labels,
                         mounts=mounts if mounts is not None else (Mount("volume", "proj_data", "/data"),))


SCHEDULE = parse_schedule("@daily")
SCHEDULE_TZ = ZoneInfo("UTC")
label_names = st.sampled_from(KNOWN_LABELS + ("backup.unknown", "backup.", "backup.enable "))


def check_archive_names(target) -> None:
    """Every archive the target could write lands inside BACKUP_DIR/<frequency>/."""
    when = datetime(2026, 1, 2, 3, 4, 5)
    for spec in target.volumes:
        name = choose_name(target.backup_name, spec.volume_name, when, Frequency.DAILY, False, ".tar.zst",
                           lambda _rel: False)
        assert inside(name.relpath), name.relpath
        assert PurePosixPath(name.relpath).parent == PurePosixPath("daily")


# --- labels -----------------------------------------------------------------------------

@PROPS
@given(st.dictionaries(label_names, hostile_text, max_size=6))
@example({"backup.enable": "true", "backup.name": "../../../../x"})
@example({"backup.enable": "true", "backup.name": "a\0b"})
@example({"backup.enable": "true", "backup.schedule": "0 0 30 2 *"})
@example({"backup.enable": "true", "backup.stop-timeout": "9" * 400})
@example({"backup.enable": "true", "backup.keep": "daily=" + "9" * 5000})
@example({"backup.enable": "true", "backup.volumes": "/"})
def test_labels_parse_or_name_the_label_and_value(labels):
    labels = {"backup.enable": "true", **labels}
    container = make_container(labels)
    try:
        target = parse_target(container, SCHEDULE, DEFAULT_KEEP)
    except LabelError as exc:
        text = str(exc)
        assert exc.problems and container.name in text
        for problem in exc.problems:
            # Each problem names its label and the value as written, or says nothing is selected.
            assert problem.startswith("label backup.") or problem.startswith("nothing to back up"), problem
            name = problem[len("label "):].split(" ", 1)[0]
            if problem.startswith("label ") and name in SECRET_LABELS:  # a token: named, never quoted
                assert problem.startswith(f"label {name} is invalid: accepted"), problem
            elif problem.startswith(f"label {name} is missing: required with "):  # another label asks for it
                assert name not in labels and "accepted: " in problem, problem
            elif problem.startswith("label "):
                label, _, rest = problem[len("label "):].partition("=")
                assert label in labels and rest.startswith(repr(labels[label])), problem
        return
    safe_component(target.backup_name, "backup name")
    check_archive_names(target)


@PROPS
@given(label=st.sampled_from([label for label in LABELS if label.parse is not None]), value=hostile_text)
def test_each_label_parser_raises_only_value_error(label, value):
    """The table's parsers: a value, or ValueError (parse_target turns it into LabelError)."""
    try:
        label.parse(value)
    except ValueError as exc:
        assert str(exc)


@PROPS
@given(hostile_text)
@example("../../../../x")
@example("..")
@example("a/b")
def test_label_backup_name_is_a_safe_component_or_label_error(name):
    container = make_container({"backup.enable": "true", "backup.name": name})
    try:
        backup_name = label_backup_name(container)
    except LabelError as exc:
        assert "backup.name" in str(exc) and repr(name) in str(exc)
        return
    safe_component(backup_name, "backup name")
    assert inside(f"{backup_name}.lock")


@PROPS
@given(service=hostile_text, container_name=hostile_text, volume=hostile_text, destination=hostile_text)
@example(service="..", container_name="/..", volume="proj_..", destination="/..")
@example(service="../../etc", container_name="/x", volume="proj_../../x", destination="/a/../..")
@example(service="", container_name="/", volume="", destination="")
def test_names_from_the_engine_map_inside_the_backup_folder(service, container_name, volume, destination):
    """Compose service, container, volume names and mount destinations become archive names."""
    labels = {"backup.enable": "true", "com.docker.compose.project": "proj"}
    if service:
        labels["com.docker.compose.service"] = service
    mounts = (Mount("volume", volume, destination or "/data"), Mount("bind", "/host", destination + "/b"))
    container = make_container(labels, name=container_name, mounts=mounts)
    try:
        target = parse_target(container, SCHEDULE, DEFAULT_KEEP)
    except LabelError:
        return
    for mount in mounts:
        short = short_volume_name(mount, "proj")
        assert "_" not in short
        safe_component(short, "volume name")
    safe_component(target.backup_name, "backup name")
    check_archive_names(target)


@PROPS
@given(st.lists(st.dictionaries(label_names, hostile_text, max_size=5), min_size=1, max_size=6))
def test_discovery_never_raises_on_hostile_labels(label_sets):
    containers = [make_container({"backup.enable": "true", **labels}, name=f"c{i}") for i, labels in
                  enumerate(label_sets)]
    found = discover(containers, SCHEDULE, None, DEFAULT_KEEP)
    assert len(found.targets) + len(found.skipped) == sum(is_candidate(c.labels) for c in containers)
    for target in found.targets:
        check_archive_names(target)


# --- names that become paths ------------------------------------------------------------

@PROPS
@given(hostile_text)
@example("..")
@example(".")
@example("a\0")
@example("x" * 201)
def test_safe_component_accepts_only_names_inside_the_folder(name):
    try:
        safe_component(name, "name")
    except UnsafeName as exc:
        assert "name" in str(exc)
        return
    assert inside(name) and PurePosixPath(os.path.normpath(str(BACKUP_DIR / name))).parent == BACKUP_DIR


@PROPS
@given(hostile_text)
@example("daily/../../x")
@example("/etc/passwd")
def test_safe_relpath_accepts_only_paths_inside_the_folder(relpath):
    try:
        safe_relpath(relpath)
    except UnsafeName:
        return
    normal = os.path.normpath(str(BACKUP_DIR / relpath))
    assert normal == str(BACKUP_DIR) or PurePosixPath(normal).is_relative_to(BACKUP_DIR)


image_refs = st.one_of(
    hostile_text,
    st.builds(lambda host, name, tag: f"{host}/{name}:{tag}", hostile_text, hostile_text, hostile_text),
    st.just("sha256:" + "a" * 64),
)


@PROPS
@given(image_refs)
@example("../../../etc/passwd:latest")
@example("registry:5000/../../x@sha256:" + "0" * 64)
@example(":")
@example("/")
@example("x" * 5000 + ":" + "y" * 5000)
def test_image_references_map_inside_the_images_folder(reference):
    name = choose_image_name(reference, datetime(2026, 1, 2, 3, 4, 5), ".tar.zst", lambda _rel: False)
    assert inside(name.relpath), name.relpath
    assert PurePosixPath(name.relpath).parent == PurePosixPath("images")
    safe_component(name.filename, "image export")


# --- schedules and keep specifications ----------------------------------------------------

schedules = st.one_of(
    hostile_text,
    st.lists(st.sampled_from(["*", "*/0", "*/1", "0", "59", "60", "99999999999", "-1", "1-0", "L", "W", "#",
                              "?", "JAN", "sun", "31", "30", "2", "29", ",", "1,2", "*/7", "R", "H"]),
             min_size=4, max_size=7).map(" ".join),
)


@PROPS
@given(schedules)
@example("0 0 30 2 *")
@example("0 0 31 4 *")
@example("0 0 29 2 *")
@example("* * * * * * *")
@example("@reboot")
@example("*/0 * * * *")
def test_schedule_parses_or_raises_value_error(expression):
    try:
        schedule = parse_schedule(expression)
    except ValueError as exc:
        assert "accepted" in str(exc)
        return
    assert schedule.min_interval.total_seconds() > 0
    assert schedule.next_after(datetime(2026, 1, 1).astimezone(), SCHEDULE_TZ) > datetime(2026, 1, 1).astimezone()


keeps = st.one_of(
    hostile_text,
    st.lists(st.builds(lambda k, v: f"{k}={v}", st.sampled_from(["daily", "weekly", "monthly", "hourly", "DAILY",
                                                                 "yearly", "", "daily "]),
                       st.sampled_from(["0", "1", "7", "-1", "1.5", "", "9" * 30, "٣", "１"])),
             min_size=1, max_size=5).map(",".join),
)


@PROPS
@given(keeps)
@example("daily=٣")
@example("daily=" + "9" * 5000)
def test_keep_parses_or_raises_value_error(text):
    try:
        keep = parse_keep(text, DEFAULT_KEEP)
    except ValueError as exc:
        assert "accepted" in str(exc)
        return
    assert any(keep.of(f) for f in Frequency)
    assert all(0 <= keep.of(f) for f in Frequency)


# --- settings -----------------------------------------------------------------------------

SETTING_NAMES = tuple(s.name for s in SETTINGS if s.name not in ("BACKUP_AGE_IDENTITY_FILE",))
SECRETS = {s.name for s in SETTINGS if s.secret}
SHOWN = {s.name for s in SETTINGS if not s.secret}


@PROPS
@given(st.dictionaries(st.sampled_from(SETTING_NAMES), env_text, min_size=1, max_size=6), st.booleans())
@example({"S3_ENDPOINT_URL": "ht tp://user:pass@x"}, True)
@example({"TZ": "../../../../etc/passwd"}, False)
@example({"TZ": "x" * 5000}, False)
@example({"BACKUP_FILE_MODE": "0o777"}, False)
@example({"BACKUP_SHUTDOWN_GRACE": "1e999"}, False)
@example({"BACKUP_DIR": "relative"}, False)
@example({"NOTIFY_URLS": "json://user:pass@"}, False)
@example({"BACKUP_AGE_RECIPIENTS": "AGE-SECRET-KEY-1XYZ"}, False)
def test_settings_load_or_name_each_bad_setting(env, with_bucket):
    if with_bucket:
        env = {"S3_BUCKET": "bucket", **env}
    try:
        load_settings(env)
    except SettingsError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert any(name in problem for name in env), problem
            # Recipients are public keys, shown unless they look like a secret key (keys._shown).
            shown = SHOWN | {"BACKUP_AGE_RECIPIENTS"}
            for name in SECRETS & set(env) - {"BACKUP_AGE_RECIPIENTS"}:
                shown_elsewhere = any(env[name] in v for n, v in env.items() if n in shown)
                assert len(env[name]) < 4 or shown_elsewhere or repr(env[name]) not in problem, f"{name}'s value in {problem!r}"
            assert "AGE-SECRET-KEY-1XYZ" not in problem


def test_s3_timeout_reaches_the_store_config():
    assert load_settings({"S3_BUCKET": "bucket", "S3_TIMEOUT": "2.5"}).s3.read_timeout == 2.5
    assert load_settings({"S3_BUCKET": "bucket"}).s3.read_timeout == 60
