"""Check that imports between the kit's packages go one way; print the package import graph.

    python -m scripts.check_imports [ROOT]

Allowed: data_prep, eval and scripts import minimodel; scripts imports data_prep and eval.
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


class Import(NamedTuple):
    path: Path      # the importing file, relative to the root
    line: int
    source: str     # the importing file's package
    module: str     # the imported module, as an absolute dotted name

    @property
    def target(self) -> str:
        return self.module.split(".")[0]

    def __str__(self) -> str:
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
                found += [Import(rel, node.lineno, pkg, m) for m in _modules(node, list(rel.parent.parts))
                          if m.split(".")[0] in PACKAGES]
    return sorted(found, key=lambda i: (str(i.path), i.line))


def violations(imports: list[Import]) -> list[Import]:
    return [i for i in imports if i.target in FORBIDDEN[i.source]]


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
    imports = find_imports(ap.parse_args(argv).root)
    print("package import graph (import statements per pair):")
    for pkg, targets in graph(imports).items():
        print(f"  {pkg:<10} -> " + (", ".join(f"{t} ({n})" for t, n in sorted(targets.items())) or "nothing outside itself"))
    bad = violations(imports)
    print("\n".join(map(str, bad)) + f"\n{len(bad)} import(s) against the allowed direction" if bad
          else "ok: imports go one way")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
