"""The documents cannot rot: every `python` block in docs/ (and CONTRIBUTING.md) runs, in
order, one namespace per file, and fails the test on any error; every other fenced block
must say it is `text` (math, diagrams, shell lines that are not run). Every reference to a
document names a file of the repository, and every section the code cites by name
(`docs/performance.md, "Dispatch cost"`) is a heading of that file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted((ROOT / "docs").glob("**/*.md")) + [ROOT / "CONTRIBUTING.md"]
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```\s*$", re.S | re.M)
RUN, NOT_RUN = {"python"}, {"text"}


def blocks(path: Path) -> list[tuple[str, int, str]]:
    """(language, first line number of the code, code) of each fenced block."""
    text = path.read_text(encoding="utf-8")
    return [
        (m.group(1).strip(), text.count("\n", 0, m.start(2)) + 1, m.group(2))
        for m in FENCE.finditer(text)
    ]


def test_docs_exist():
    names = {p.name for p in DOCS}
    assert {"backprop.md", "architecture.md", "performance.md", "CONTRIBUTING.md"} <= names


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_code_blocks_run(path: Path):
    found = blocks(path)
    bad = [(lang, line) for lang, line, _ in found if lang not in RUN | NOT_RUN]
    assert not bad, (
        f"{path.name}: blocks at lines {[line for _, line in bad]} have language "
        f"{[lang for lang, _ in bad]}; mark them `python` (run by this test) or `text`"
    )
    namespace: dict = {"__name__": f"docs.{path.stem}"}
    for lang, line, code in found:
        if lang in RUN:
            # padded so that a traceback points at the line of the Markdown file
            exec(compile("\n" * (line - 1) + code, str(path), "exec"), namespace)


def _sources() -> list[Path]:
    files = [ROOT / "README.md", *DOCS]
    for folder in ("npllm", "benchmarks", "tests"):
        files += sorted((ROOT / folder).glob("**/*.py"))
    return [f for f in files if f != Path(__file__)]


def test_no_reference_to_a_missing_document():
    cited = re.compile(r"(?<![\w/.])((?:docs/)?[\w/-]+\.md)\b")
    missing = []
    for f in _sources():
        text = f.read_text(encoding="utf-8")
        for old in ("DESIGN.md", "PERF_NOTES"):
            if old in text:
                missing.append(f"{f.relative_to(ROOT)}: {old} (not in the repository)")
        for m in cited.finditer(text):
            name = m.group(1)
            if name.startswith("docs/") or name in ("CONTRIBUTING.md", "RESULTS.md"):
                target = ROOT / name if "/" in name else None
                if name == "RESULTS.md":
                    target = ROOT / "benchmarks" / name
                elif name == "CONTRIBUTING.md":
                    target = ROOT / name
                if target is not None and not target.exists():
                    missing.append(f"{f.relative_to(ROOT)}: {name}")
    assert not missing, "references to documents that do not exist:\n" + "\n".join(missing)


def test_cited_sections_exist():
    """`docs/NAME.md, "Section"` in code or docs names a heading of that document."""
    cite = re.compile(r'docs/(\w+)\.md,?\s+"([^"]+)"')
    wrong = []
    for f in _sources():
        # a citation may run over a line break of a comment: join the lines first
        text = re.sub(r"\s*\n\s*(?:#\s*)?", " ", f.read_text(encoding="utf-8"))
        for m in cite.finditer(text):
            doc = ROOT / "docs" / f"{m.group(1)}.md"
            heads = [h.lower() for h in re.findall(r"^#+ (.+)$", doc.read_text(), re.M)]
            if not any(h.startswith(m.group(2).lower()) for h in heads):
                wrong.append(f'{f.relative_to(ROOT)}: docs/{m.group(1)}.md "{m.group(2)}"')
    assert not wrong, "cited sections that are not headings:\n" + "\n".join(wrong)


def test_relative_links_point_at_files():
    link = re.compile(r"\]\(([^)\s]+)\)")
    broken = []
    for doc in [ROOT / "README.md", *DOCS]:
        for target in link.findall(doc.read_text(encoding="utf-8")):
            path = target.split("#", 1)[0]
            if path and "://" not in path and not (doc.parent / path).exists():
                broken.append(f"{doc.relative_to(ROOT)}: {target}")
    assert not broken, "links to files that do not exist:\n" + "\n".join(broken)


def test_every_backward_states_its_rule():
    """Each `Function.backward` in the package opens with a comment stating its rule,
    `forward  =>  gradient` (the derivations are in docs/backprop.md)."""
    import ast

    missing = []
    for f in sorted((ROOT / "npllm").glob("**/*.py")):
        lines = f.read_text(encoding="utf-8").splitlines()
        for cls in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(cls, ast.ClassDef) or "Function" not in {
                getattr(b, "id", getattr(b, "attr", None)) for b in cls.bases
            }:
                continue
            for node in cls.body:
                if isinstance(node, ast.FunctionDef) and node.name == "backward":
                    body = lines[node.lineno : node.body[0].lineno + 2]
                    if not any(ln.strip().startswith("#") and "=>" in ln for ln in body):
                        missing.append(f"{f.relative_to(ROOT)}:{node.lineno} ({cls.name})")
    assert not missing, "backward without its rule (# out = ...  =>  dx = ...):\n" + "\n".join(
        missing
    )
