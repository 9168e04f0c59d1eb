"""gpwref's modules form layers: no import circle, the verification suite only behind the CLI, and
kernels that depend on neither the core nor the losses.

Every ``import`` / ``from ... import`` of every gpwref/**/*.py counts, including those inside
functions; relative imports are resolved, and ``from pkg import name`` is an edge to ``pkg.name``
when that is a module (else to ``pkg``).

The text of the source, tests, benchmarks and docs cites only documents inside the repository, and
every ``docs/<page>.md#anchor`` it cites names an existing page and heading.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "gpwref"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _imports(name: str, path: Path):
    """(imported module, imported name or None) for every import statement of one module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if _is_package(name) else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            for alias in node.names:
                yield target, alias.name


def _edges():
    """module -> {(target module, imported name or None)} inside and outside gpwref."""
    edges = {}
    for name, path in MODULES.items():
        out = set()
        for target, imported in _imports(name, path):
            if imported is not None and f"{target}.{imported}" in MODULES:
                out.add((f"{target}.{imported}", None))
            else:
                out.add((target, imported))
        edges[name] = out
    return edges


EDGES = _edges()


def _internal_graph():
    graph = {}
    for name, out in EDGES.items():
        targets = set()
        for target, _ in out:
            # importing gpwref.a.b runs gpwref.a's __init__ as well, but the edge that matters is the module
            if target in MODULES and target != name:
                targets.add(target)
        graph[name] = targets
    return graph


def _find_cycle(graph):
    state = {}
    stack = []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_graph_sees_imports_inside_functions():
    # guards the parser itself: gpwref/pipeline.py imports the kernel backends inside a function
    assert "gpwref.kernels.backends" in _internal_graph()["gpwref.pipeline"]


def test_no_import_cycle():
    cycle = _find_cycle(_internal_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_only_the_cli_imports_the_verification_suite():
    offenders = sorted(
        f"{name} imports {target}"
        for name, out in EDGES.items()
        for target, _ in out
        if name != "gpwref.cli" and target.split(".")[0] in ("verification", "gpwref_verification")
    )
    assert not offenders, offenders


def test_kernels_import_neither_the_core_nor_the_losses_nor_private_names():
    offenders = []
    for name, out in EDGES.items():
        if not name.startswith("gpwref.kernels"):
            continue
        for target, imported in out:
            if target == "gpwref.core" or target.startswith("gpwref.core.") or target.startswith("gpwref.losses"):
                offenders.append(f"{name} imports {target}")
            elif (target.startswith("gpwref.") and not target.startswith("gpwref.kernels")
                  and imported is not None and imported.startswith("_")):
                offenders.append(f"{name} imports the private {target}.{imported}")
    assert not offenders, offenders


# --- citations: only documents inside the repository ---------------------------------------------

# The background notes the code was first written from live outside the repository; a citation of them
# (by name, by section number, or by path) points nowhere for a reader of the repository.
OUTSIDE_DOCUMENTS = re.compile(r"SPEC\.md|catalog\.md,? (section|[0-9§])|\.\./shared|research-(perf|users)|shared/")
DOCS_CITATION = re.compile(r"docs/([A-Za-z0-9_-]+)\.md(?:#([A-Za-z0-9_-]+))?")
RELATIVE_DOCS_LINK = re.compile(r"\]\(([A-Za-z0-9_-]+)\.md(?:#([A-Za-z0-9_-]+))?\)")


def _scanned_texts():
    """(path, text) of the source, tests, benchmarks and docs; this file is left out (it holds the patterns)."""
    paths = [ROOT / "README.md"]
    for folder, patterns in (("gpwref", ("*.py",)), ("verification", ("*.py", "*.md")), ("tests", ("*.py", "*.md")),
                             ("benchmarks", ("*.py", "*.md")), ("docs", ("*.md", "*.py"))):
        for pattern in patterns:
            paths += sorted((ROOT / folder).rglob(pattern))
    here = Path(__file__).resolve()
    return [(path.relative_to(ROOT), path.read_text()) for path in paths if path.resolve() != here]


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation other than - and _ dropped, spaces as -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    anchors, fenced = set(), False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            anchors.add(_anchor(line.lstrip("#")))
    return anchors


def _broken_docs_citations(texts):
    broken = []
    for path, text in texts:
        found = [(m, ROOT / "docs") for m in DOCS_CITATION.finditer(text)]
        if path.suffix == ".md":
            found += [(m, (ROOT / path).parent) for m in RELATIVE_DOCS_LINK.finditer(text)]
        for match, folder in found:
            page, anchor = folder / f"{match.group(1)}.md", match.group(2)
            line = text.count("\n", 0, match.start()) + 1
            if not page.is_file():
                broken.append(f"{path}:{line}: {match.group(0)} (no such page)")
            elif anchor and anchor not in _anchors(page):
                broken.append(f"{path}:{line}: {match.group(0)} (no such heading)")
    return broken


def test_the_anchor_rule_matches_github_on_headings_with_punctuation():
    assert _anchor(' What "well-conditioned" means') == "what-well-conditioned-means"
    assert _anchor(" Oracle (gpwref.testing)") == "oracle-gpwreftesting"
    assert _anchor(" 4. Tests: `tests/losses/test_<name>.py`") == "4-tests-testslossestest_namepy"


def test_no_citation_of_a_document_outside_the_repository():
    offenders = [f"{path}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(0)}"
                 for path, text in _scanned_texts() for m in OUTSIDE_DOCUMENTS.finditer(text)]
    assert not offenders, offenders


def test_every_cited_docs_page_and_heading_exists():
    texts = _scanned_texts()
    assert sum(len(DOCS_CITATION.findall(text)) for _, text in texts) > 50  # the scan sees the citations
    broken = _broken_docs_citations(texts)
    assert not broken, broken


def test_the_citation_checks_catch_an_outside_document_and_a_missing_heading():
    old = [(Path("gpwref/errors.py"), 'source to learn what went wrong (SPEC.md, "Bad input").')]
    assert OUTSIDE_DOCUMENTS.search(old[0][1])
    assert _broken_docs_citations([(Path("x.py"), "(docs/oracle-contract.md#bad-inputs)")])
    assert _broken_docs_citations([(Path("x.py"), "(docs/no-such-page.md)")])
    assert not _broken_docs_citations([(Path("x.py"), "(docs/oracle-contract.md#bad-input)")])


REPOSITORY_FILE = re.compile(r"(?<![\w/.-])((?:gpwref|verification|tests|benchmarks|docs)/[A-Za-z0-9_/.-]+\.(?:py|md))")


def test_every_cited_repository_file_exists():
    # a moved file leaves its old path behind in comments; e.g. tests/test_losses_metric.py is gone
    missing = [f"{path}:{text.count(chr(10), 0, m.start()) + 1}: {m.group(1)}"
               for path, text in _scanned_texts() for m in REPOSITORY_FILE.finditer(text)
               if not (ROOT / m.group(1)).exists()]
    assert not missing, missing
