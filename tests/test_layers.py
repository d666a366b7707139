"""The package's layers only point down (docs/ARCHITECTURE.md): every `sparta.X` import in src/, at module level
or inside a function, goes to the importer's own package or to a lower layer, and no modules import each other
in a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "sparta"
# lowest first; packages on one line share a layer and may not import each other
LAYERS = [
    ("errors",),
    ("fileio", "console", "precision", "options"),
    ("adapter",),
    ("models", "tasks"),
    ("objectives",),
    ("methods",),
    ("runs",),
    ("train", "analysis", "serve"),
    ("merging",),
    ("experiments",),
    ("cli", "demo"),
    ("__main__",),
]
RANK = {package: rank for rank, packages in enumerate(LAYERS) for package in packages}


def modules_under(root: Path) -> dict[str, Path]:
    """{dotted module name: file} for a `sparta` source tree."""
    out = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The sparta modules `path` imports (`from sparta.a import b` counts as sparta.a.b when that is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("sparta"))
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.startswith("sparta")
            and not node.level
        ):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
    return found


def package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None  # None: the top-level `sparta` package itself


def upward_imports(modules: dict[str, Path]) -> list[str]:
    bad = []
    for module, path in modules.items():
        own = package_of(module)
        for target in imports_of(path, modules):
            other = package_of(target)
            if own is not None and other is not None and other != own and RANK[other] >= RANK[own]:
                bad.append(f"{module} -> {target}")
    return sorted(bad)


def import_cycles(modules: dict[str, Path]) -> list[str]:
    graph = {m: {t for t in imports_of(p, modules) if t in modules and t != m} for m, p in modules.items()}
    # a package's __init__ re-exports its own modules: a module importing its own package's __init__ is fine
    graph = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}
    state: dict[str, int] = {}
    cycles: list[str] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return cycles


def test_every_package_has_a_layer():
    packages = {package_of(m) for m in modules_under(SRC)} - {None}
    assert packages <= set(RANK), f"add {sorted(packages - set(RANK))} to LAYERS and docs/ARCHITECTURE.md"


def test_imports_only_point_down():
    assert upward_imports(modules_under(SRC)) == []


def test_no_import_cycles():
    assert import_cycles(modules_under(SRC)) == []


def test_the_checks_find_an_upward_import_and_a_cycle(tmp_path):
    root = tmp_path / "sparta"
    (root / "adapter").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "adapter" / "__init__.py").write_text("")
    (root / "adapter" / "a.py").write_text("def f():\n    from sparta.cli import main\n")  # inside a function
    (root / "adapter" / "b.py").write_text("import sparta.adapter.c\n")
    (root / "adapter" / "c.py").write_text("from sparta.adapter import b\n")
    modules = modules_under(root)
    assert upward_imports(modules) == ["sparta.adapter.a -> sparta.cli"]
    assert import_cycles(modules) == ["sparta.adapter.b -> sparta.adapter.c -> sparta.adapter.b"]
