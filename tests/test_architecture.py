"""The house rules that a reader should not have to check by hand: dependencies point one
way (lab -> agent -> protocol), libvirt stays in the hypervisor room, protocol/ does no I/O,
and no module imports itself back through others."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("protocol", "agent", "lab", "bench")


def modules() -> Iterator[tuple[str, Path]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join(parts), path


def imports(name: str, path: Path) -> set[str]:
    """Every module ``name`` imports, at any level of the file (type-checking ones too)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            # "from package import module" imports that module
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


GRAPH = {name: imports(name, path) for name, path in modules()}


def internal(name: str) -> set[str]:
    return {m for m in GRAPH[name] if m in GRAPH and m != name}


def test_dependencies_point_one_way() -> None:
    order = {"protocol": 0, "agent": 1, "lab": 2, "bench": 2}
    wrong = [
        (name, m)
        for name in GRAPH
        for m in internal(name)
        if order[m.split(".")[0]] > order[name.split(".")[0]]
    ]
    assert not wrong, wrong


def test_libvirt_is_imported_only_in_the_hypervisor_room() -> None:
    users = {
        name
        for name in GRAPH
        if name.startswith(("agent.", "protocol.")) and "libvirt" in GRAPH[name]
    }
    assert users and all(name.startswith("agent.hypervisor.") for name in users), users


def test_protocol_does_no_io() -> None:
    banned = {"trio", "socket", "libvirt", "asyncio", "subprocess"}
    offenders = {n: GRAPH[n] & banned for n in GRAPH if n.startswith("protocol")}
    assert not any(offenders.values()), offenders


def test_no_module_imports_itself_back() -> None:
    """In protocol/ and agent/ (lab/ keeps two type-only or __main__-only ones for now)."""
    # Depth-first search for a cycle through package-internal imports.
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in sorted(internal(name)):
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep) :], dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state and name.startswith(("protocol", "agent")):
            visit(name, [name])
    assert not cycles, cycles
