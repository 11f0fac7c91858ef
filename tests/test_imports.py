"""The shape of the package's imports (issue #19): no import cycle among sslab's modules, counting the imports
written inside functions, and only the command layer (sslab/cli.py, sslab/commands/) knows the command line."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
COMMAND_LAYER = ("sslab.cli", "sslab.commands", "sslab.__main__")


def module_name(path: Path, root: Path) -> str:
    return ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")


def imports_of(tree: ast.AST, modules: set[str] | frozenset[str] = frozenset()) -> set[str]:
    """Every module an AST imports, anywhere in it (functions included), except under `if TYPE_CHECKING:`;
    `from a import b` counts as `a.b` where that is one of `modules`, else as `a`."""
    hidden = {id(n) for t in ast.walk(tree) if isinstance(t, ast.If) and "TYPE_CHECKING" in ast.unparse(t.test)
              for n in ast.walk(t)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in hidden:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                      for a in node.names}
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the modules of the same package it imports."""
    trees = {module_name(f, root): ast.parse(f.read_text(encoding="utf-8")) for f in root.rglob("*.py")}
    return {name: {d for d in imports_of(tree, set(trees)) if d in trees and d != name} for name, tree in trees.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path that returns to its start, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (found := visit(d)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_no_import_cycle_among_sslab_modules_counting_function_level_imports():
    graph = import_graph(SRC)
    assert len(graph) > 50 and "sslab.pretrain" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_sees_a_cycle_hidden_in_a_function(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg import b\n")
    (pkg / "b.py").write_text("def f():\n    from pkg.c import g\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    assert find_cycle(import_graph(tmp_path)) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]


def test_only_the_command_layer_knows_the_command_line():
    offenders = []
    modules = set(import_graph(SRC))
    for f in (SRC / "sslab").rglob("*.py"):
        name = module_name(f, SRC)
        if name.startswith(COMMAND_LAYER):
            continue
        deps = imports_of(ast.parse(f.read_text(encoding="utf-8")), modules)
        tree = ast.parse(f.read_text(encoding="utf-8"))
        if any(d == "sslab.cli" or d.startswith("sslab.commands") for d in deps):
            offenders.append(f"{name} imports the command layer")
        if any(isinstance(n, ast.Call) and ast.unparse(n.func).endswith("ArgumentParser") for n in ast.walk(tree)):
            offenders.append(f"{name} builds an argparse parser")
        if any(isinstance(n, ast.Constant) and isinstance(n.value, str) and "sslab.commands." in n.value
               for n in ast.walk(tree)):
            offenders.append(f"{name} names a command function by string")
    assert not offenders, offenders


def test_sslab_train_is_a_plain_function():
    import sslab
    import sslab.pretrain

    assert callable(sslab.train) and type(sslab).__name__ == "module" and type(sslab) is type(sslab.pretrain)
    assert sslab.train.__module__ == "sslab.api"
