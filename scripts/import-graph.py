#!/usr/bin/env python3
"""Prints the crate's module import graph (`use crate::x` and `crate::x::` paths in code, not in
comments) and fails if it has a cycle. Run from the repository root: scripts/import-graph.py"""
import pathlib, re, sys

mods = {}
for path in sorted(pathlib.Path("src").rglob("*.rs")):
    if path.name in ("lib.rs", "main.rs"):
        continue
    name = path.parent.name if path.name == "mod.rs" else path.stem
    if path.parent.name == "store" and path.name != "mod.rs":
        name = "store"  # the store's files are one module from outside
    code = "\n".join(l for l in path.read_text().splitlines() if not l.strip().startswith("//"))
    code = code.split("#[cfg(test)]")[0]
    deps = set(re.findall(r"crate::([a-z_]+)", code))
    for group in re.findall(r"crate::\{([^}]*)\}", code):
        deps |= {g.strip().split("::")[0] for g in group.split(",") if g.strip()} | set(re.findall(r"use super::([a-z_]+)", code) if name != "store" else [])
    mods.setdefault(name, set()).update(d for d in deps if d != name)

for m in sorted(mods):
    print(f"{m:12} -> {' '.join(sorted(mods[m]))}")

state = {}
def visit(m, stack):
    state[m] = "open"
    for d in mods.get(m, ()):
        if state.get(d) == "open":
            sys.exit(f"cycle: {' -> '.join(stack + [m, d])}")
        if d not in state:
            visit(d, stack + [m])
    state[m] = "done"
for m in mods:
    if m not in state:
        visit(m, [])
print("no cycle")
