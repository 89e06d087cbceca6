"""The import rules of the package: each package's __init__ is its surface, and `import lowbit` stays light.

A name is private to the package that holds it when the name, or any module on the way to it,
starts with one underscore (``lowbit.kernels.uniform.kernels._uniform_gemv_kernel``,
``lowbit._checks``). Only modules inside that package may import it; tests and other packages may not.
The walk parses every file with ``ast`` (no imports run), so it costs well under a second.
"""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT, env_without_interpreter

SOURCES = sorted((ROOT / "lowbit").rglob("*.py")) + sorted((ROOT / "tests").rglob("*.py"))


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _package_of(module: str, path: Path) -> str:
    return module if path.name == "__init__.py" else module.rpartition(".")[0]


def _resolve(node: ast.ImportFrom, package: str) -> str:
    if not node.level:
        return node.module or ""
    base = package.split(".")
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _owner(dotted: str) -> str | None:
    """The package a dotted name is private to, or None when every component is public.

    A private module (``lowbit._checks``) belongs to the package holding it; a private name inside a
    module (``lowbit.kernels.uniform.kernels._uniform_gemv_kernel``) to the package holding that module.
    """
    parts = dotted.split(".")
    for i, p in enumerate(parts):
        if p.startswith("_") and not p.startswith("__"):
            prefix = parts[:i]
            if (ROOT.joinpath(*prefix).with_suffix(".py")).is_file():
                prefix = prefix[:-1]
            return ".".join(prefix)
    return None


def private_imports(path: Path, module: str | None = None) -> list[str]:
    """'<importer>: <name>' for each private lowbit name `path` imports from outside its owning package."""
    module = module or _module_name(path)
    package = _package_of(module, path)
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            src = _resolve(node, package)
            names = [f"{src}.{a.name}" for a in node.names if a.name != "*"]
        for name in names:
            if not name.startswith("lowbit"):
                continue
            owner = _owner(name)
            if owner is not None and not (package == owner or package.startswith(owner + ".")):
                out.append(f"{module}: {name}")
    return out


def test_the_walk_sees_files():
    assert len(SOURCES) > 40 and any(p.name == "launch.py" for p in SOURCES)


def test_the_rule_flags_what_it_should(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("from lowbit.kernels.uniform.kernels import _uniform_gemv_kernel\n"
                     "from lowbit import _checks\nimport lowbit.kernels\nfrom .kernels import _x\n")
    assert private_imports(probe, "tests.probe") == ["tests.probe: lowbit.kernels.uniform.kernels._uniform_gemv_kernel",
                                                     "tests.probe: lowbit._checks"]
    # inside the owning package the same names are fine
    assert private_imports(probe, "lowbit.kernels.uniform.probe") == []
    assert _owner("lowbit.kernels.uniform.kernels._uniform_gemv_kernel") == "lowbit.kernels.uniform"
    assert _owner("lowbit._checks") == "lowbit" and _owner("lowbit.kernels.uniform.launch") is None


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_private_import_across_packages(path):
    assert private_imports(path) == []


def test_import_lowbit_touches_neither_triton_nor_cuda():
    code = ("import sys, lowbit, lowbit.kernels, lowbit.autotune, lowbit.nn; import torch; "
            "print('triton' in sys.modules, torch.cuda.is_initialized(), 'transformers' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env_without_interpreter(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "False", "False"]
