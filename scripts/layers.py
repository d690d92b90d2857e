#!/usr/bin/env python3
"""Which module of the library imports which: one line per module of src/, naming the
crate modules its code (tests left out) uses, and flagging an import that points up
from the store layer.

    python3 scripts/layers.py            # the working tree
    python3 scripts/layers.py 781b162    # any commit, read from git
"""
import re
import subprocess
import sys

# The store layer may use only these modules from outside it.
STORE_MAY_USE = {"error", "clock", "hash"}


def files(rev):
    if rev is None:
        out = subprocess.run(["git", "ls-files", "src"], capture_output=True, text=True, check=True)
        names = [n for n in out.stdout.split() if n.endswith(".rs")]
        return {n: open(n, encoding="utf-8").read() for n in names}
    out = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, "src"],
                         capture_output=True, text=True, check=True)
    names = [n for n in out.stdout.split() if n.endswith(".rs")]
    return {n: subprocess.run(["git", "show", f"{rev}:{n}"], capture_output=True, text=True,
                              check=True).stdout for n in names}


def module(path):
    m = path[len("src/"):-len(".rs")]
    return m[: -len("/mod")] if m.endswith("/mod") else m


def imports(path, text):
    """The crate modules `text` uses outside its tests, as slash paths (store/due)."""
    text = text.split("#[cfg(test)]")[0]
    text = re.sub(r"//[^\n]*", "", text)
    used = set()
    # `crate::a::b`, and `crate::{a, b::c}` groups (one level of braces is enough here).
    for group in re.findall(r"crate::\{([^}]*)\}", text):
        for part in group.split(","):
            name = re.match(r"\s*(\w+)(?:::(\w+))?", part)
            if name:
                used.add(name.group(1) if name.group(1) != "store" or not name.group(2)
                         else f"store/{name.group(2)}")
    for first, second in re.findall(r"crate::(\w+)(?:::(\w+))?", text):
        used.add(f"store/{second}" if first == "store" and second and second[0].islower() else first)
    here = module(path)
    parent = here.rsplit("/", 1)[0] if "/" in here else None
    for second in re.findall(r"\bsuper::(\w+|\{)", text):
        if parent:
            used.add(f"{parent}/{second}" if second[0].islower() else parent)
    return {u for u in used if u not in (here, "self")}


def main():
    rev = sys.argv[1] if len(sys.argv) > 1 else None
    sources = files(rev)
    known = {module(p) for p in sources}
    upward = 0
    for path in sorted(sources):
        here = module(path)
        used = sorted(u for u in imports(path, sources[path]) if u in known or u.split("/")[0] in known)
        flags = []
        if here.startswith("store"):
            up = [u for u in used if not u.startswith("store") and u not in STORE_MAY_USE]
            if up:
                flags.append("  <- imports from above the store: " + ", ".join(up))
                upward += len(up)
        print(f"{here:20} -> {' '.join(used) or '-'}{''.join(flags)}")
    print(f"\n{upward} import(s) from above the store layer")


if __name__ == "__main__":
    main()
