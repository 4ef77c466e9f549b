"""The reference pages' settings and labels tables (docs/reference/) are what the code's tables
generate, and the tables themselves are complete (every Settings / TargetConfig field is filled)."""

from __future__ import annotations

import dataclasses

import pytest

from sidecar import doctables
from sidecar.core.labels import KNOWN_LABELS, LABELS
from sidecar.core.model import TargetConfig
from sidecar.core.settings import SETTINGS, Settings

RULE_FIELDS = {"s3", "destinations", "encryption", "decryption", "notify"}  # put together by the rules after the table


@pytest.mark.parametrize("page", doctables.PAGES, ids=lambda page: page.name)
def test_reference_tables_are_generated_from_the_code(page):
    assert doctables.render_page(page) == page.read_text(), "run: python -m sidecar.doctables"
    assert doctables.main(["--check", str(page)]) == 0


@pytest.mark.parametrize("name, table", doctables.TABLES.items())
def test_each_table_sits_between_its_markers_in_its_page(name, table):
    assert table.page.parent.name == "reference" and table.page.parent.parent.name == "docs"
    assert f"<!-- {name}:start -->\n{table.make()}\n<!-- {name}:end -->" in table.page.read_text()


def test_the_readme_holds_no_generated_table():
    readme = doctables.REFERENCE.parent.parent / "README.md"
    assert ":start -->" not in readme.read_text()


def test_check_mode_fails_on_a_stale_page(tmp_path):
    page = doctables.TABLES["settings-table"].page
    stale = tmp_path / "settings.md"
    stale.write_text(page.read_text().replace("| `TZ` |", "| `TZ ` |"))
    assert doctables.main(["--check", str(stale)]) == 1
    assert doctables.main([str(stale)]) == 0
    assert doctables.main(["--check", str(stale)]) == 0
    assert stale.read_text() == page.read_text()


def test_render_refuses_a_page_without_markers():
    with pytest.raises(ValueError, match="settings-table"):
        doctables.render("# no tables here\n")
    with pytest.raises(ValueError, match="labels-table"):
        doctables.render("<!-- settings-table:start -->\n<!-- settings-table:end -->\n", ["labels-table"])


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
