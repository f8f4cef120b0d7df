"""The package layout's rules, checked: no import cycle, no private name imported across modules,
no module shadowed by a function of its package, compat free of tensor math.

Read from the source with ``ast`` (module-level imports, ``TYPE_CHECKING`` blocks excluded), so a
rule broken anywhere in ``purecompress/`` fails here with the module and the line.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import types
from pathlib import Path

import purecompress

ROOT = Path(purecompress.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    out: list[ast.Import | ast.ImportFrom] = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        elif isinstance(node, (ast.If, ast.Try)) and not (isinstance(node, ast.If) and _is_type_checking(node)):
            out.extend(n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom)))
    return out


def _edges(name: str, path: Path) -> set[str]:
    edges = set()
    for node in _top_level_imports(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            edges |= {a.name for a in node.names if a.name in MODULES}
        elif node.module in MODULES:
            subs = {f"{node.module}.{a.name}" for a in node.names} & set(MODULES)
            names = [a for a in node.names if f"{node.module}.{a.name}" not in MODULES]
            edges |= subs | ({node.module} if names else set())
    edges.discard(name)
    return edges


def test_no_import_cycle() -> None:
    graph = {name: _edges(name, path) for name, path in MODULES.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_no_private_name_imported_across_modules() -> None:
    bad = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("purecompress"):
                # a private *module* of one's own package is fine (the re-export pattern); a private
                # name defined inside another module is not
                for alias in node.names:
                    if alias.name.startswith("_") and f"{node.module}.{alias.name}" not in MODULES:
                        bad.append(f"{name}:{node.lineno} imports {node.module}.{alias.name}")
    assert not bad, "\n".join(bad)


def test_no_module_is_shadowed_by_a_function_of_its_package() -> None:
    bad = []
    for info in pkgutil.walk_packages(purecompress.__path__, "purecompress."):
        if info.name.startswith("purecompress.demo"):
            continue
        module = importlib.import_module(info.name)
        parent, _, leaf = info.name.rpartition(".")
        attr = getattr(importlib.import_module(parent), leaf, None)
        if attr is not module and not isinstance(attr, types.ModuleType):
            bad.append(f"{info.name} is shadowed by {type(attr).__name__} {parent}.{leaf}")
    assert not bad, "\n".join(bad)


def test_the_library_does_not_import_the_demo() -> None:
    bad = [f"{name} imports the demo" for name, path in MODULES.items()
           if not name.startswith("purecompress.demo") and "purecompress.demo" in path.read_text()
           and name != "purecompress.__main__"]
    assert not bad, "\n".join(bad)


# Tensor math compat may not do itself (DESIGN: the core computes, compat adapts buffers and names).
_TENSOR_MATH = re.compile(r"\btorch\.(where|clamp|round|minimum|maximum|sigmoid|tanh|sign|topk|sort|quantile|"
                          r"kthvalue|cumsum|exp|log|sqrt|abs|norm|mean|std|var)\(|\.(clamp|round|sigmoid|tanh|"
                          r"topk|kthvalue|quantile|sqrt|norm|std|var)\(")


def test_compat_has_no_tensor_math() -> None:
    bad = []
    for name, path in MODULES.items():
        if not name.startswith("purecompress.compat"):
            continue
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if _TENSOR_MATH.search(code) and "noqa: compat-math" not in line:
                bad.append(f"{name}:{lineno}: {line.strip()}")
    assert not bad, "tensor math in compat (move it to the core):\n" + "\n".join(bad)
