"""The code's shape, pinned: no import cycle among the service's modules, no module over 400 lines, and the Lua
field lists that Python reads by position agree with the Python that reads them."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("worker", "actors", "config", "simulator")

#: The longest module a reader should meet (the issue that shaped this layout set it).
MAX_MODULE_LINES = 400


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Modules of ours `path` imports at module level or in functions (TYPE_CHECKING-only imports excluded)."""
    tree = ast.parse(path.read_text())
    type_checking: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_checking |= {id(n) for n in ast.walk(node)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in type_checking:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import submodule` depends on the submodule; `from pkg import name` on the package.
            names = [
                f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                for alias in node.names
            ]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def test_the_import_graph_of_the_service_has_no_cycle() -> None:
    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    # A package's __init__ is imported before any of its modules: an edge from it is an edge from every child.
    visiting: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        if name in done:
            return
        if name in visiting:
            cycle = [*visiting[visiting.index(name) :], name]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        visiting.append(name)
        for target in sorted(graph.get(name, ())):
            visit(target)
        visiting.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)


@pytest.mark.parametrize("name", sorted(_modules()))
def test_no_module_is_over_400_lines(name: str) -> None:
    lines = len(_modules()[name].read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{name} has {lines} lines"


def test_the_claim_fields_python_reads_are_the_ones_the_lua_returns() -> None:
    from worker.store.records import CLAIM_FIELDS

    lua = (ROOT / "worker/store/scripts/_claim.lua").read_text()
    (hmget,) = re.findall(r"local out = redis\.call\('HMGET', job_key, (.*?)\)\n", lua, re.S)
    assert tuple(re.findall(r"'(\w+)'", hmget)) == CLAIM_FIELDS


def test_the_result_fields_are_the_ones_finish_lua_publishes() -> None:
    from worker.store.jobs import RESULT_FIELDS

    lua = (ROOT / "worker/store/scripts/finish.lua").read_text()
    (xadd,) = re.findall(r"redis\.call\('XADD', results_stream, .*?'\*',(.*?)\)\n", lua, re.S)
    assert tuple(re.findall(r"'(\w+)', ", xadd)) == RESULT_FIELDS


SCRIPTS = ROOT / "worker/store/scripts"


@pytest.mark.parametrize("name", sorted(p.stem for p in SCRIPTS.glob("[!_]*.lua")))
def test_every_script_includes_what_it_uses_in_plain_sight(name: str) -> None:
    text = (SCRIPTS / f"{name}.lua").read_text()
    body = "\n".join(line for line in text.splitlines() if not line.startswith("--"))
    includes = set(re.findall(r"^-- #include (\S+)$", text, re.M))
    assert all((SCRIPTS / include).exists() for include in includes), includes
    if re.search(r"\b(now|due_score|hash_fields|iso)\b", body):
        assert "_now.lua" in includes, f"{name}.lua uses the clock or a shared helper without `-- #include _now.lua`"
    if re.search(r"\bclaim\(", body):
        assert "_claim.lua" in includes, f"{name}.lua calls claim() without `-- #include _claim.lua`"
    from worker.store import scripts

    assert "-- #include" not in scripts.source(name)  # the loader put every included file in place
