"""The documentation holds together: every relative link in README.md and docs/**/*.md
reaches a file that exists, every `#anchor` names a heading of its page (GitHub's slugs),
and the README's first screen shows the two commands."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]
FIRST_SCREEN = 40  # lines: what a person sees before scrolling

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
CODE_SPAN = re.compile(r"(`+).+?\1", re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEF = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)
HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t#]*$", re.M)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # http:, https:, mailto:, ...


def prose(text: str) -> str:
    """`text` without fenced code blocks and code spans: what renders as links."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its rendered text lowercased, everything but letters,
    digits, `_`, `-` and spaces dropped, spaces turned into `-`."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link renders as its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "")
    text = re.sub(r"(\*\*|__|\*)", "", text)
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor of `page`: one per heading, `-1`, `-2`... for repeats, as GitHub numbers them."""
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _, heading in HEADING.findall(FENCE.sub("", page.read_text())):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def links(page: Path) -> list[str]:
    text = prose(page.read_text())
    return LINK.findall(text) + REFERENCE_DEF.findall(text)


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    problems = []
    for target in links(page):
        if EXTERNAL.match(target):
            continue
        path_part, _, anchor = target.partition("#")
        dest = page if not path_part else (page.parent / unquote(path_part)).resolve()
        if not dest.exists():
            problems.append(f"{target}: no file {dest.relative_to(root) if dest.is_relative_to(root) else dest}")
        elif not dest.is_relative_to(root):
            problems.append(f"{target}: outside the repository")
        elif anchor and dest.suffix == ".md" and unquote(anchor).lower() not in anchors(dest):
            problems.append(f"{target}: no heading with anchor #{anchor} in {dest.relative_to(root)}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page):
    assert broken_links(page) == []


def test_the_readme_first_screen_shows_the_two_commands():
    first_screen = "\n".join(README.read_text().splitlines()[:FIRST_SCREEN])
    assert "./scripts/demo" in first_screen
    assert "./scripts/test" in first_screen


def test_the_readme_stays_a_front_door():
    lines = README.read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines: move the detail to docs/"


@pytest.mark.parametrize("heading, expected", [
    ("Quickstart with Compose", "quickstart-with-compose"),
    ("Stopping together, and your own stop", "stopping-together-and-your-own-stop"),
    ("Commands run in containers (`backup.exec.pre`, `post`, presets)",
     "commands-run-in-containers-backupexecpre-post-presets"),
    ("Encryption (age)", "encryption-age"),
    ("Per-node prefixes, and restore on another node", "per-node-prefixes-and-restore-on-another-node"),
    ("`restore-image`", "restore-image"),
    ("Off-site copies: S3, rclone remotes, a second disk", "off-site-copies-s3-rclone-remotes-a-second-disk"),
    ("Rotation (grandfather-father-son)", "rotation-grandfather-father-son"),
    ("A **bold** [link](x.md) heading", "a-bold-link-heading"),
    ("snake_case_name", "snake_case_name"),
])
def test_slug_follows_github(heading, expected):
    assert slug(heading) == expected


def test_a_broken_link_and_a_missing_anchor_are_found(tmp_path):
    tmp_path = tmp_path.resolve()
    (tmp_path / "a.md").write_text("# Title\n\n## Part two\n\n[ok](#part-two) [ok](b.md#b) [ok](https://x.y/#z)\n"
                                   "`[not a link](nowhere.md)`\n\n```\n[nor this](nowhere.md)\n```\n"
                                   "[bad](#part-three) [bad](missing.md) [bad](b.md#nope)\n")
    (tmp_path / "b.md").write_text("# B\n")
    assert broken_links(tmp_path / "a.md", tmp_path) == [
        "#part-three: no heading with anchor #part-three in a.md",
        "missing.md: no file missing.md",
        "b.md#nope: no heading with anchor #nope in b.md",
    ]
