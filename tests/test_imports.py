"""The import graph of phaze/: no cycle (imports inside functions count too), and only the
CLI layer (phaze/cli.py, the `commands.py` files and the `python -m phaze` entry point
phaze/__main__.py) imports phaze.cli."""

from __future__ import annotations

import ast
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "phaze"


def _modules() -> dict[str, Path]:
    out = {}
    for f in sorted(PKG.rglob("*.py")):
        parts = list(f.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


MODULES = _modules()


def _target(name: str) -> str | None:
    """The phaze module an import of `name` loads (its longest known prefix)."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(mod: str, path: Path) -> set[str]:
    """Every phaze module `mod` imports, at any level of its code."""
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = mod.split(".") if is_pkg else mod.split(".")[:-1]
                pkg = pkg[:len(pkg) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            # `from pkg import sub` loads the submodule pkg.sub when there is one
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                     for a in node.names]
        else:
            continue
        for name in names:
            t = _target(name)
            if t is not None and t != mod:
                out.add(t)
    return out


GRAPH = {m: _imports(m, f) for m, f in MODULES.items()}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as [a, b, ..., a], or None."""
    colour = dict.fromkeys(graph, 0)      # 0 new, 1 on the current path, 2 done
    path: list[str] = []

    def dfs(u):
        colour[u] = 1
        path.append(u)
        for v in sorted(graph[u]):
            if colour[v] == 1:
                return path[path.index(v):] + [v]
            if colour[v] == 0:
                found = dfs(v)
                if found:
                    return found
        path.pop()
        colour[u] = 2
        return None

    for m in sorted(graph):
        if colour[m] == 0:
            found = dfs(m)
            if found:
                return found
    return None


def test_walk_sees_the_package():
    assert "phaze.cli" in MODULES and "phaze.sched.solve" in MODULES
    assert "phaze.sched.backends" in GRAPH["phaze.sched.solve"]


def test_no_import_cycle():
    cycle = _find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_only_the_cli_layer_imports_cli():
    cli_layer = {"phaze.cli", "phaze.__main__"}
    bad = sorted(m for m, deps in GRAPH.items() if "phaze.cli" in deps
                 and m not in cli_layer and MODULES[m].name != "commands.py")
    assert not bad, f"modules outside the CLI layer import phaze.cli: {bad}"


def test_cli_start_imports_no_heavy_library():
    """`phaze --version` and `phaze <cmd> --help` build the whole parser: none of the
    command modules may import pandas, numpy or a solver at module level (each phaze
    process would pay ~0.5 s of CPU before doing anything)."""
    import subprocess
    import sys

    code = ("import sys; from phaze.cli import build_parser; build_parser(); "
            "print(','.join(m for m in ('pandas', 'numpy', 'scipy', 'ortools', 'highspy', "
            "'pyarrow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                         check=True)
    assert out.stdout.strip() == ""
