"""The architecture's boundaries as assertions: which package may import which."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "orchestrator"

# package → modules it must never import (directly, at any depth of the file)
FORBIDDEN = {
    "train": ("orchestrator.driver", "orchestrator.cli", "orchestrator.progress", "orchestrator.results"),
    "data": ("orchestrator.driver", "orchestrator.cli", "orchestrator.train", "orchestrator.track", "torch.distributed"),
    "job": ("orchestrator.driver", "orchestrator.cli", "orchestrator.train", "orchestrator.data", "torch", "ray"),
    "track": ("orchestrator.driver", "orchestrator.cli", "orchestrator.train"),
    # results read run folders, whose file names driver.runfolder owns, but start nothing
    "results": ("orchestrator.driver.launch", "orchestrator.driver.cluster", "orchestrator.driver.submit",
                "orchestrator.driver.sweep", "orchestrator.cli", "ray"),
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_never_imports_what_lies_upstream_of_it(package):
    offences = []
    for path in sorted((PACKAGE / package).rglob("*.py")):
        for name in sorted(imported_modules(path)):
            if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN[package]):
                offences.append(f"{path.relative_to(PACKAGE.parent)} imports {name}")
    assert offences == []


def test_nothing_imports_the_cli():
    offences = [str(path) for path in PACKAGE.rglob("*.py")
                if path.parent.name != "cli" and path.name != "__main__.py"
                and any(name.startswith("orchestrator.cli") for name in imported_modules(path))]
    assert offences == []


def test_loading_a_job_file_pulls_in_neither_torch_nor_ray():
    code = ("import sys, orchestrator.job.spec, orchestrator.cli; "
            "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
