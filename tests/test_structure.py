"""The package's import graph: no circle among lightning_regan's modules, no library module reaching up into the CLI
layer, and no unused import (read from the source, nothing imported)."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "lightning_regan"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _script_block(node: ast.AST) -> bool:
    """``if __name__ == "__main__":`` (runs only as a script, where the module is ``__main__``) or
    ``if TYPE_CHECKING:``."""
    if not isinstance(node, ast.If):
        return False
    test = ast.unparse(node.test)
    return test in ("__name__ == '__main__'", "TYPE_CHECKING", "typing.TYPE_CHECKING")


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The lightning_regan modules ``path`` imports, at its top or inside functions (lazy imports count too)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _script_block(node):
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            for alias in node.names:  # ``from pkg import submodule`` imports the submodule
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imported_modules(path, set(paths)) for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle of ``graph`` (``[a, b, ..., a]``), or ``[]``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def dfs(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return []

    for start in sorted(graph):
        if start not in state and (cycle := dfs(start)):
            return cycle
    return []


def test_find_cycle_finds_a_circle_and_only_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_no_import_circle_among_the_package_modules():
    graph = import_graph()
    assert "lightning_regan.builders" in graph and graph["lightning_regan.builders"]  # the graph was read
    assert find_cycle(graph) == [], " -> ".join(find_cycle(graph))


def test_no_library_module_imports_the_cli_layer():
    graph = import_graph()
    upward = {name: sorted(m for m in deps if m.startswith("lightning_regan.cli"))
              for name, deps in graph.items() if not name.startswith("lightning_regan.cli")}
    assert {name: deps for name, deps in upward.items() if deps} == {}


def unused_imports(path: Path) -> list[str]:
    """Names a module imports and never uses (``__all__`` and ``# noqa: F401`` re-exports count as uses)."""
    source = path.read_text()
    tree = ast.parse(source)
    lines = source.splitlines()
    imported: dict[str, int] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and "noqa" not in lines[node.lineno - 1]:
            if isinstance(node, ast.ImportFrom) and node.module == "__future__":
                continue
            for alias in node.names:
                imported[alias.asname or alias.name.split(".")[0]] = node.lineno
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    used |= {n.value.id for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)}
    # Names in string annotations and in __all__.
    used |= {word for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
             for word in n.value.replace("[", " ").replace("]", " ").replace(",", " ").replace(".", " ").split()}
    return [f"{path.relative_to(REPO_ROOT)}:{line}: {name}" for name, line in imported.items() if name not in used]


def test_no_unused_imports_in_the_package():
    assert [problem for p in sorted(PACKAGE.rglob("*.py")) for problem in unused_imports(p)] == []
