"""The package's layers point one way (STYLE 13): every import of every module, at module level and
inside functions, goes to the module's own layer or a lower one, and no two modules import each
other (directly or through others). ``sbn_bench/__init__.py`` is the facade that re-exports the
public names; it is imported by users, never by the package's own modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "sbn_bench"

LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("sbn_bench.version", "sbn_bench.errors", "sbn_bench.fileio", "sbn_bench.units",
              "sbn_bench.provenance", "sbn_bench.malloc", "sbn_bench._quiet_sigint")),
    ("model", ("sbn_bench.model", "sbn_bench.network", "sbn_bench.data", "sbn_bench.problems")),
    ("reference", ("sbn_bench.reference",)),
    ("estimators", ("sbn_bench.estimators",)),
    ("metrics", ("sbn_bench.metrics", "sbn_bench.schema")),
    ("runner", ("sbn_bench.sweep", "sbn_bench.config", "sbn_bench.storage", "sbn_bench.throughput",
                "sbn_bench.runner")),
    ("reports", ("sbn_bench.reports",)),
    ("experiments", ("sbn_bench.paper", "sbn_bench.train", "sbn_bench.train_study",
                     "sbn_bench.train_report")),
    ("cli", ("sbn_bench.cli",)),
]
"""The layers, lowest first, and the modules (or packages) in each."""


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    for i, (_, members) in enumerate(LAYERS):
        if any(module == m or module.startswith(m + ".") for m in members):
            return i
    raise KeyError(module)


def imports_of(module: str) -> list[tuple[int, str]]:
    """``(line, imported sbn_bench module)`` for every import in ``module``, at any depth: ``from
    pkg import name`` counts as ``pkg.name`` when that is a module, else as ``pkg``."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("sbn_bench")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_pkg else base[:-1]
                base = base[:len(base) - node.level + 1]
                src = ".".join(base + ([node.module] if node.module else []))
            else:
                src = node.module or ""
            if not src.startswith("sbn_bench"):
                continue
            for a in node.names:
                sub = f"{src}.{a.name}"
                out.append((node.lineno, sub if sub in MODULES else src))
    return out


def test_every_module_has_a_layer() -> None:
    unplaced = []
    for m in MODULES:
        if m == "sbn_bench":
            continue
        try:
            layer_of(m)
        except KeyError:
            unplaced.append(m)
    assert not unplaced, f"modules without a layer (add them to LAYERS): {unplaced}"


@pytest.mark.parametrize("module", [m for m in MODULES if m != "sbn_bench"])
def test_imports_point_down(module: str) -> None:
    mine = layer_of(module)
    bad = []
    for line, target in imports_of(module):
        if target == "sbn_bench":
            bad.append(f"line {line}: imports the facade sbn_bench (import the module itself)")
            continue
        theirs = layer_of(target)
        if theirs > mine:
            bad.append(f"line {line}: {target} (layer {LAYERS[theirs][0]}) from layer "
                       f"{LAYERS[mine][0]}")
    assert not bad, f"{module} imports upwards: " + "; ".join(bad)


def test_no_import_cycles() -> None:
    """No module reaches itself through imports (a package's ``__init__`` importing its own
    submodules is not a cycle unless a submodule imports the ``__init__`` back)."""
    graph = {m: {t for _, t in imports_of(m) if t != m} for m in MODULES if m != "sbn_bench"}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles: " + "; ".join(" → ".join(c) for c in cycles[:5])


def test_reports_never_import_the_paper_experiment() -> None:
    for m in MODULES:
        if m.startswith("sbn_bench.reports"):
            assert not any(t.startswith("sbn_bench.paper") for _, t in imports_of(m)), m


def test_the_checker_sees_imports_inside_functions(tmp_path: Path) -> None:
    """The walk covers function bodies: a lower module importing a higher one inside a function is
    found (the test can fail)."""
    code = "def f():\n    from sbn_bench.runner import run\n    return run\n"
    tree = ast.parse(code)
    found = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert found == ["sbn_bench.runner"]
    assert layer_of("sbn_bench.runner") > layer_of("sbn_bench.model")


def test_the_facade_exports_its_public_names_lazily() -> None:
    """``sbn_bench.__all__`` keeps every public name (a superset of the first release's), each the
    object of the module that defines it, imported on first use."""
    import subprocess
    import sys

    import sbn_bench

    first_release = {"Estimator", "Problem", "ProblemError", "ProblemSpec", "ReferenceTooLarge",
                     "RunConfig", "RunResult", "__version__", "estimate", "estimate_on_paths",
                     "exact_gradient", "exact_objective", "load_config", "load_problem",
                     "load_registry", "paper_problem", "preset_problem", "random_problem", "run",
                     "run_paper", "save_problem", "write_report"}
    assert first_release <= set(sbn_bench.__all__)
    for name in sbn_bench.__all__:
        assert getattr(sbn_bench, name) is not None, name
    from sbn_bench.reference import objective
    from sbn_bench.runner import run
    assert sbn_bench.exact_objective is objective and sbn_bench.run is run
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = sbn_bench.nope
    # importing the package does not import the runner, reports or experiments
    code = ("import sys, sbn_bench; print(sorted(m for m in sys.modules if m.startswith("
            "('sbn_bench.runner', 'sbn_bench.reports', 'sbn_bench.paper'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
