"""The README stays a short entry point, and every link from it or a docs/ page to a file of the repository
(with its #anchor, where one is given) leads somewhere."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of the headings of ``page``: lower case, punctuation dropped, spaces as hyphens."""
    found, fenced = set(), False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif line.startswith("#") and not fenced:
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return found


def local_links(page: Path) -> list[tuple[Path, str]]:
    """(file, anchor) of each link of ``page`` that is not a web address."""
    links = []
    for match in LINK.finditer(page.read_text()):
        target = match["target"]
        if re.match(r"^[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        links.append(((page.parent / path).resolve() if path else page, anchor))
    return links


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) < 300, f"README.md has {len(lines)} lines: move details to a docs/ page"


def test_readme_points_to_every_docs_page():
    linked = {path for path, _ in local_links(ROOT / "README.md")}
    pages = set((ROOT / "docs").glob("*.md"))
    assert not pages - linked, f"README.md does not link {sorted(p.name for p in pages - linked)}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_resolve(page):
    broken = []
    for path, anchor in local_links(page):
        if not path.exists():
            broken.append(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} (missing)")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{path.relative_to(ROOT)}#{anchor} (no such heading)")
    assert not broken, f"{page.relative_to(ROOT)} links to {broken}"
