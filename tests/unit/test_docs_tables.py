"""The README's settings and labels tables are what the code's tables generate, and the
tables themselves are complete (every Settings / TargetConfig field is filled)."""

from __future__ import annotations

import dataclasses

import pytest

from sidecar import doctables
from sidecar.labels import KNOWN_LABELS, LABELS
from sidecar.model import TargetConfig
from sidecar.settings import SETTINGS, Settings

RULE_FIELDS = {"s3", "destinations", "encryption", "decryption", "notify"}  # put together by the rules after the table


def test_readme_tables_are_generated_from_the_code():
    readme = doctables.README.read_text()
    assert doctables.render(readme) == readme, "run: python -m sidecar.doctables"


@pytest.mark.parametrize("name, make", doctables.TABLES.items())
def test_each_table_sits_between_its_markers(name, make):
    readme = doctables.README.read_text()
    assert f"<!-- {name}:start -->\n{make()}\n<!-- {name}:end -->" in readme


def test_check_mode_fails_on_a_stale_readme(tmp_path):
    stale = tmp_path / "README.md"
    stale.write_text(doctables.README.read_text().replace("| `TZ` |", "| `TZ ` |"))
    assert doctables.main(["--check", str(stale)]) == 1
    assert doctables.main([str(stale)]) == 0
    assert doctables.main(["--check", str(stale)]) == 0
    assert stale.read_text() == doctables.README.read_text()


def test_render_refuses_a_readme_without_markers():
    with pytest.raises(ValueError, match="settings-table"):
        doctables.render("# no tables here\n")


def test_every_setting_is_documented_once():
    names = [s.name for s in SETTINGS]
    assert len(names) == len(set(names))
    table = doctables.settings_table()
    for name in names:
        assert f"| `{name}` |" in table


def test_settings_fields_come_from_the_table_or_a_rule():
    from_table = [s.field for s in SETTINGS if s.field is not None]
    assert len(from_table) == len(set(from_table))
    assert set(from_table) | RULE_FIELDS == {f.name for f in dataclasses.fields(Settings)}
    assert not set(from_table) & RULE_FIELDS


def test_label_rows_fill_every_target_config_field():
    fields = [label.field for label in LABELS if label.field is not None]
    assert len(fields) == len(set(fields))
    assert set(fields) == {f.name for f in dataclasses.fields(TargetConfig)}
    assert KNOWN_LABELS == tuple(label.name for label in LABELS)


def test_every_row_says_what_it_accepts():
    assert all(s.parse.accepted and s.help for s in SETTINGS)
    assert all(label.help and (label.parse is not None or label.accepted) for label in LABELS)
