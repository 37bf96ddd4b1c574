"""The tools read as source: every result file goes through the atomic writer, and the flags the
tools share are defined once, in ``tools/_cli.py``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[1] / "tools"
SOURCES = sorted([*TOOLS.glob("*.py"), *TOOLS.glob("studies/*.py")])

#: Writes that are no result file, by (file, enclosing function), with the reason.
NOT_RESULTS = {
    ("bench_image_check.py", "drop_page_cache"): "a kernel control file",
    # The GPU check runs before the library is known to import on a fresh machine, so its
    # results go through its own temp-and-rename writer (write_atomic, tested); these two are the
    # log it appends to and the output streams of the step it is running.
    ("gpu_check.py", "__init__"): "the log file, started empty",
    ("gpu_check.py", "run"): "a running step's output streams and the log appended after it",
    ("bench_quality.py", "claim"): "an empty lock file opened to hold a job by flock",
}
#: Flags with one definition in _cli.py (``--model``, ``--batch-size`` mean different things in
#: different tools and stay theirs where they do).
SHARED_FLAGS = {
    "--out", "--threads", "--smoke", "--seeds", "--seed", "--shard", "--report-only", "--recipe"
}  # fmt: skip

_WRITE_MODE = set("wax+")
#: ``module.function`` calls that write to a file: the position and keyword of the file.
_DUMPERS = {
    ("torch", "save"): (1, "f"),
    ("json", "dump"): (1, "fp"),
    ("pickle", "dump"): (1, "file"),
    ("np", "save"): (0, "file"),
}


def direct_writes(source: str) -> list[tuple[int, str, str]]:
    """``(line, call, enclosing function)`` of every call in ``source`` that writes a file other
    than through a callback of the atomic writer: ``open(..., "w")`` and ``Path.open("w")`` (any
    writing mode), ``.write_text``, ``.write_bytes``, and ``.savefig``, ``torch.save``,
    ``json.dump`` whose file is not the parameter of an enclosing lambda (``atomic_write(path,
    lambda f: fig.savefig(f, ...))``)."""
    found: list[tuple[int, str, str]] = []

    def visit(node: ast.AST, function: str, params: frozenset[str]) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            function = node.name
        if isinstance(node, ast.Lambda):
            params = params | {a.arg for a in node.args.args}
        if isinstance(node, ast.Call):
            what = _write_call(node, params)
            if what:
                found.append((node.lineno, what, function))
        for child in ast.iter_child_nodes(node):
            visit(child, function, params)

    visit(ast.parse(source), "<module>", frozenset())
    return found


def _write_call(call: ast.Call, params: frozenset[str]) -> str | None:
    func = call.func

    def arg(position: int, keyword: str) -> ast.expr | None:
        for kw in call.keywords:
            if kw.arg == keyword:
                return kw.value
        return call.args[position] if len(call.args) > position else None

    def writes(mode: ast.expr | None) -> bool:
        if mode is None:
            return False
        if isinstance(mode, ast.Constant) and isinstance(mode.value, str):
            return bool(_WRITE_MODE & set(mode.value))
        return True  # a mode worked out at run time: cannot be shown to read only

    def to_callback(target: ast.expr | None) -> bool:
        return isinstance(target, ast.Name) and target.id in params

    if isinstance(func, ast.Name) and func.id == "open":
        return "open(..., write mode)" if writes(arg(1, "mode")) else None
    if not isinstance(func, ast.Attribute):
        return None
    if func.attr == "open":
        return ".open(write mode)" if writes(arg(0, "mode")) else None
    if func.attr in ("write_text", "write_bytes"):
        return f".{func.attr}()"
    if func.attr == "savefig":
        return None if to_callback(arg(0, "fname")) else ".savefig(path)"
    if isinstance(func.value, ast.Name) and (func.value.id, func.attr) in _DUMPERS:
        position, keyword = _DUMPERS[func.value.id, func.attr]
        name = f"{func.value.id}.{func.attr}"
        return None if to_callback(arg(position, keyword)) else f"{name}(..., path)"
    return None


def test_the_scan_finds_every_kind_of_direct_write_and_passes_the_atomic_ones():
    source = """
def report(path, fig, obj, mode):
    open(path, "w").write("x")
    open(path, mode=mode)
    path.open("a")
    path.write_text("x")
    path.write_bytes(b"x")
    fig.savefig(path, dpi=100)
    torch.save(obj, path)
    json.dump(obj, open(path, "x"))
    atomic_write(path, lambda f: fig.savefig(f, format="png"))
    atomic_write(path, lambda f: torch.save(obj, f))
    atomic_write(path, lambda f: json.dump(obj, f))
    open(path).read()
    open(path, "rb").read()
    path.open().read()
"""
    found = direct_writes(source)
    assert [line for line, _, _ in found] == [3, 4, 5, 6, 7, 8, 9, 10, 10]
    assert {f for _, _, f in found} == {"report"}
    assert [what for _, what, _ in found][-2:] == ["json.dump(..., path)", "open(..., write mode)"]


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(TOOLS)))
def test_every_result_file_is_written_atomically(path):
    name = str(path.relative_to(TOOLS))
    bad = [
        f"tools/{name}:{line}: {what} in {function}() writes a file directly; use "
        "_bench_common.write_json / write_file / save_png (taylorprune._io underneath)"
        for line, what, function in direct_writes(path.read_text(encoding="utf-8"))
        if (name, function) not in NOT_RESULTS
    ]
    assert not bad, "\n".join(bad)


def test_the_exempt_writes_still_exist():
    """An exemption whose write went away is stale, and would excuse a new one."""
    for (name, function), _reason in NOT_RESULTS.items():
        found = direct_writes((TOOLS / name).read_text(encoding="utf-8"))
        assert any(f == function for _, _, f in found), (name, function)


def test_shared_flags_are_defined_only_in_cli():
    assert len(SOURCES) > 15
    bad = []
    for path in SOURCES:
        if path.name == "_cli.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "add_argument"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and node.args[0].value in SHARED_FLAGS
            ):
                bad.append(f"tools/{path.relative_to(TOOLS)}:{node.lineno}: {node.args[0].value}")
    assert not bad, "define these with tools/_cli.py:\n" + "\n".join(bad)
