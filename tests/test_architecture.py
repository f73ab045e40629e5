"""Architecture rules on the package's import graph (built by grimp): no import cycles, and the
layer contract of ``pyproject.toml`` (import-linter): each layer imports only from those below."""

from __future__ import annotations

import subprocess
import sys
from collections import deque
from collections.abc import Mapping, Set
from pathlib import Path

import grimp

PACKAGE = "transfuse"


def import_graph(package: str = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package modules it imports anywhere in its file (function-local imports
    count; ``if TYPE_CHECKING:`` ones do not, nor its own ancestor packages, which Python has
    initialised before the module runs)."""
    graph = grimp.build_graph(package, exclude_type_checking_imports=True, cache_dir=None)
    return {m: {t for t in graph.find_modules_directly_imported_by(m) if not m.startswith(t + ".")}
            for m in graph.modules}


def shortest_cycle(graph: Mapping[str, Set[str]], start: str) -> list[str] | None:
    """The shortest import path from ``start`` back to itself (``[start, ..., start]``), or None."""
    parent: dict[str, str] = {}
    queue = deque([start])
    while queue:
        m = queue.popleft()
        for t in sorted(graph.get(m, ())):
            if t == start:
                path = [m]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [*reversed(path), start]
            if t not in parent:
                parent[t] = m
                queue.append(t)
    return None


def find_cycles(graph: Mapping[str, Set[str]]) -> list[str]:
    """The shortest cycle through each module that is on one, as ``a -> b -> a`` (each cycle once,
    written from its alphabetically first module)."""
    found = set()
    for m in graph:
        cycle = shortest_cycle(graph, m)
        if cycle:
            ring = cycle[:-1]
            i = ring.index(min(ring))
            ring = ring[i:] + ring[:i]
            found.add(" -> ".join([*ring, ring[0]]))
    return sorted(found)


def test_find_cycles_reports_each_cycle_once() -> None:
    graph = {"a": {"b"}, "b": {"a", "c"}, "c": {"d"}, "d": {"e"}, "e": {"c"}, "f": {"a"}, "g": set()}
    assert find_cycles(graph) == ["a -> b -> a", "c -> d -> e -> c"]
    assert find_cycles({"a": {"b"}, "b": {"c"}}) == []


def test_the_package_has_no_import_cycles() -> None:
    graph = import_graph()
    assert "transfuse.fuse.merge.engine" in graph  # the graph covers the whole package
    cycles = find_cycles(graph)
    assert not cycles, f"{len(cycles)} import cycle(s):\n" + "\n".join(cycles)


def test_layers_contract_is_kept() -> None:
    """``lint-imports`` with the contract in pyproject.toml (arrows point down, see docs/decisions.md)."""
    root = Path(__file__).resolve().parents[1]
    exe = Path(sys.executable).with_name("lint-imports")
    p = subprocess.run([str(exe), "--config", str(root / "pyproject.toml"), "--no-cache"], cwd=root,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "1 kept, 0 broken" in p.stdout, p.stdout[-3000:] + p.stderr[-2000:]


def test_layers_contract_catches_an_upward_import(tmp_path: Path) -> None:
    """The contract is live: a config whose layers are upside down is reported broken."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    cfg = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["importlinter"]
    contract = dict(cfg["contracts"][0], layers=list(reversed(cfg["contracts"][0]["layers"])))
    lines = ["[importlinter]", f"root_package = {cfg['root_package']}", "", "[importlinter:contract:1]",
             f"name = {contract['name']}", "type = layers", "containers = transfuse", "layers ="]
    lines += [f"    {layer}" for layer in contract["layers"]]
    (tmp_path / ".importlinter").write_text("\n".join(lines) + "\n")
    exe = Path(sys.executable).with_name("lint-imports")
    p = subprocess.run([str(exe), "--config", str(tmp_path / ".importlinter"), "--no-cache"], cwd=root,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode != 0 and "BROKEN" in p.stdout
