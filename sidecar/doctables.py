"""The settings and labels tables of the reference documentation, generated from
`settings.SETTINGS` and `labels.LABELS` so the documentation and the code cannot disagree.

Each table sits between `<!-- NAME:start -->` and `<!-- NAME:end -->` in its page
(docs/reference/settings.md, docs/reference/labels.md). `python -m sidecar.doctables`
rewrites them there; `--check` only says whether they are current (exit 1 if not), as the
unit tests do.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

from .core.labels import LABELS, Label
from .core.settings import SETTINGS, Setting

REFERENCE = Path(__file__).resolve().parent.parent / "docs" / "reference"


def settings_table() -> str:
    rows = [(_code(s.name), s.help, s.parse.accepted, _setting_default(s)) for s in SETTINGS]
    no_file = [_code(s.name) for s in SETTINGS if not s.file]
    secrets = [_code(s.name) for s in SETTINGS if s.secret]
    return "\n".join([
        _markdown(("setting", "meaning", "accepted", "default"), rows),
        "",
        f"Every setting except {_words(no_file)} can also be given as `NAME_FILE`, the path of a file "
        "holding the value (Docker secrets). The value of "
        f"{_words(secrets)} is never quoted in a message.",
    ])


def labels_table() -> str:
    rows = [(_code(label.name), label.help, _label_accepted(label), _label_default(label)) for label in LABELS]
    return _markdown(("label", "meaning", "accepted", "default"), rows)


@dataclass(frozen=True)
class Table:
    page: Path  # the documentation page holding the table
    make: Callable[[], str]


TABLES: dict[str, Table] = {
    "settings-table": Table(REFERENCE / "settings.md", settings_table),
    "labels-table": Table(REFERENCE / "labels.md", labels_table),
}
PAGES: tuple[Path, ...] = tuple(dict.fromkeys(table.page for table in TABLES.values()))


def render(text: str, names: Iterable[str] | None = None) -> str:
    """`text` (a page) with its generated tables replaced by their current content: the tables
    `names`, or else every table whose block the page holds (at least one)."""
    names = [n for n in TABLES if _start(n) in text] if names is None else list(names)
    if not names:
        raise ValueError(f"no generated table block in the page (one of: {', '.join(map(_start, TABLES))})")
    for name in names:
        pattern = re.compile(rf"({re.escape(_start(name))}\n).*?(<!-- {name}:end -->)", re.S)
        if not pattern.search(text):
            raise ValueError(f"the page has no <!-- {name}:start --> ... <!-- {name}:end --> block")
        text = pattern.sub(lambda m: m.group(1) + TABLES[name].make() + "\n" + m.group(2), text, count=1)
    return text


def render_page(page: Path) -> str:
    """The page's text with its tables current (a page of TABLES: exactly the tables it should hold)."""
    names = [name for name, table in TABLES.items() if table.page == page.resolve()]
    return render(page.read_text(), names or None)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sidecar.doctables", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a page's tables are not current")
    parser.add_argument("pages", nargs="*", type=Path, default=list(PAGES), metavar="PAGE")
    args = parser.parse_args(argv)
    stale = []
    for page in args.pages:
        text = page.read_text()
        current = render_page(page)
        if current == text:
            continue
        if args.check:
            stale.append(page)
        else:
            page.write_text(current)
    for page in stale:
        print(f"{page}: settings/labels tables differ from the code; run python -m sidecar.doctables", file=sys.stderr)
    return 1 if stale else 0


def _start(name: str) -> str:
    return f"<!-- {name}:start -->"


def _setting_default(setting: Setting) -> str:
    if setting.shown_default is not None:
        return setting.shown_default
    return "unset" if setting.default is None else _code(setting.default)


def _label_accepted(label: Label) -> str:
    return label.parse.accepted if label.parse is not None else label.accepted or ""


def _label_default(label: Label) -> str:
    if label.shown_default is not None:
        return label.shown_default
    if label.default is None or label.default == ():
        return "none"
    return _code(str(label.default))


def _markdown(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = [_row(header), _row(["---"] * len(header))]
    lines += [_row(row) for row in rows]
    return "\n".join(lines)


def _row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def _code(text: str) -> str:
    return f"`{text}`"


def _words(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


if __name__ == "__main__":
    sys.exit(main())
