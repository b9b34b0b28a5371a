#!/usr/bin/env python3
"""The crate's top-level module graph: which module imports which (`crate::x` paths outside
comments and unit tests), the cycles among them (strongly connected components) and an order
with leaves first. ARCHITECTURE.md ("Module structure") records the order it should print.

    python3 scripts/module-graph.py [src]        exit code 1 if there is a cycle
"""
import collections
import os
import re
import sys

root = sys.argv[1] if len(sys.argv) > 1 else "src"
edges = collections.defaultdict(set)
where = collections.defaultdict(set)
for d, _, files in os.walk(root):
    for f in files:
        if not f.endswith(".rs") or f == "tests.rs":
            continue
        path = os.path.join(d, f)
        rel = os.path.relpath(path, root)
        top = rel.split("/")[0].removesuffix(".rs")
        if top in ("main", "lib"):
            continue
        text = open(path, encoding="utf-8").read()
        cut = text.find("#[cfg(test)]\nmod tests {")
        if cut >= 0:
            text = text[:cut]
        text = re.sub(r"//.*", "", text)
        names = re.findall(r"crate::([a-z_]+)", text)
        for group in re.findall(r"crate::\{([^}]*)\}", text):
            names += re.findall(r"(?:^|,)\s*([a-z_]+)", group)
        for n in names:
            if n != top:
                edges[top].add(n)
                where[(top, n)].add(rel)

mods = sorted(set(edges) | {n for v in edges.values() for n in v})
index, low, stack, on, sccs = {}, {}, [], set(), []


def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in sorted(edges[v]):
        if w not in index:
            visit(w)
            low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop()
            on.discard(w)
            comp.append(w)
            if w == v:
                break
        sccs.append(sorted(comp))


for m in mods:
    if m not in index:
        visit(m)
for m in mods:
    print(f"{m:10} -> {', '.join(sorted(edges[m]))}")
cycles = [c for c in sccs if len(c) > 1]
print("order, leaves first:", " ".join(c[0] if len(c) == 1 else "{" + " ".join(c) + "}" for c in sccs))
for c in cycles:
    print("cycle:", " ".join(c))
    for a in c:
        for b in sorted(edges[a] & set(c)):
            print(f"  {a} -> {b}: {', '.join(sorted(where[(a, b)]))}")
sys.exit(1 if cycles else 0)
