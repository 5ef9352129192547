"""Structural guards, read from the source with ``ast`` (nothing is imported):

* no module of ``finnex_assets`` reaches a private (``_name``) method or attribute of another
  component's object, or imports a private name from another project module;
* no import cycle among the modules of ``finnex_ml`` and ``finnex_assets``;
* ``finnex_ml`` never imports dagster (the library runs without the orchestration layer).

The cycle check reads top-level imports only: statements in a module's body (including ``try``
and ``if`` blocks there), but not imports inside functions (lazy imports, which run after every
module is loaded and cannot deadlock a load) and not ``if TYPE_CHECKING:`` blocks (never run).
An edge goes to the module that defines the imported name: ``from a.b import c`` points at
``a.b.c`` when that is a module, else at ``a.b``. Implicit parent-package loads are not edges
(a package's ``__init__`` importing its own submodules is the normal pattern, not a cycle).
"""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("finnex_ml", "finnex_assets")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module of a ``from`` import (relative levels resolved)."""
    if not node.level:
        return node.module or ""
    is_pkg = MODULES[module].name == "__init__.py"
    base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_pkg else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _top_level_imports(body: list[ast.stmt]):
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _top_level_imports(node.body)
            yield from _top_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *[h.body for h in node.handlers]):
                yield from _top_level_imports(block)


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    src = _resolve(module, node)
    return [f"{src}.{a.name}" if f"{src}.{a.name}" in MODULES else src for a in node.names]


def import_graph() -> dict[str, set[str]]:
    """Project module -> project modules it imports at the top level."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        edges = set()
        for node in _top_level_imports(tree.body):
            edges |= {t for t in _targets(name, node) if t in MODULES and t != name}
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    comp = []
                    while True:
                        top = stack.pop()
                        on_stack.discard(top)
                        comp.append(top)
                        if top == node:
                            break
                    if len(comp) > 1:
                        found.append(sorted(comp))
            elif child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph.get(child, ())))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return found


def test_cycle_finder_finds_a_planted_cycle():
    """The checker itself: a two-module and a three-module circle are found, a chain is not."""
    graph = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": {"a"}, "g": set()}
    assert sorted(cycles(graph)) == [["a", "b"], ["c", "d", "e"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_graph_sees_real_edges():
    # guards against a checker that finds no cycle because it finds no edge
    graph = import_graph()
    assert "finnex_assets.storage" in graph["finnex_assets.io_managers"]
    assert "finnex_ml.storage" in graph["finnex_assets.storage"]
    assert "finnex_ml.series" in graph["finnex_ml.storage"]
    assert "finnex_assets.assets.datasets" in graph["finnex_assets.definitions"]


def test_no_import_cycles_between_project_modules():
    found = cycles(import_graph())
    assert found == [], f"import cycles (top-level imports): {found}"


def _private_uses(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    module = next(m for m, p in MODULES.items() if p == path)
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            owner = node.value
            if not (isinstance(owner, ast.Name) and owner.id in ("self", "cls")):
                bad.append(f"{path.name}:{node.lineno} .{node.attr}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("getattr", "setattr"):
            arg = node.args[1] if len(node.args) > 1 else None
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and _is_private(arg.value):
                bad.append(f"{path.name}:{node.lineno} {node.func.id}(..., {arg.value!r})")
        elif isinstance(node, ast.ImportFrom):
            src = _resolve(module, node)
            if src.split(".")[0] in PACKAGES and src != module:
                bad += [f"{path.name}:{node.lineno} import {a.name}" for a in node.names if _is_private(a.name)]
    return bad


def test_private_use_finder_flags_what_it_should(tmp_path, monkeypatch):
    src = (
        "from finnex_ml.encoding.normalize import _config_hash\n"
        "class A:\n    def f(self, other):\n        self._ok()\n        return other._path('x')\n"
        "def g(io):\n    return getattr(io, '_root')(), io.__class__\n"
    )
    path = tmp_path / "probe.py"
    path.write_text(src, encoding="utf-8")
    monkeypatch.setitem(MODULES, "finnex_assets.probe", path)
    assert _private_uses(path) == [
        "probe.py:1 import _config_hash",
        "probe.py:5 ._path",
        "probe.py:7 getattr(..., '_root')",
    ]


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("finnex_assets")))
def test_asset_layer_uses_only_public_names_of_other_components(module):
    assert _private_uses(MODULES[module]) == []


def test_finnex_ml_never_imports_dagster():
    # every import, function-level ones included: the library must load and run without dagster
    bad = []
    for name, path in MODULES.items():
        if not name.startswith("finnex_ml"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            mods = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and not node.level
                else []
            )
            bad += [f"{name}:{node.lineno} {m}" for m in mods if m.split(".")[0].startswith("dagster")]
    assert bad == []
