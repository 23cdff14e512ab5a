"""The command line's layout (issue 12): one module per area under mamview/cli, each registering
its own commands through an explicit `register` call, and no module loaded by name."""

from __future__ import annotations

import argparse
import ast
from pathlib import Path

import mamview.cli
from mamview.cli import build_parser

CLI_DIR = Path(mamview.cli.__file__).parent

# every command, with the area module whose function runs it
COMMANDS = {
    "import": "library", "demo-data": "library", "patients": "library", "exams": "library",
    "problems": "library", "check": "library", "models": "models", "score": "analytics",
    "trajectory": "analytics", "cohort": "analytics", "sr": "analytics", "listen": "net",
    "echo": "net", "fetch-priors": "net", "gui": "gui", "demo": "gui",
}
BENCHMARKS = ("import", "infer", "net", "gui", "score", "cohort")


def _choices(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (group,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return group.choices


def _minimal_args(name: str) -> list[str]:
    """Enough arguments for `name` to parse (its required ones, with dummy values)."""
    return {"import": ["X"], "demo-data": ["--out", "X"], "models": ["list"],
            "cohort": ["--outcomes", "X"], "sr": ["X", "--out", "Y"], "echo": ["A@h:1"],
            "fetch-priors": ["P", "--pacs", "A@h:1"]}.get(name, [])


def test_every_area_registers_its_commands():
    p = build_parser()
    commands = _choices(p)
    assert set(commands) == set(COMMANDS) | {"bench"}
    for name, area in COMMANDS.items():
        func = p.parse_args([name, *_minimal_args(name)]).func
        assert func.__module__ == f"mamview.cli.{area}", (name, func.__module__)
    assert set(_choices(commands["bench"])) == set(BENCHMARKS)
    for what in BENCHMARKS:
        args = p.parse_args(["bench", what])
        assert args.bench == what and args.func.__module__ == "mamview.cli.bench"
        assert args.func.__name__ == f"cmd_bench_{what}"


def test_debug_is_accepted_after_any_command():
    p = build_parser()
    assert p.parse_args(["patients", "--debug"]).debug is True
    assert p.parse_args(["bench", "import", "--debug"]).debug is True


def _imported_names(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module or "")
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "__import__":
            names.add("__import__")
    return names


def test_no_cli_module_loads_modules_by_name():
    modules = sorted(CLI_DIR.glob("*.py"))
    assert {m.stem for m in modules} >= {"__init__", "common", "errors", "library", "models",
                                         "analytics", "net", "gui", "bench"}
    for path in modules:
        names = _imported_names(ast.parse(path.read_text(), str(path)))
        assert not names & {"importlib", "__import__"}, f"{path.name} loads modules by name"
        assert not any(n.startswith("importlib.") for n in names), path.name


def test_every_benchmark_module_has_the_same_shape():
    # source-level, so the test needs neither torch nor Qt: measure() and rows(fig)
    bench_dir = CLI_DIR.parent / "bench"
    for name in ("imports", "infer", "net", "gui", "score", "cohort"):
        tree = ast.parse((bench_dir / f"{name}.py").read_text())
        functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert {"measure", "rows"} <= functions.keys(), name
        assert [a.arg for a in functions["rows"].args.args] == ["fig"], name
