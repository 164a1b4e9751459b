"""Every relative link in the project's Markdown points to a file that exists and, with an anchor, to a heading
that exists there (GitHub's heading slugs): the docs are how users find their way, and sections move."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
SKIPPED_DIRS = {".venv", "runs", "node_modules", ".git", ".pytest_cache"}


def _markdown_files() -> list[Path]:
    return [p for p in ROOT.rglob("*.md") if not SKIPPED_DIRS & set(p.relative_to(ROOT).parts)]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but ``-`` and ``_`` dropped, spaces as ``-``."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    out: set[str] = set()
    in_code = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            out.add(slug(line.lstrip("#")))
    return out


def test_slug_follows_githubs_rules():
    assert slug(" Garments inside clumps (`textile_check.carve`)") == "garments-inside-clumps-textile_checkcarve"
    assert slug("Is it cloth?") == "is-it-cloth"


def test_relative_links_and_their_anchors_exist():
    broken = []
    for md in _markdown_files():
        for target in LINK.findall(md.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):  # http(s), mailto
                continue
            file_part, _, anchor = target.partition("#")
            path = (md.parent / file_part).resolve() if file_part else md
            if not path.exists():
                broken.append(f"{md.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                broken.append(f"{md.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)
