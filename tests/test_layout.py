"""The layout keeps its promises (docs/architecture.md): the library imports no application,
``pipeline`` imports no ``mof``, no module re-exports another's names, no import cycles, and
the docs name only paths, modules and names that exist.

Everything but the first test reads the sources with :mod:`ast`, so a lazy import inside a
function counts as much as one at the top of a module (only ``if TYPE_CHECKING:`` blocks, which
never run, are left out).
"""

from __future__ import annotations

import ast
import importlib
import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: The library: torch/numpy (and timm/transformers for the backbones), no I/O of datasets.
LIBRARY_MODULES = {"bilevel", "bilevel_passes", "frame_mix", "frames", "loss", "metrics", "stats"}
#: Subpackages of ``mof``: the models (library) and one package per application.
MOF_PACKAGES = {"models", "train", "evaluate", "export", "reproduce", "search"}
#: What importing a library module must never pull in.
FORBIDDEN = ("pipeline", "mof.train", "mof.evaluate", "mof.export", "mof.reproduce",
             "mof.search", "click")
#: The one package whose ``__init__`` is a public front door: importing it fills the registry
#: and hands out ``create_model`` (docs/models.md).
FRONT_DOORS = {"mof.models"}


def _modules(*tops: str) -> dict[str, Path]:
    """Dotted module name -> source file, for every module under the given top-level packages."""
    found = {}
    for top in tops:
        for path in sorted((REPO / top).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules of ``modules`` that ``path`` imports, at any depth, outside TYPE_CHECKING."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(n) for child in node.body for n in ast.walk(child)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                if submodule in modules:
                    found.add(submodule)
                elif node.module in modules:
                    found.add(node.module)
    return found


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or ``None`` (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for root in sorted(graph):
        if root in state:
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            step = next(stack[-1], None)
            if step is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(step) == 1:
                return path[path.index(step):] + [step]
            elif step not in state:
                state[step] = 1
                path.append(step)
                stack.append(iter(sorted(graph[step])))
    return None


def test_mof_top_level_holds_only_the_library_and_application_packages():
    top = REPO / "mof"
    modules = {p.stem for p in top.glob("*.py")} - {"__init__"}
    packages = {p.parent.name for p in top.glob("*/__init__.py")}
    assert modules == LIBRARY_MODULES, "mof/ holds the library; an application gets a package"
    assert packages == MOF_PACKAGES


def test_library_modules_import_no_application_and_no_pipeline():
    library = ["mof", *(f"mof.{m}" for m in sorted(LIBRARY_MODULES)),
               *sorted(m for m in _modules("mof/models"))]
    # One fresh interpreter: each import's new forbidden modules are charged to that import.
    code = (
        "import importlib, json, sys\n"
        f"forbidden = {FORBIDDEN!r}\n"
        "bad = lambda: {m for m in sys.modules if m.split('.')[0] in forbidden\n"
        "               or any(m == f or m.startswith(f + '.') for f in forbidden)}\n"
        "seen, report = bad(), {}\n"
        f"for name in {library!r}:\n"
        "    importlib.import_module(name)\n"
        "    new = bad() - seen\n"
        "    if new: report[name] = sorted(new)\n"
        "    seen |= new\n"
        "print(json.dumps(report))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == {}


def test_pipeline_never_imports_mof():
    offenders = {}
    for name, path in _modules("pipeline").items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            targets = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                       [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            hits = [t for t in targets if t == "mof" or t.startswith("mof.")]
            if hits:
                offenders.setdefault(name, []).extend(f"line {node.lineno}: {t}" for t in hits)
    assert offenders == {}


def test_no_module_re_exports_names_it_imports():
    """A name in ``__all__`` is defined where it is listed: callers import from the definer."""
    offenders = {}
    for name, path in _modules("mof", "pipeline").items():
        if name in FRONT_DOORS:
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        imported = {a.asname or a.name.split(".")[0] for node in tree.body
                    if isinstance(node, (ast.Import, ast.ImportFrom)) for a in node.names}
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
                listed = {e.value for e in node.value.elts}
                if listed & imported:
                    offenders[name] = sorted(listed & imported)
    assert offenders == {}


def test_the_import_graph_of_mof_and_pipeline_has_no_cycle():
    modules = _modules("mof", "pipeline")
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert _find_cycle(graph) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


#: Docs pages whose code spans name files and modules (the results pages quote past runs).
DOC_PAGES = sorted((REPO / "docs").glob("*.md"))
_SPAN = re.compile(r"`([^`\n]+)`")
_PATH = re.compile(r"^(mof|pipeline|tests|benchmarks|manifests)/[\w./-]*$")
_DOTTED = re.compile(r"^(mof|pipeline)(\.\w+)+$")
_DOC_IMPORT = re.compile(r"^from ((?:mof|pipeline)[\w.]*) import ([\w, ]+)$")


def _resolves(dotted: str) -> bool:
    """Whether ``a.b.c`` is a module, or a module's attribute path (``module.Class.method``)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if not hasattr(target, name):
                return False
            target = getattr(target, name)
        return True
    return False


def test_docs_name_only_paths_and_modules_that_exist():
    dangling = []
    for page in DOC_PAGES:
        for number, line in enumerate(page.read_text().splitlines(), 1):
            for span in _SPAN.findall(line):
                for token in re.split(r"[\s,()]+", span):
                    token = token.split("::")[0].rstrip(":.")
                    if token.endswith((".zarr", ".png", ".mp4")) or "<" in token:
                        continue  # outputs (runs/mof.zarr) and placeholders (<family>.py)
                    if _PATH.match(token) and not (REPO / token).exists() or (
                            _DOTTED.match(token) and not _resolves(token)):
                        dangling.append(f"{page.name}:{number}: {token}")
    assert dangling == []


def test_docs_import_each_name_from_the_module_that_defines_it():
    modules = _modules("mof", "pipeline")
    wrong = []
    for page in DOC_PAGES:
        for number, line in enumerate(page.read_text().splitlines(), 1):
            found = _DOC_IMPORT.match(line.strip())
            if not found or found.group(1) in FRONT_DOORS:
                continue
            module, names = found.group(1), [n.strip() for n in found.group(2).split(",")]
            tree = ast.parse(modules[module].read_text())
            defined = {n.name for n in tree.body if isinstance(
                n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))} | {
                t.id for n in tree.body if isinstance(n, (ast.Assign, ast.AnnAssign))
                for t in ([n.target] if isinstance(n, ast.AnnAssign) else n.targets)
                if isinstance(t, ast.Name)}
            wrong += [f"{page.name}:{number}: {module}.{name}" for name in names
                      if name not in defined and f"{module}.{name}" not in modules]
    assert wrong == []
