#!/usr/bin/env python3
"""Which top-level modules of a crate use which (`crate::x` paths and
`use crate::{x, y::z}` groups; `super::` stays inside a module, so it is not
an edge), and the cycles among them.

    scripts/module_graph.py crates/strom-broker/src

Prints one line per module with the modules it uses, then every cycle
(strongly connected group of more than one module), or "no cycles".
Only the standard library.
"""

import re
import sys
from pathlib import Path


def top_module(src: Path, file: Path) -> str:
    rel = file.relative_to(src).with_suffix("")
    parts = rel.parts
    if parts[0] in ("lib", "main"):
        return "(root)"
    return parts[0]


MODULES: set = set()


def uses(src: Path, file: Path, text: str) -> set:
    me = top_module(src, file)
    found = set()
    # Code only: drop line comments (doc links name modules without using them).
    code = "\n".join(line.split("//", 1)[0] for line in text.splitlines())
    for m in re.finditer(r"\bcrate::([a-z_][a-z0-9_]*)", code):
        found.add(m.group(1))
    # `use crate::{a, b::c}` groups.
    for m in re.finditer(r"\bcrate::\{([^}]*)\}", code):
        for item in m.group(1).split(","):
            name = item.strip().split("::")[0].strip()
            if re.fullmatch(r"[a-z_][a-z0-9_]*", name):
                found.add(name)
    return {m for m in found if m in MODULES and m != me}


def main() -> None:
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "crates/strom-broker/src")
    MODULES.update({p.stem if p.is_file() else p.name for p in src.iterdir()} - {"lib", "main"})
    graph = {}
    for file in sorted(src.rglob("*.rs")):
        me = top_module(src, file)
        if me == "(root)":
            continue
        graph.setdefault(me, set()).update(uses(src, file, file.read_text()))
    for module in sorted(graph):
        print(f"{module:<14} -> {', '.join(sorted(graph[module])) or '-'}")
    # Tarjan's strongly connected components.
    index, low, on_stack, stack, sccs, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                sccs.append(sorted(scc))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    print()
    if sccs:
        for scc in sccs:
            print("cycle:", " <-> ".join(scc))
        sys.exit(1)
    print("no cycles")


if __name__ == "__main__":
    main()
