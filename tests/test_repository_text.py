"""The repository's text speaks of the toolkit, not of how it was made, and the README stays a front door."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 200
MAKING_OF = re.compile(
    r"this session|the session before|earlier session|sessions? ago|our issues?|\bthe bars?\b|\(bar\b|\bbar \d"
    r"|\|\s*bars?\s*\||:\s*(?:not\s+)?met\s*\|",   # a table column named "bar", and its "met" / "NOT met" cells
    re.I,
)


def text_files() -> list[Path]:
    """README.md, every docs/*.md, every weights/*.md and every configs/*.toml."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "weights").glob("*.md")),
            *sorted((ROOT / "configs").glob("*.toml"))]


def test_text_does_not_speak_of_how_it_was_made() -> None:
    hits = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
            for path in text_files()
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1)
            if MAKING_OF.search(line)]
    assert not hits, "lines about sessions, issues or bars:\n" + "\n".join(hits)


def test_the_files_checked_exist() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in text_files()}
    assert {"README.md", "docs/results.md", "docs/training.md", "docs/design.md"} <= names


def test_readme_is_short() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"


LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.M)}


def test_links_of_the_readme_and_docs_resolve() -> None:
    broken = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for n, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), start=1):
            for target in LINK.findall(line):
                if re.match(r"[a-z]+://", target):
                    continue
                file, _, anchor = target.partition("#")
                path = (doc.parent / file).resolve() if file else doc
                if not path.exists():
                    broken.append(f"{doc.relative_to(ROOT)}:{n}: {target} (no such file)")
                elif anchor and path.suffix == ".md" and anchor not in anchors(path):
                    broken.append(f"{doc.relative_to(ROOT)}:{n}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


TOOL = re.compile(r"\b((?:tools|configs)/[\w./-]+\.(?:py|toml))")


def test_the_tools_and_configs_the_text_names_exist() -> None:
    missing = [f"{path.relative_to(ROOT)}: {name}"
               for path in text_files()
               for name in TOOL.findall(path.read_text(encoding="utf-8"))
               if not (ROOT / name).is_file()]
    assert not missing, "the text names files that do not exist:\n" + "\n".join(missing)
