"""The package's modules import each other without circles (configs are leaves; docs/ARCHITECTURE.md).

    python -m pytest tests/test_import_graph.py

Module-level ``import`` / ``from`` statements of instraction/**/*.py only (imports inside functions run later
and do not count), read with ast, so nothing is imported to check it.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "instraction"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _top_level_imports(tree: ast.Module) -> list[ast.stmt]:
    """Import statements run at import time: module level, including under if / try (not in defs or classes)."""
    out, todo = [], list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            for field in ("body", "orelse", "finalbody", "handlers"):
                for child in getattr(node, field, []):
                    todo.extend(child.body if isinstance(child, ast.ExceptHandler) else [child])
    return out


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in _top_level_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative: from . import x / from ..a import b
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                # "from pkg import mod" imports the submodule pkg.mod when there is one
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for target in targets:
                while target and target not in files:  # a name inside a module: the module itself
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One cycle as ``[a, b, ..., a]``, or [] when the graph is acyclic (iterative DFS, three colours)."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    for root in sorted(graph):
        if state.get(root):
            continue
        stack = [(root, iter(sorted(graph[root])))]
        path = [root]
        state[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return path[path.index(child):] + [child]
            elif not state.get(child):
                state[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(graph[child]))))
    return []


def test_the_package_import_graph_has_no_cycles():
    cycle = find_cycle(import_graph())
    assert not cycle, "import cycle: " + " -> ".join(cycle)


def test_find_cycle_reports_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


def test_the_graph_sees_module_level_imports_only():
    graph = import_graph()
    assert "instraction.config" in graph["instraction.workflow"]  # a module-level import is an edge
    assert "instraction.train.launch" not in graph["instraction.cluster"]  # imported inside init_ray: not one


def _all_imports(module: str) -> set[str]:
    """Every instraction module ``module`` imports, at module level or inside functions."""
    path = PACKAGE.parent / (module.replace(".", "/") + ".py")
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("instraction"):
            out.update(f"{node.module}.{a.name}" for a in node.names)
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("instraction"))
    return out


def test_component_configs_are_leaves():
    """A component config imports the validation helpers and the lexicon, never the root config or code."""
    allowed = {"instraction", "instraction.lexicon", "instraction.config_checks"}
    configs = [_module_name(p) for p in PACKAGE.glob("*/config.py")]
    assert len(configs) == 6
    for module in configs:
        # "from instraction.lexicon import X" records the module and module.X; only the modules matter here
        imported = {m for m in _all_imports(module) if m.rpartition(".")[0] not in allowed - {"instraction"}}
        assert imported <= allowed, (module, imported)
    assert _all_imports("instraction.config_checks") == set()


def test_the_cut_edges_stay_cut():
    assert not any(m.startswith("instraction.curation") for m in _all_imports("instraction.data.pipeline"))
    assert not any(m.startswith("instraction.model.loaders") for m in _all_imports("instraction.model.backbone"))
    assert not any(m.startswith("instraction.data.render") for m in _all_imports("instraction.data.config"))


def test_synthkitchen_lists_match_the_renderer():
    from instraction import lexicon
    from instraction.data.render import MOTIONS, OBJECT_COLORS

    assert sorted(lexicon.SYNTH_VERBS) == sorted(MOTIONS) and set(lexicon.SYNTH_VERBS) <= set(lexicon.VERBS)
    assert sorted(lexicon.SYNTH_OBJECTS) == sorted(OBJECT_COLORS) and set(lexicon.SYNTH_OBJECTS) <= set(lexicon.OBJECTS)
