"""The package as a whole: its public names, what importing it loads, and no import cycle."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import taylorprune

PACKAGE = Path(taylorprune.__file__).parent

PUBLIC = {
    "CRITERIA",
    "ChannelGraph",
    "Criterion",
    "StructuredPruner",
    "Target",
    "UserError",
    "__version__",
    "channel_scores",
    "count",
    "load_pruned",
    "prune",
    "run",
    "save_pruned",
}


def test_public_names_resolve_to_the_primitives():
    from taylorprune.graph import ChannelGraph
    from taylorprune.importance.criteria import CRITERIA, Criterion
    from taylorprune.runner import run
    from taylorprune.serialization import load_pruned, save_pruned

    assert set(taylorprune.__all__) == PUBLIC
    assert taylorprune.ChannelGraph is ChannelGraph
    assert taylorprune.Criterion is Criterion and taylorprune.CRITERIA is CRITERIA
    assert taylorprune.save_pruned is save_pruned and taylorprune.load_pruned is load_pruned
    assert taylorprune.run is run
    assert set(dir(taylorprune)) >= PUBLIC
    for internal in ("write_report", "format_summary", "layer_table", "DataBundle", "build_model"):
        assert not hasattr(taylorprune, internal), internal


def test_importing_the_package_loads_no_plotting_no_pipeline_and_no_study_code():
    """Nor does counting and timing a model (``taylorprune measure``) load torch-pruning and what
    it imports (timm, torchvision): one process checks both, in that order."""
    modules = ("matplotlib", "scipy", "studies", "taylorprune.runner", "taylorprune.report")
    graph = ("torch_pruning", "timm", "torchvision")
    code = (
        "import json, sys, taylorprune; "
        f"print(json.dumps([m in sys.modules for m in {modules!r}])); "
        "import taylorprune.measure, taylorprune.commands.measure; "
        f"print(json.dumps([m in sys.modules for m in {graph!r}]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    package, measure = (json.loads(line) for line in out.stdout.strip().splitlines()[-2:])
    assert dict(zip(modules, package, strict=True)) == dict.fromkeys(modules, False)
    assert dict(zip(graph, measure, strict=True)) == dict.fromkeys(graph, False)


def test_the_library_never_imports_the_tools_or_their_studies():
    """``tools/`` (its ``studies`` package, ``_bench_common``, ``_cli``) is a client of the library,
    never the other way round."""
    tools = {
        p.stem for p in (PACKAGE.parent / "tools").iterdir() if p.suffix == ".py" or p.is_dir()
    }
    assert {"studies", "_bench_common", "_cli"} <= tools
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            else:
                continue
            found += [
                f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {name}"
                for name in names
                if name.split(".")[0] in tools | {"tools"}
            ]
    assert found == []


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Module -> package modules it imports anywhere in its source (function-level imports too,
    so a cycle cannot hide behind a deferred import)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets = [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            edges |= {known(t) for t in targets if t.startswith("taylorprune")}
        graph[name] = {e for e in edges if e and e != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path of module names, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_between_package_modules():
    graph = _import_graph()
    assert "taylorprune.models.sources" in graph and "taylorprune.serialization" in graph
    assert "taylorprune.models" in graph["taylorprune.serialization"]
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])
