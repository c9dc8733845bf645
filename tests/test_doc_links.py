"""Every relative link in README.md and docs/ resolves: to a file, and to a heading when it
names one.

Run as a script (``python tests/test_doc_links.py``) to list the broken links.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# [text](target) and ![alt](target); the target stops at whitespace or ')' (a title may follow).
_LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_FENCE = re.compile(r"^\s*(```|~~~)")
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def doc_files(root: Path) -> list[Path]:
    """README.md and every Markdown file under docs/, sorted."""
    files = [root / "README.md"] if (root / "README.md").exists() else []
    return files + sorted((root / "docs").rglob("*.md"))


def _prose_lines(text: str, keep_code_spans: bool = False) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks, inline code spans blanked unless kept.

    Links inside code are examples, not links, so they are never checked; headings keep their
    code spans, which GitHub's anchors are made from.
    """
    lines, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append((number, line if keep_code_spans else _CODE_SPAN.sub("", line)))
    return lines


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = _CODE_SPAN.sub(lambda m: m.group(0).strip("`"), heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link in a heading keeps its text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file; a repeated heading gets -1, -2 ... as on GitHub."""
    seen: dict[str, int] = {}
    names = set()
    for _, line in _prose_lines(path.read_text(encoding="utf-8"), keep_code_spans=True):
        match = _HEADING.match(line)
        if match:
            base = slug(match.group(2))
            names.add(f"{base}-{seen[base]}" if base in seen else base)
            seen[base] = seen.get(base, 0) + 1
    return names


def broken_links(root: Path) -> list[str]:
    """Every relative link of README.md and docs/ that does not resolve, as 'file:line: reason'."""
    problems = []
    for path in doc_files(root):
        for number, line in _prose_lines(path.read_text(encoding="utf-8")):
            for target in _LINK.findall(line):
                if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, mailto:
                    continue
                where = f"{path.relative_to(root)}:{number}"
                file_part, _, anchor = target.partition("#")
                dest = (path.parent / file_part).resolve() if file_part else path
                if not dest.exists():
                    problems.append(f"{where}: {target}: no such file {file_part}")
                elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                    problems.append(f"{where}: {target}: no heading #{anchor} in "
                                    f"{dest.relative_to(root)}")
    return problems


def test_readme_and_docs_links_resolve():
    assert doc_files(REPO), "no README.md or docs/ found"
    problems = broken_links(REPO)
    assert not problems, "broken relative links:\n" + "\n".join(problems)


@pytest.mark.parametrize(("heading", "anchor"), [
    ("`mof-cli reproduce table4`", "mof-cli-reproduce-table4"),
    ("Models (`benchmarks/bench_models.py`)", "models-benchmarksbench_modelspy"),
    ("Outputs, checkpoints and resume", "outputs-checkpoints-and-resume"),
    ("Shard sample (WebDataset tar)", "shard-sample-webdataset-tar"),
    ("The paper's Table V", "the-papers-table-v"),
])
def test_slug_matches_github_anchors(heading, anchor):
    assert slug(heading) == anchor


def test_broken_links_are_reported(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A page\n\n## Part one\n", encoding="utf-8")
    (tmp_path / "README.md").write_text(
        "# Title\n"
        "[ok](docs/a.md) [ok anchor](docs/a.md#part-one) [self](#title) [web](https://x.org/y)\n"
        "![missing picture](docs/fig.png) [gone](docs/gone.md)\n"
        "[bad anchor](docs/a.md#part-two) [bad self](#nowhere)\n"
        "`[in code](docs/nothing.md)`\n"
        "```\n[in a block](docs/nothing.md)\n```\n",
        encoding="utf-8")
    problems = broken_links(tmp_path)
    assert [p.split(": ")[1] for p in problems] == [
        "docs/fig.png", "docs/gone.md", "docs/a.md#part-two", "#nowhere"]
    assert all(p.startswith("README.md:") for p in problems)


if __name__ == "__main__":
    found = broken_links(REPO)
    print("\n".join(found) if found else "every relative link resolves")
    sys.exit(1 if found else 0)
