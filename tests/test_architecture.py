"""The package graph: no import cycles, a library that never imports the CLI, and lazily imported methods."""

import ast
import pathlib
import subprocess
import sys

from tests.conftest import ROOT

PACKAGE = ROOT / "cxr_jax"


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Module → the cxr_jax modules it imports (module level and inside functions alike)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # Relative import.
                    parent = name.split(".")[: len(name.split(".")) - node.level + is_package]
                    base = ".".join(parent + ([base] if base else []))
                # `from pkg import module` depends on the module (Python runs pkg/__init__ first, as for any
                # submodule); `from module import name` on the module.
                subs = {f"{base}.{a.name}" for a in node.names} & modules.keys()
                targets.update(subs if len(subs) == len(node.names) else subs | {base})
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_cycles():
    cycle = _cycle(_import_graph())
    assert cycle is None, " → ".join(cycle)


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


def test_library_never_imports_the_cli_and_shared_layers_no_method():
    graph = _import_graph()
    for module, targets in graph.items():
        if not module.startswith(("cxr_jax.cli", "cxr_jax.__main__")):
            assert not any(t.startswith("cxr_jax.cli") for t in targets), module
        if not module.startswith(("cxr_jax.methods", "cxr_jax.cli", "cxr_jax.__main__")):
            assert not any(t.startswith("cxr_jax.methods.") for t in targets), module


def _imports_plotting(path: pathlib.Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        if any(n.split(".")[0] in ("matplotlib", "sklearn") for n in names):
            return True
    return False


def test_training_one_method_loads_no_other_method_and_no_plotting_module():
    """What `cxr-jax train` imports for LD (TensorFlow itself loads keras, which loads matplotlib and sklearn)."""
    code = ("import sys; from cxr_jax import config, registry; from cxr_jax.train import loop; "
            "registry.get(config.load('configs/ld.py:smoke').method); "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('cxr_jax'))))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded = proc.stdout.split()
    assert "cxr_jax.methods.ld.trainer" in loaded
    others = [m for m in loaded if m.startswith("cxr_jax.methods.") and not m.startswith("cxr_jax.methods.ld")]
    assert not others, others
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    plotting = [m for m in loaded if _imports_plotting(files[m])]
    assert not plotting, plotting
    assert any(_imports_plotting(p) for p in files.values())  # The check can fail: evaluators do import them.
