"""The documentation lives in the repository: every relative link of README.md and docs/*.md
resolves (file, and heading anchor where one is given), and nothing points outside the repository."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
# Folders a user reads; none may send them to a path outside the repository.
READ_BY_USERS = ("README.md", "docs", "notebooks", "analysis", "models", "benchmarks")
OUTSIDE = re.compile(r"shared/|\.\./shared|the spec\b|spec §|§\d+(\.\d+)* of the spec")


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped (letters, digits, spaces,
    hyphens and underscores kept), spaces to hyphens."""
    text = heading.strip().lower()
    kept = "".join(ch for ch in text if ch in " -_" or unicodedata.category(ch)[0] in "LN")
    return kept.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", page.read_text()).splitlines():
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            slug = github_slug(match.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            out.add(slug if count == 0 else f"{slug}-{count}")
    return out


def links(page: Path) -> list[str]:
    return [m.group(1) for m in LINK.finditer(FENCE.sub("", page.read_text()))]


def test_slug_rules() -> None:
    assert github_slug("`post`: Post-LN") == "post-post-ln"
    assert github_slug("`skip_scale`: xSkip+LN") == "skip_scale-xskipln"
    assert github_slug("Sandwich, Peri-LN (2025)") == "sandwich-peri-ln-2025"


def test_docs_exist() -> None:
    names = {p.name for p in PAGES}
    assert {"README.md", "index.md", "placements.md", "probes.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in links(page):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not ours to check offline
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor} in {dest.name}")
        elif not dest.is_relative_to(ROOT):
            broken.append(f"{target}: outside the repository")
    assert not broken, f"{page.name}: broken links:\n" + "\n".join(broken)


def test_nothing_points_outside_the_repository() -> None:
    hits = []
    for entry in READ_BY_USERS:
        base = ROOT / entry
        files = (
            [base] if base.is_file() else [p for p in base.rglob("*") if p.suffix in (".py", ".md", ".ipynb", ".toml")]
        )
        for path in files:
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if OUTSIDE.search(line):
                    hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert not hits, "pointers outside the repository:\n" + "\n".join(hits)
