"""broker.mapping has no import cycles: the direction subpackages sit on the shared machinery."""

from __future__ import annotations

import ast
from pathlib import Path

import broker.mapping

PACKAGE = Path(broker.mapping.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _graph() -> dict[str, set[str]]:
    """Module → the broker.mapping modules it imports, anywhere in it (functions included)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [
                    f"{node.module}.{alias.name}"
                    if f"{node.module}.{alias.name}" in modules
                    else node.module
                    for alias in node.names
                ]
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as the modules along it, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)) is not None:
            return found
    return None


def test_no_import_cycle_inside_broker_mapping() -> None:
    """No module of broker.mapping imports, even lazily, a module that imports it back."""
    cycle = _cycle(_graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_the_directions_do_not_import_each_other() -> None:
    """hl7v2_in, fhir_in and hl7v2_out are peers: none imports another or the MappingSet."""
    directions = ("hl7v2_in", "fhir_in", "hl7v2_out")
    above = {"broker.mapping", "broker.mapping.loader", "broker.mapping.message"}
    for module, imported in _graph().items():
        own = next((d for d in directions if f".mapping.{d}" in module), None)
        if own is None:
            continue
        for target in imported:
            other = next((d for d in directions if f".mapping.{d}" in target), None)
            assert other in (None, own), f"{module} imports {target}"
            assert target not in above, f"{module} imports {target}"


def test_the_cycle_check_finds_a_cycle() -> None:
    """The check itself can fail: a hand-made cycle is reported."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
