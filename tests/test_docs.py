"""The documentation's links: every relative link in README.md and docs/**/*.md points at a file of the repository
(and, with a ``#fragment`` into a Markdown file, at one of its headings)."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import REPO_ROOT

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def markdown_files() -> list[Path]:
    return [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").rglob("*.md"))]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {slug(m.group(1)) for m in re.finditer(r"^#+\s+(.*)$", text, flags=re.M)}


def broken_links(path: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)  # code blocks hold no links
    problems = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file_part, _, fragment = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(REPO_ROOT)}: {target}"
        if not resolved.is_relative_to(REPO_ROOT) or not resolved.exists():
            problems.append(f"{where} (no such file)")
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
            problems.append(f"{where} (no such heading)")
    return problems


def test_the_link_checker_catches_a_broken_link_and_a_broken_anchor(tmp_path, monkeypatch):
    monkeypatch.setattr("test_docs.REPO_ROOT", tmp_path)
    (tmp_path / "a.md").write_text("# Title\n\n## Two words\n")
    page = tmp_path / "b.md"
    page.write_text("[ok](a.md) [ok](a.md#two-words) [x](missing.md) [y](a.md#nope) [web](https://x.org)\n"
                    "```\n[in code](nowhere.md)\n```\n")
    assert broken_links(page) == ["b.md: missing.md (no such file)", "b.md: a.md#nope (no such heading)"]


def test_every_relative_link_in_readme_and_docs_resolves():
    files = markdown_files()
    assert len(files) > 5 and sum(len(LINK.findall(p.read_text())) for p in files) > 20  # the links were read
    assert [problem for path in files for problem in broken_links(path)] == []
