"""Layers point one way, and no import circle closes, counting imports inside functions too.

    models <- families <- compress <- {api, bench, search, parallel} <- serve <- cli

Read from the source (AST), so a function-local import that would close a circle at run time is caught
here, not by the first user whose call order happens to trigger it.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "slimformer"

# A package may import from packages of its own rank or lower, never higher (and no circle may close).
RANKS = {"models": 1, "families": 2, "compress": 3, "api": 4, "bench": 4, "search": 4, "parallel": 4, "serve": 5,
         "cli": 6}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (getattr(test, "id", None) == "TYPE_CHECKING"
                                         or getattr(test, "attr", None) == "TYPE_CHECKING")


def walk(node: ast.AST):
    """ast.walk, minus `if TYPE_CHECKING:` blocks (annotations only: never imported at run time)."""
    yield node
    for child in ast.iter_child_nodes(node):
        if not _type_checking(child):
            yield from walk(child)


def imports(path: Path) -> set[str]:
    """Every slimformer module `path` imports, anywhere in the file (resolved to module names)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("slimformer")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("slimformer"):
                continue
            for alias in node.names:  # `from . import x` may name a submodule
                sub = f"{target}.{alias.name}"
                found.add(sub if (SRC.parent / sub.replace(".", "/")).with_suffix(".py").exists()
                          or (SRC.parent / sub.replace(".", "/")).is_dir() else target)
    return found - {name}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in SRC.rglob("*.py")}


def top(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def test_layers_point_one_way():
    wrong = []
    for module, deps in graph().items():
        own = RANKS.get(top(module))
        for dep in deps:
            theirs = RANKS.get(top(dep))
            if own is None or theirs is None or top(dep) == top(module):
                continue
            if theirs > own:
                wrong.append(f"{module} -> {dep}")
    assert not wrong, "imports against the layering:\n" + "\n".join(sorted(wrong))


def test_no_import_cycles():
    g = graph()
    # edges into a package's __init__ stand for the package; follow them as written
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(g.get(node, ())):
            if dep not in g:
                continue
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles[:10])
