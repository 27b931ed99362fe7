"""The package's layers, read from its import statements: no module imports one above it, the two
methods never import each other, nothing imports in a circle, and every module imports alone in
a fresh interpreter (an import circle that only some import orders survive shows up there)."""

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cachekern

PACKAGE = Path(cachekern.__file__).parent

# What each part of the package may import from the rest of it (beyond itself).
ALLOWED = {
    "cachekern.kernels": set(),
    "cachekern.store": {"cachekern._warnings"},
    "cachekern.metrics": set(),
    "cachekern._version": set(),
    "cachekern._warnings": set(),
    "cachekern.models": {"cachekern.kernels", "cachekern._warnings"},
    "cachekern.reference_models": set(),
    "cachekern.teacache": {"cachekern.kernels", "cachekern.models", "cachekern._warnings"},
    "cachekern.block_caching": {"cachekern.kernels", "cachekern.store", "cachekern.models",
                                "cachekern._warnings"},
    "cachekern.build_info": {"cachekern.store", "cachekern._version"},
    "cachekern.patching": {"cachekern.teacache", "cachekern.block_caching", "cachekern.models"},
    # One calibration pass for both methods, for tune.
    "cachekern.calibration": {"cachekern.teacache", "cachekern.block_caching", "cachekern.models"},
    # tune sits above patching: it chooses among both methods' settings.
    "cachekern.tune": {"cachekern.patching", "cachekern.teacache", "cachekern.block_caching",
                       "cachekern.calibration", "cachekern.models", "cachekern.metrics",
                       "cachekern.reference_models"},
}
# The deprecated Profile methods reach up to the functions that replaced them.
SHIMS = {("cachekern.block_caching.profile", "cachekern.block_caching.fit"),
         ("cachekern.block_caching.profile", "cachekern.block_caching.distill")}


def module_names():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


MODULES = dict(module_names())
EXTENSIONS = {"cachekern.store._C"}     # compiled: imported by name, read by nothing here


def imports_of(name, path):
    """The cachekern modules `name` imports, anywhere in its body (lazy imports included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] +
                                ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in MODULES or sub in EXTENSIONS else base)
    return {m for m in found if m == "cachekern" or m.startswith("cachekern.")}


GRAPH = {name: imports_of(name, path) for name, path in MODULES.items()}


def part_of(name):
    """The entry of ALLOWED a module belongs to (its longest prefix), or None."""
    matches = [p for p in ALLOWED if name == p or name.startswith(p + ".")]
    return max(matches, key=len) if matches else None


def test_no_module_imports_a_layer_above_it():
    wrong = []
    for name, imported in GRAPH.items():
        part = part_of(name)
        if part is None:
            continue      # the top: cachekern itself, cli, demo, the deprecated alias
        for target in imported:
            if (name, target) in SHIMS or part_of(target) == part:
                continue
            if part_of(target) not in ALLOWED[part]:
                wrong.append(f"{name} imports {target}")
    assert not wrong, wrong


def test_the_two_methods_do_not_import_each_other():
    for name, imported in GRAPH.items():
        for a, b in (("teacache", "block_caching"), ("block_caching", "teacache")):
            if name.startswith(f"cachekern.{a}"):
                assert not any(t.startswith(f"cachekern.{b}") for t in imported), name


def test_there_is_no_import_circle():
    edges = {name: {t for t in imported if (name, t) not in SHIMS and t in GRAPH}
             for name, imported in GRAPH.items()}
    state, circle = {}, []

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                circle.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"
    for name in sorted(edges):
        if name not in state:
            visit(name, [name])
    assert not circle, circle


def _import_alone(name):
    code = f"import warnings; warnings.simplefilter('ignore', DeprecationWarning); import {name}"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return name, result.returncode, result.stderr[-2000:]


def test_every_module_imports_alone_in_a_fresh_interpreter():
    names = [n for n in MODULES if n not in ("cachekern.__main__",)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        failed = [(n, err) for n, rc, err in pool.map(_import_alone, names) if rc != 0]
    assert not failed, failed


def test_importing_cachekern_loads_no_kernel():
    code = ("import sys, cachekern; "
            "print(sorted(m for m in sys.modules if m.startswith('cachekern.kernels')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
