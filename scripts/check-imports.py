#!/usr/bin/env python3
"""Checks that the modules of each crate of the workspace form a tree of imports: no module uses a
module that (directly or not) uses it back. A module may use its ancestors (`super::`, the crate
root) and its descendants: those edges follow the tree. Any other edge goes between branches, and
those edges must not make a cycle.

Also checks that the engine (`pipeline/engine`) depends on no service crate, and that no library
source file is longer than 600 lines.

Usage: python3 scripts/check-imports.py [--print]   (exit 1 on a violation)
"""

import os
import re
import sys
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_LINES = 600
SERVICES = {"dev-materiels", "wagon-lits"}


def crates():
    with open(os.path.join(ROOT, "Cargo.toml"), "rb") as f:
        members = tomllib.load(f)["workspace"]["members"]
    for member in members:
        with open(os.path.join(ROOT, member, "Cargo.toml"), "rb") as f:
            manifest = tomllib.load(f)
        yield member, manifest


def modules(src):
    """Module path (tuple) -> file, for every .rs file under src/ reachable as a module."""
    out = {}
    for dirpath, _, files in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        parts = () if rel == "." else tuple(rel.split(os.sep))
        if parts and parts[0] in ("bin",):
            continue
        for name in files:
            if not name.endswith(".rs"):
                continue
            stem = name[:-3]
            if stem in ("lib", "main") and not parts:
                path = ()
            elif stem == "mod":
                path = parts
            else:
                path = parts + (stem,)
            out[path] = os.path.join(dirpath, name)
    return out


PATH = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
USE_GROUP = re.compile(r"\buse\s+(crate|super|self)::\{([^;]*)\};", re.S)


def strip_comments(text):
    text = re.sub(r"//[^\n]*", "", text)
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


def references(path, text, known):
    """The modules of the crate a file refers to."""
    text = strip_comments(text)
    found = set()

    def resolve(anchor, segments):
        if anchor == "crate":
            base = ()
        elif anchor == "self":
            base = path
        else:
            base = path[:-1]
            while segments and segments[0] == "super":
                base = base[:-1]
                segments = segments[1:]
        candidate = base
        for seg in segments:
            if candidate + (seg,) in known:
                candidate = candidate + (seg,)
            else:
                break
        found.add(candidate)

    for anchor, rest in PATH.findall(text):
        resolve(anchor, [s for s in rest.split("::") if s])
    for anchor, group in USE_GROUP.findall(text):
        for item in re.split(r"[,{}]", group):
            item = item.strip()
            if item:
                resolve(anchor, [s for s in item.split("::") if s and s != "self"])
    return found


def related(a, b):
    return a[: len(b)] == b or b[: len(a)] == a


def cycles(graph):
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def name(path):
    return "::".join(path) if path else "(root)"


def main():
    show = "--print" in sys.argv
    failures = []
    for member, manifest in crates():
        package = manifest["package"]["name"]
        deps = set(manifest.get("dependencies", {}))
        if member == "pipeline/engine" and deps & SERVICES:
            failures.append(f"{member}: the engine depends on a service: {sorted(deps & SERVICES)}")
        src = os.path.join(ROOT, member, "src")
        known = modules(src)
        graph = {}
        for path, file in known.items():
            with open(file, encoding="utf-8") as f:
                text = f.read()
            lines = text.count("\n")
            if lines > MAX_LINES:
                failures.append(f"{os.path.relpath(file, ROOT)}: {lines} lines (at most {MAX_LINES})")
            for target in references(path, text, known):
                if target != path and not related(path, target):
                    graph.setdefault(path, set()).add(target)
        if show:
            print(f"{package}:")
            for source in sorted(graph):
                print(f"  {name(source)} -> {', '.join(name(t) for t in sorted(graph[source]))}")
        for component in cycles(graph):
            failures.append(f"{package}: import cycle between {', '.join(name(p) for p in component)}")
    for failure in failures:
        print(f"check-imports: {failure}", file=sys.stderr)
    if not failures:
        print("check-imports: every crate's modules form a tree of imports; no library file over "
              f"{MAX_LINES} lines; the engine depends on no service")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
