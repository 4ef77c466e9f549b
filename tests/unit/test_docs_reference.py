"""The hand-written reference pages agree with the code: docs/reference/metrics.md lists
exactly the metric families sidecar/telemetry/metrics.py exports (name with its type's suffix, labels),
and docs/reference/commands.md has a section for every CLI command holding every option
of the parser, and no command the parser lacks."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from sidecar.telemetry import metrics
from sidecar.cli import build_parser

REFERENCE = Path(__file__).resolve().parents[2] / "docs" / "reference"
METRIC_ROW = re.compile(r"^\| `(backup_sidecar_\w+)` \|([^|]*)\|", re.M)
SUFFIX = {"counter": "_total"}  # what prometheus_client appends to a family's name on /metrics


def documented_metrics() -> dict[str, set[str]]:
    rows = METRIC_ROW.findall((REFERENCE / "metrics.md").read_text())
    names = [name for name, _ in rows]
    assert len(names) == len(set(names)), "a metric documented twice"
    return {name: {label.strip() for label in labels.split(",") if label.strip()} for name, labels in rows}


def exported_metrics() -> dict[str, set[str]]:
    return {family.name + SUFFIX.get(family.type, ""): set(family._labelnames)  # noqa: SLF001 (no public accessor)
            for family in metrics._families()}


def test_metrics_page_lists_every_family_with_its_labels():
    assert documented_metrics() == exported_metrics()


def test_metrics_page_names_the_node_label_every_series_carries():
    text = (REFERENCE / "metrics.md").read_text()
    assert "| every metric above | node |" in text


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
    return dict(action.choices)


def sections() -> dict[str, str]:
    """`## NAME` section of commands.md -> its text."""
    text = (REFERENCE / "commands.md").read_text()
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return {title.strip(): body for title, body in zip(parts[1::2], parts[2::2])}


def test_commands_page_has_a_section_for_every_command_and_no_other():
    documented = {title for title in sections() if title != "Exit codes"}
    assert documented == set(subcommands())


@pytest.mark.parametrize("command", sorted(subcommands()))
def test_commands_page_names_every_option_of_the_command(command):
    body = sections()[command]
    assert f"backup-sidecar {command}" in body
    options = [opt for action in subcommands()[command]._actions for opt in action.option_strings
               if opt.startswith("--") and opt != "--help"]
    missing = [opt for opt in options if f"`{opt}" not in body]
    assert missing == [], f"docs/reference/commands.md, section {command}: add {missing}"


def test_commands_page_table_links_every_section():
    text = (REFERENCE / "commands.md").read_text()
    for command in subcommands():
        assert f"](#{command})" in text
