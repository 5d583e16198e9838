"""The README and docs pages: every relative link and #anchor resolves, and the README stays a front page.

Anchors are GitHub's heading slugs (lower case, punctuation dropped, spaces to hyphens, a
repeated heading gets -1, -2, ...), computed here from the target page's headings, so a
renamed heading breaks the links to it.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_BYTES = 12 * 1024
# Pages written on other branches at the same time (safety, security, evaluation work); once
# merged they are checked like any other.
PAGES_OF_PARALLEL_WORK = {"docs/safety.md", "docs/security.md", "docs/evaluation.md"}
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.DOTALL | re.MULTILINE)


def _prose(text: str) -> str:
    """The page without fenced code blocks or inline code, where brackets are not links."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def github_slugs(text: str) -> set[str]:
    slugs: set[str] = set()
    seen: dict[str, int] = {}
    for line in FENCE.sub("", text).splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        slugs.add(slug if count == 0 else f"{slug}-{count}")
    return slugs


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    problems = []
    for match in LINK.finditer(_prose(page.read_text(encoding="utf-8"))):
        target = match.group(1) or match.group(2)
        if re.match(r"^[a-z]+:", target):
            continue  # http(s), mailto: not checked offline
        path_part, _, anchor = target.partition("#")
        destination = (page.parent / path_part).resolve() if path_part else page
        if not destination.exists():
            problems.append(f"{page.relative_to(root)}: {target} (no such file)")
            continue
        if anchor and destination.suffix == ".md" and anchor not in github_slugs(destination.read_text(encoding="utf-8")):
            problems.append(f"{page.relative_to(root)}: {target} (no heading with that anchor)")
    return problems


def test_slugs_follow_github() -> None:
    text = "# A `code` heading: (issue 7)\n## Same\n## Same\n```\n# not a heading\n```\n## camera_node\n"
    assert github_slugs(text) == {"a-code-heading-issue-7", "same", "same-1", "camera_node"}


def test_a_broken_link_is_reported(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other page\n")
    page = tmp_path / "page.md"
    page.write_text("# Title\n[ok](#title) [bad](#nowhere) [gone](missing.md) [there](other.md#other-page)\n"
                    "[wrong](other.md#title) `[code](x.md)`\n")
    assert broken_links(page, tmp_path) == [
        "page.md: #nowhere (no heading with that anchor)",
        "page.md: missing.md (no such file)",
        "page.md: other.md#title (no heading with that anchor)",
    ]


def test_every_link_and_anchor_resolves() -> None:
    problems = [problem for page in _pages() for problem in broken_links(page)]
    missing_parallel = {p for p in PAGES_OF_PARALLEL_WORK if not (ROOT / p).exists()}
    unexplained = [p for p in problems if not any(Path(m).name in p and "no such file" in p for m in missing_parallel)]
    assert not unexplained, "\n".join(unexplained)
    if problems:
        pytest.skip(f"links to pages written on other branches, not here yet: {', '.join(sorted(missing_parallel))}")


def test_readme_is_a_front_page() -> None:
    size = (ROOT / "README.md").stat().st_size
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes; move detail into docs/ (limit {README_MAX_BYTES})"
    assert "issue " not in (ROOT / "README.md").read_text(encoding="utf-8").lower(), "internal history in the README"


def test_docs_pages_named_in_the_readme_exist() -> None:
    for name in ("installation", "configuration", "operation", "nodes", "model", "multi-machine", "benchmarks",
                 "benchmarks-archive", "architecture"):
        assert (ROOT / "docs" / f"{name}.md").is_file(), name
