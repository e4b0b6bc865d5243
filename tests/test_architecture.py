"""The package's shape, kept as docs/layout.md describes it: no import cycles (imports
inside functions included: they only hide a loop), a small package root, heavy dependencies
imported where they are used."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "segdeploy"

#: The core modules the package root may hold; everything else lives in a subpackage.
ROOT_MODULES = {
    "__init__", "__main__", "_native", "errors", "fileio", "optional", "manifest", "onnx_io", "preprocess",
    "targets", "parity", "lint", "export", "infer", "visualize", "outputs", "adopt", "convert",
}  # fmt: skip


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The segdeploy modules ``name`` imports anywhere in its file, and the packages they sit in."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            # importing a.b.c runs a/__init__ and a/b/__init__ first, unless they are the importer's own packages
            while target and not name.startswith(target + ".") and target != name:
                found.add(target)
                target = target.rpartition(".")[0]
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for child in sorted(graph.get(node, ())):
            if state.get(child) == 1:
                return stack[stack.index(child):] + [child]
            if child not in state and (cycle := visit(child)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_in_the_package():
    found = modules()
    graph = {name: imported_modules(name, path, set(found)) for name, path in found.items()}
    assert find_cycle(graph) is None, "import cycle: " + " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_package_root_holds_only_the_core_modules():
    root = {p.stem for p in PACKAGE.glob("*.py")}
    assert root <= ROOT_MODULES, f"move {sorted(root - ROOT_MODULES)} into a subpackage"


def test_importing_every_module_pulls_in_no_heavy_optional_dependency_but_its_own():
    """Modules that run on a device without torch import no torch, TensorRT or plotting library
    at import time (the device-side CLI tests check the commands themselves)."""
    device_side = [n for n in modules() if not n.startswith(("segdeploy.models", "segdeploy.fixtures"))
                   and n not in ("segdeploy.export", "segdeploy.backend.torch.runner", "segdeploy.__main__")]
    script = (
        "import importlib, sys\n"
        f"for name in {device_side!r}:\n"
        "    importlib.import_module(name)\n"
        "heavy = {'torch', 'torchvision', 'tensorrt', 'tensorrt_rtx', 'pycuda', 'matplotlib', 'onnxruntime'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(PACKAGE.parent), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout
