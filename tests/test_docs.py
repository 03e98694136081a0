"""The documentation's links: every relative link in README.md and docs/**/*.md points at a file
of the repository, every #anchor into a Markdown file names one of its headings, and the README
stays a short map (at most 250 lines). Offline and fast: files are read, nothing is fetched."""
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README_MAX_LINES = 250

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
# [text](target) and ![alt](target), target up to the first space (an optional "title" may follow)
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)
HTML_TARGET = re.compile(r"<(?:a|img)\s[^>]*?(?:href|src)=\"([^\"]+)\"", re.I)
HTML_ANCHOR = re.compile(r"<a\s[^>]*?(?:id|name)=\"([^\"]+)\"", re.I)
HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.+?)[ \t#]*$", re.M)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # http:, https:, mailto:, ...


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def strip_code(text: str) -> str:
    """The text without fenced code blocks and inline code, where brackets are not links."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def links(text: str) -> list[str]:
    """Every link target of a Markdown text (inline, reference definitions, HTML a/img)."""
    prose = strip_code(text)
    return [*INLINE_LINK.findall(prose), *REFERENCE_DEF.findall(prose), *HTML_TARGET.findall(prose)]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: link text kept, markup and punctuation dropped, lower case,
    spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](url) -> text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors GitHub gives a Markdown text: one per heading (repeats get -1, -2, ...), and
    explicit <a id/name>."""
    found, seen = set(), {}
    for heading in HEADING.findall(FENCE.sub("", text)):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found | set(HTML_ANCHOR.findall(text))


def broken_links(doc: Path, repo: Path = REPO) -> list[str]:
    """The links of ``doc`` that lead nowhere, each with the reason."""
    problems = []
    text = doc.read_text(encoding="utf-8")
    for target in links(text):
        if EXTERNAL.match(target):
            continue
        path_part, _, anchor = target.partition("#")
        path = (doc.parent / path_part).resolve() if path_part else doc
        if not path.is_relative_to(repo.resolve()):
            problems.append(f"{target}: outside the repository")
        elif not path.exists():
            problems.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path.read_text(encoding="utf-8")):
            problems.append(f"{target}: no heading with anchor #{anchor} in {path.name}")
    return problems


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(doc):
    assert broken_links(doc) == []


def test_readme_is_short():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines, at most {README_MAX_LINES}"


def test_docs_pages_exist():
    """The README links the docs pages; without them the link test would have nothing to check."""
    assert len(doc_files()) > 1
    assert any("docs/" in target for target in links((REPO / "README.md").read_text(encoding="utf-8")))


# ---- the checker itself finds what it should ----------------------------------------------------

def test_slug_follows_github():
    assert slug("Running at scale: several GPUs, several machines") == "running-at-scale-several-gpus-several-machines"
    assert slug("Measuring: scripts/benchmark.py") == "measuring-scriptsbenchmarkpy"
    assert slug("The paper's tables") == "the-papers-tables"
    assert slug("Training (all on CPU, `trainer.py --cfg demo_*.yaml`)") == "training-all-on-cpu-trainerpy---cfg-demo_yaml"
    assert slug("Few-step sampling") == "few-step-sampling"
    assert slug("[Weights](#w) and more") == "weights-and-more"


def test_checker_reports_broken_links(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text("# Page\n\n## Some part\n\n## Some part\n")
    (tmp_path / "fig.png").write_bytes(b"")
    doc = tmp_path / "README.md"
    doc.write_text(
        "# Title\n\n"
        "[ok](docs/page.md) [ok](docs/page.md#some-part) [ok](docs/page.md#some-part-1) ![ok](fig.png)\n"
        "[ok](#title) [ok](https://example.org/missing.md)\n[ok]: docs/page.md\n"
        "`[not a link](nowhere.md)`\n\n```\n[not a link](nowhere.md)\n```\n\n"
        "[bad](docs/missing.md) [bad](docs/page.md#other) [bad](#nothing) [bad](../outside.md)\n"
        "[bad]: gone.md\n<img src=\"gone.png\">\n")
    assert broken_links(doc, tmp_path) == [
        "docs/missing.md: no such file",
        "docs/page.md#other: no heading with anchor #other in page.md",
        "#nothing: no heading with anchor #nothing in README.md",
        "../outside.md: outside the repository",
        "gone.md: no such file",
        "gone.png: no such file",
    ]
