"""Check that imports go one way, between the kit's packages and between minimodel's layers, and
that no modules import each other in a circle; print the package import graph.

    python -m scripts.check_imports [ROOT]

Allowed: data_prep, eval and scripts import minimodel; scripts imports data_prep and eval.
Inside minimodel, a sub-package imports only those before it in LAYERS (and itself); the
commands at the top (pretrain, cpt, sft, export, dream) may import everything.
Every import counts: one inside a function (a lazy import is still a dependency), a relative
one, importlib.import_module("pkg..."). Violations print as file:line; exit status 1 then.
"""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("minimodel", "data_prep", "eval", "scripts")
FORBIDDEN = {"minimodel": {"data_prep", "eval", "scripts"}, "data_prep": {"eval", "scripts"}, "eval": {"scripts"},
             "scripts": set()}
# minimodel's layers, lowest first: general tools, the network, the config schema, tokenizers, data
# sets, the training loop (and its checkpoint format), whole models (loading, adapters, formats),
# forgetting control, the lifecycle; the commands (the top-level modules) come last.
LAYERS = ("common", "nn", "config", "tokenizers", "data", "train", "models", "forgetting", "stages")


class Import(NamedTuple):
    path: Path      # the importing file, relative to the root
    line: int
    source: str     # the importing file's package
    module: str     # the imported module, as an absolute dotted name
    names: tuple = ()  # what `from module import ...` takes (a sub-module among them counts as imported)

    @property
    def target(self) -> str:
        return self.module.split(".")[0]

    def __str__(self) -> str:
        if self.source == self.target:  # a layer inside a package
            return f"{self.path}:{self.line}: {module_name(self.path)} imports {self.module}, a later layer"
        return f"{self.path}:{self.line}: {self.source} imports {self.target} ({self.module})"


def _modules(node: ast.AST, package: list[str]) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):  # a relative import starts from the file's package
        base = package[:len(package) - node.level + 1] if node.level else []
        return [".".join(base + (node.module.split(".") if node.module else []))]
    if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
            and getattr(node.func, "attr", getattr(node.func, "id", "")) in ("import_module", "__import__"):
        return [str(node.args[0].value)]
    return []


def find_imports(root: str | Path = ROOT) -> list[Import]:
    """Every import of a module in one of PACKAGES made by a .py file under root/PACKAGE/."""
    root, found = Path(root), []
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            rel = path.relative_to(root)
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(rel))):
                names = tuple(a.name for a in node.names) if isinstance(node, ast.ImportFrom) else ()
                found += [Import(rel, node.lineno, pkg, m, names) for m in _modules(node, list(rel.parent.parts))
                          if m.split(".")[0] in PACKAGES]
    return sorted(found, key=lambda i: (str(i.path), i.line))


def layer(module: str) -> int:
    """A minimodel module's place in LAYERS (commands and the package itself: after every layer)."""
    part = module.split(".")[1] if module.count(".") else ""
    return LAYERS.index(part) if part in LAYERS else len(LAYERS)


def module_name(path: Path) -> str:
    parts = list(path.with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def violations(imports: list[Import]) -> list[Import]:
    """Imports against the direction between packages, or from a lower minimodel layer to a higher."""
    return [i for i in imports if i.target in FORBIDDEN[i.source]
            or (i.source == i.target == "minimodel" and layer(i.module) > layer(module_name(i.path)))]


def circles(imports: list[Import], root: str | Path = ROOT) -> list[list[str]]:
    """Groups of modules that import each other, directly or through others (Tarjan's algorithm)."""
    root = Path(root)
    names = {module_name(p.relative_to(root)) for pkg in PACKAGES for p in (root / pkg).rglob("*.py")}
    edges: dict[str, set[str]] = {n: set() for n in names}
    for i in imports:
        source = module_name(i.path)
        subs = [f"{i.module}.{n}" for n in i.names if f"{i.module}.{n}" in names]  # from pkg import mod
        for target in subs or [i.module]:
            while target and target not in names:  # `from pkg.mod import name`: the module
                target = target.rpartition(".")[0]
            if target and target != source and not source.startswith(target + "."):  # a package's own __init__
                edges[source].add(target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while not group or group[-1] != v:
                group.append(stack.pop())
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(names):
        if v not in index:
            visit(v)
    return found


def graph(imports: list[Import]) -> dict[str, dict[str, int]]:
    """{package: {package it imports: number of import statements}}, self-imports left out."""
    out = {pkg: {} for pkg in PACKAGES}
    for i in imports:
        if i.target != i.source:
            out[i.source][i.target] = out[i.source].get(i.target, 0) + 1
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m scripts.check_imports", description=__doc__.splitlines()[0])
    ap.add_argument("root", nargs="?", default=str(ROOT), help="the repository root (default: this checkout)")
    root = ap.parse_args(argv).root
    imports = find_imports(root)
    print("package import graph (import statements per pair):")
    for pkg, targets in graph(imports).items():
        counts = ", ".join(f"{t} ({n})" for t, n in sorted(targets.items()))
        print(f"  {pkg:<10} -> " + (counts or "nothing outside itself"))
    bad, loops = violations(imports), circles(imports, root)
    print("\n".join(map(str, bad)) + f"\n{len(bad)} import(s) against the allowed direction" if bad
          else "ok: imports go one way")
    for group in loops:
        print("circle: " + " -> ".join(group))
    return 1 if bad or loops else 0


if __name__ == "__main__":
    sys.exit(main())
