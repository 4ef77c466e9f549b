"""The CLI's start-up imports only what every command needs (issue 21: a restore's start-up
was 2.4 s, 1.5 s of it importing boto3, apprise and the rest). The heavy optional parts
load through their registries when they are used: a destination kind's module when such a
destination is made (sidecar/destinations), the notifier (and apprise) when NOTIFY_URLS is
set (sidecar/notify). Each check runs in a fresh interpreter: this one has imported
everything already."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.destinations import factory_of, kinds

REPO = Path(__file__).resolve().parents[2]

# Loaded on demand only; none of them is needed to start a command.
ON_DEMAND = ("boto3", "botocore", "s3transfer", "apprise", "sidecar.destinations.s3", "sidecar.destinations.rclone",
             "sidecar.notify.sender")


def loaded_after(code: str, env: dict[str, str] | None = None) -> set[str]:
    """The modules of ON_DEMAND in sys.modules after running `code` in a fresh interpreter."""
    probe = f"{code}\nimport sys, json\nprint(json.dumps([m for m in {list(ON_DEMAND)!r} if m in sys.modules]))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=False,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def test_importing_the_cli_loads_no_optional_part():
    assert loaded_after("import sidecar.cli") == set()


def test_a_command_parsed_and_settings_read_load_no_optional_part():
    code = ("import os, sidecar.cli\n"
            "from sidecar.core.settings import load_settings\n"
            "sidecar.cli.build_parser().parse_args(['restore', 'app', '--volume', 'data', '--force'])\n"
            "load_settings({'BACKUP_DIR': '/tmp', 'BACKUP_FORMAT': 'restic', 'RESTIC_PASSWORD': 'x'})")
    assert loaded_after(code) == set()


def test_a_configured_s3_destination_loads_its_module():
    code = ("from sidecar.core.settings import load_settings\n"
            "from sidecar.destinations import from_settings\n"
            "made = from_settings(load_settings({'BACKUP_DIR': '/tmp', 'S3_BUCKET': 'bucket'}))\n"
            "assert [type(d).__name__ for d in made] == ['S3Destination'], made")
    loaded = loaded_after(code)
    assert {"boto3", "sidecar.destinations.s3"} <= loaded
    assert "sidecar.destinations.rclone" not in loaded and "apprise" not in loaded


def test_notify_urls_load_apprise_and_the_notifier_only_when_set(tmp_path):
    none = ("from pathlib import Path\nfrom sidecar import notify\n"
            f"assert notify.notifier(None, Path({str(tmp_path / 'n.json')!r})) is None")
    assert loaded_after(none) == set()
    some = ("from pathlib import Path\nfrom sidecar import notify\n"
            "from sidecar.core.settings import load_settings\n"
            "settings = load_settings({'BACKUP_DIR': '/tmp', 'NOTIFY_URLS': 'json://localhost:1/hook'})\n"
            f"sent = notify.notifier(settings.notify, Path({str(tmp_path / 'n.json')!r}))\n"
            "assert type(sent).__name__ == 'Notifier'\nsent.close()")
    assert {"apprise", "sidecar.notify.sender"} <= loaded_after(some)


@pytest.mark.parametrize("kind", ["s3", "rclone", "local"])
def test_every_registered_kind_resolves_to_its_factory(kind):
    assert kind in kinds()
    assert callable(factory_of(kind))
