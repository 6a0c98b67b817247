"""The shape of the package, measured on its source: the import graph among ``flowalign`` modules
is acyclic (module-level and function-level imports alike), no library module imports a command
module (``flowalign.cli``), no function is longer than 80 lines and the training recipe's loop
(``flowalign.train.loop.train``) reads in <= 60."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "flowalign"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in ROOT.rglob("*.py")}


def imported(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The flowalign modules ``name`` imports anywhere in its file (``from . import x`` of a
    submodule counts as importing that submodule)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("flowalign")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            if not base.startswith("flowalign"):
                continue
            subs = {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known}
            out |= subs or {base}
            if subs and len(subs) < len(node.names):
                out.add(base)
    return {m for m in out if m in known and m != name}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported(name, path, known) for name, path in known.items()}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(g[n]):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state and (cycle := visit(m)):
                return cycle
        state[n] = 2
        stack.pop()
        return None

    for n in sorted(g):
        if n not in state and (cycle := visit(n)):
            return cycle
    return None


def test_import_graph_is_acyclic():
    g = graph()
    assert len(g) > 60 and "flowalign.train.loop" in g["flowalign.cli.train"] | set().union(*g.values())
    assert find_cycle(g) is None, f"import cycle: {' -> '.join(find_cycle(g))}"


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_library_module_imports_a_command_module():
    offenders = {
        n: sorted(m for m in deps if m.startswith("flowalign.cli"))
        for n, deps in graph().items()
        if not n.startswith("flowalign.cli")
    }
    assert not {n: d for n, d in offenders.items() if d}


def test_function_lengths():
    long = []
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 80 or (module_name(path) == "flowalign.train.loop" and node.name == "train" and n > 60):
                    long.append(f"{module_name(path)}.{node.name}: {n} lines")
    assert not long, long
