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


# Built, initialised and stepped where TensorFlow is not installed (benchmarks/accelerator.py on an accelerator's
# image): importing these must not import TensorFlow; cxr_jax/data imports it where data is built.
TF_FREE = ("cxr_jax.registry", "cxr_jax.bench", "cxr_jax.train.loop", "cxr_jax.methods.dgm.trainer",
           "cxr_jax.methods.convirt.trainer", "cxr_jax.methods.ld.trainer")
TENSORFLOW = ("tensorflow", "tensorflow_datasets", "tensorboardX")


def _imported_on_import(name: str, path: pathlib.Path) -> set[str]:
    """What importing module `name` imports: its module-level and class-level imports (absolute names), not those
    inside functions or under `if TYPE_CHECKING:`. `from a import b` gives both a and a.b."""
    names, is_package = set(), path.name == "__init__.py"

    def visit(statements):
        for node in statements:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(node.orelse)
                continue
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = name.split(".")[: len(name.split(".")) - node.level + is_package]
                    base = ".".join(parent + ([base] if base else []))
                names.add(base)
                names.update(f"{base}.{a.name}" for a in node.names)
            for field in ("body", "orelse", "finalbody", "handlers"):
                if isinstance(getattr(node, field, None), list):
                    visit(getattr(node, field))

    visit(ast.parse(path.read_text()).body)
    return names


def test_building_and_stepping_a_method_imports_no_tensorflow():
    """Statically, for TF_FREE; tests/train/test_method.py runs them with TensorFlow blocked."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}

    def loaded(name):  # A module and the packages above it, as Python imports them.
        parts = name.split(".")
        return [m for m in (".".join(parts[:i]) for i in range(1, len(parts) + 1)) if m in modules]

    for root in TF_FREE:
        chains, queue = {root: [root]}, [root]
        while queue:
            module = queue.pop()
            for target in sorted(_imported_on_import(module, modules[module])):
                assert target.split(".")[0] not in TENSORFLOW, " → ".join(chains[module] + [target])
                for m in loaded(target):
                    if m not in chains:
                        chains[m] = chains[module] + [m]
                        queue.append(m)


def test_imports_inside_functions_are_not_imported_on_import():
    assert "tensorflow" in _imported_on_import("cxr_jax.data.augment", PACKAGE / "data" / "augment.py")
    loop = PACKAGE / "train" / "loop.py"
    assert "from cxr_jax.data import pipeline" in loop.read_text()  # In `setup`: data is built there.
    assert "cxr_jax.data.pipeline" not in _imported_on_import("cxr_jax.train.loop", loop)
